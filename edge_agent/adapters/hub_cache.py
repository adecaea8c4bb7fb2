"""A Hugging Face hub cache (`~/.cache/huggingface/hub`) as a store root.

People who run models locally already hold them in the hub cache, laid out as
`models--ORG--NAME/{blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>, refs/main}`.
The cache is read with `huggingface_hub.scan_cache_dir` (its own scanner, so a layout change
in `huggingface_hub` is its problem, not a parser of ours), and every model repo serves one
snapshot folder, inspected exactly like a folder of a plain store (`store.inspect_folder`: the
same validation, the same loaders, which read through the snapshot's symlinks).

Which snapshot: a pinned revision when one is given for the repo (a ref such as `main` or
`v1.0`, or a commit hash or its first 7+ characters), else the one `refs/main` points to
(what `from_pretrained` would load offline), else the most recently modified one. The model id
is the repo id (`org/name`) unless the snapshot's `genedge.json` sets another.

Nothing here raises: a repo that cannot be served is reported with a one-line reason, like a
bad folder of a plain store. Dataset and space repos are skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import CachedRepoInfo, CachedRevisionInfo, scan_cache_dir
from huggingface_hub.errors import CacheNotFound, CorruptedCacheException

from edge_agent.adapters.store import broken_links, inspect_folder, without_duplicate_ids
from edge_agent.errors import ModelFolderError
from genedge.contract import BadModelFolder as BadModelFolderInfo
from genedge.contract import ModelManifest

MODEL_REPO_PREFIX = "models--"
_MIN_HASH_PREFIX = 7


class RevisionNotCached(Exception):
    """A pinned revision that no snapshot of the repo matches."""


def scan_hub_cache(
    cache_dir: Path, revisions: Mapping[str, str] | None = None
) -> tuple[list[ModelManifest], list[BadModelFolderInfo]]:
    """Every model repo of the hub cache at `cache_dir`: the servable ones sorted by id and
    the others, sorted by path, each with a one-line reason. `revisions` pins repos
    (`{"org/name": "v1.0"}`); a pin for a repo absent from the cache is reported too."""
    revisions = dict(revisions or {})
    root = Path(os.path.abspath(os.path.expanduser(cache_dir)))
    try:
        info = scan_cache_dir(root)
    except CacheNotFound:
        return [], [_bad(root, "Hugging Face cache directory not found")]
    except (OSError, ValueError) as exc:  # a file, or unreadable
        return [], [_bad(root, f"Hugging Face cache unreadable: {_one_line(str(exc))}")]
    root = info.cache_dir or root.resolve()  # resolved: the paths in the scan are under it

    found: list[ModelManifest] = []
    bad: list[BadModelFolderInfo] = []
    seen: set[str] = set()
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        seen.add(repo.repo_id)
        try:
            revision = choose_revision(repo, revisions.get(repo.repo_id))
        except RevisionNotCached as exc:
            bad.append(_bad(repo.repo_path, str(exc)))
            continue
        try:
            found.append(inspect_folder(revision.snapshot_path, default_id=repo.repo_id))
        except ModelFolderError as exc:
            reason = f"revision {_label(revision)}: {_one_line(exc.message)}"
            bad.append(_bad(revision.snapshot_path, reason))
        except Exception as exc:  # a bug or an OS oddity must not stop the agent
            reason = _one_line(f"unexpected {type(exc).__name__}: {exc}")
            bad.append(_bad(revision.snapshot_path, reason))

    for warning in info.warnings:
        repo_path = _repo_of_warning(root, warning)
        if repo_path is None or not repo_path.name.startswith(MODEL_REPO_PREFIX):
            continue  # not a model repo: datasets and stray files are none of ours
        seen.add(_repo_id(repo_path))
        bad.append(_bad(repo_path, _corruption_reason(repo_path, warning)))

    for repo_id, pin in sorted(revisions.items()):
        if repo_id not in seen:
            path = root / (MODEL_REPO_PREFIX + repo_id.replace("/", "--"))
            reason = (
                f"revision {pin!r} is pinned but {repo_id} is not in the cache; "
                f"download it: hf download {repo_id} --revision {pin}"
            )
            bad.append(_bad(path, reason))

    good, dups = without_duplicate_ids(found)
    bad.extend(dups)
    bad.sort(key=lambda b: b.path)
    return good, bad


def choose_revision(repo: CachedRepoInfo, pin: str | None = None) -> CachedRevisionInfo:
    """The snapshot to serve: the pinned one, else `refs/main`'s, else the newest.

    Raises `RevisionNotCached` naming what the cache holds when nothing matches."""
    if pin is not None:
        pin = pin.strip()
        by_ref = repo.refs.get(pin) or repo.refs.get(pin.removeprefix("refs/"))
        if by_ref is not None:
            return by_ref
        matches = [
            r
            for r in repo.revisions
            if r.commit_hash == pin
            or (len(pin) >= _MIN_HASH_PREFIX and r.commit_hash.startswith(pin.lower()))
        ]
        if len(matches) == 1:
            return matches[0]
        held = ", ".join(_label(r) for r in _newest_first(repo)) or "no snapshot"
        what = "matches several snapshots" if matches else "is not in the cache"
        raise RevisionNotCached(
            f"pinned revision {pin!r} {what} (cached: {held}); "
            f"download it: hf download {repo.repo_id} --revision {pin}"
        )
    main = repo.refs.get("main")
    if main is not None:
        return main
    newest = _newest_first(repo)
    if not newest:
        raise RevisionNotCached(
            f"no snapshot in the cache; download it: hf download {repo.repo_id}"
        )
    return newest[0]


def is_hub_cache(path: Path) -> bool:
    """Whether `path` looks like a hub cache (holds a `models--*` folder): lets the command
    line take either kind of store root without a flag."""
    try:
        return any(
            e.name.startswith(MODEL_REPO_PREFIX) and e.is_dir() for e in Path(path).iterdir()
        )
    except OSError:
        return False


def is_hub_snapshot(path: Path) -> bool:
    """Whether a model folder is a snapshot inside a hub cache. Its files are links to blobs
    that other revisions may share, and `refs/` name it: deleting it frees almost nothing and
    leaves the cache broken, so disk eviction must never pick it (the cache is the user's;
    `hf cache delete` is the tool to shrink it)."""
    p = Path(path)
    return p.parent.name == "snapshots" and p.parent.parent.name.startswith(MODEL_REPO_PREFIX)


# --------------------------------------------------------------------------------------
# Reasons
# --------------------------------------------------------------------------------------


def _bad(path: Path, reason: str) -> BadModelFolderInfo:
    return BadModelFolderInfo(path=str(path), reason=_one_line(reason))


def _one_line(s: str) -> str:
    return " ".join(s.split())


def _label(revision: CachedRevisionInfo) -> str:
    short = revision.commit_hash[:_MIN_HASH_PREFIX]
    refs = ", ".join(sorted(revision.refs))
    return f"{short} ({refs})" if refs else short


def _newest_first(repo: CachedRepoInfo) -> list[CachedRevisionInfo]:
    return sorted(repo.revisions, key=lambda r: (r.last_modified, r.commit_hash), reverse=True)


def _repo_id(repo_path: Path) -> str:
    return repo_path.name.removeprefix(MODEL_REPO_PREFIX).replace("--", "/")


def _repo_of_warning(root: Path, warning: CorruptedCacheException) -> Path | None:
    """The repo folder a scan warning is about: `scan_cache_dir` reports a corrupted repo as
    an exception whose message names a path inside it."""
    m = re.search(re.escape(str(root)) + r"/([^/\s)'\"]+)", str(warning))
    return root / m.group(1) if m else None


def _corruption_reason(repo_path: Path, warning: CorruptedCacheException) -> str:
    """`scan_cache_dir`'s reason, with paths relative to the repo folder and the file whose
    blob is gone named (its message names only the blob)."""
    repo_id = _repo_id(repo_path)
    hint = f"download it again: hf download {repo_id}"
    snapshots = repo_path / "snapshots"
    if snapshots.is_dir():
        for snapshot in sorted(p for p in snapshots.iterdir() if p.is_dir()):
            broken = broken_links(snapshot)
            if broken:
                target = os.readlink(snapshot / broken[0])
                return (
                    f"snapshots/{snapshot.name[:_MIN_HASH_PREFIX]}/{broken[0]}: its blob "
                    f"{Path(target).name} is missing (an interrupted download or a deleted "
                    f"blob); {hint}"
                )
    else:
        return f"no snapshots folder (an interrupted or a partial download); {hint}"
    for ref, commit in _refs(repo_path):
        if not (snapshots / commit).is_dir():
            return (
                f"refs/{ref} points to commit {commit[:_MIN_HASH_PREFIX]}, which has no "
                f"snapshot (an interrupted download?); {hint}"
            )
    message = str(warning).replace(str(repo_path) + os.sep, "").replace(str(repo_path), ".")
    return f"Hugging Face cache: {message}; {hint}"


def _refs(repo_path: Path) -> list[tuple[str, str]]:
    """(ref name, commit hash) of every file under `refs/`, sorted; unreadable ones left out."""
    refs_dir = repo_path / "refs"
    out: list[tuple[str, str]] = []
    for p in sorted(refs_dir.rglob("*")) if refs_dir.is_dir() else []:
        try:
            if p.is_file():
                out.append((p.relative_to(refs_dir).as_posix(), p.read_text().strip()))
        except OSError:
            continue
    return out
