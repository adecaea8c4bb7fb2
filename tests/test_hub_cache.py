"""Hugging Face hub caches as store roots: scanning, revisions, broken repos, several roots,
and a repo id (`org/name`) served end to end by an agent.

The cache is written in the hub's documented layout (`models--ORG--NAME/blobs/<sha256>`,
`snapshots/<commit>/<file>` relative symlinks to `../../blobs/<sha256>`, `refs/<ref>` holding
the commit) from the real tiny models of `tiny_models.py`; `huggingface_hub`'s own readers
(`try_to_load_from_cache`, `scan_cache_dir`) confirm it is the layout they read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir, try_to_load_from_cache
from huggingface_hub.file_download import repo_folder_name
from pydantic import ValidationError

from edge_agent.adapters.hub_cache import is_hub_cache, is_hub_snapshot, scan_hub_cache
from edge_agent.adapters.profile_store import ProfileStore, profile_file_stem
from edge_agent.adapters.store import inspect_folder
from edge_agent.adapters.store_roots import StoreRoot, scan_roots
from edge_agent.app import store_roots
from edge_agent.errors import BadModelFolder
from edge_agent.settings import AgentSettings
from launcher.cli import main as cli_main
from tests.conftest import agent_settings, running_agent

# --------------------------------------------------------------------------------------
# Writing a hub cache
# --------------------------------------------------------------------------------------


def put_in_hub_cache(
    cache: Path,
    repo_id: str,
    folder: Path,
    *,
    commit: str | None = None,
    refs: tuple[str, ...] = ("main",),
) -> Path:
    """Store `folder` as one revision of `repo_id` in the hub cache at `cache`, as
    `hf_hub_download` leaves it; returns the snapshot folder. Blobs keep the files' mtimes
    (`copy2`), as a download keeps the server's. A blob shared with another revision is
    stored once."""
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    if commit is None:
        h = hashlib.sha1(repo_id.encode())
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
        commit = h.hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copy2(f, blob)
        link = snapshot / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def cache(model_zoo: Path, tmp_path: Path) -> Path:
    """A hub cache with the three tiny models: two under an org, one without."""
    root = tmp_path / "hub"
    put_in_hub_cache(root, "tiny-org/tiny-llama", model_zoo / "tiny-llama")
    put_in_hub_cache(root, "tiny-org/tiny-sd", model_zoo / "tiny-sd")
    put_in_hub_cache(root, "tiny-gpt2", model_zoo / "tiny-gpt2")
    return root


def _blob_of(snapshot: Path, rel: str) -> Path:
    return Path(os.path.realpath(snapshot / rel))


# --------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------


def test_the_cache_is_the_layout_huggingface_hub_reads(cache: Path) -> None:
    found = try_to_load_from_cache("tiny-org/tiny-llama", "config.json", cache_dir=cache)
    assert isinstance(found, str) and Path(found).is_symlink()
    info = scan_cache_dir(cache)
    assert info.warnings == []
    assert {r.repo_id for r in info.repos} == {
        "tiny-org/tiny-llama",
        "tiny-org/tiny-sd",
        "tiny-gpt2",
    }
    assert is_hub_cache(cache) and not is_hub_cache(cache / "models--tiny-gpt2")


def test_scan_lists_repo_ids_with_the_same_manifests_as_flat_folders(
    cache: Path, model_zoo: Path
) -> None:
    models, bad = scan_hub_cache(cache)
    assert bad == []
    assert [m.id for m in models] == ["tiny-gpt2", "tiny-org/tiny-llama", "tiny-org/tiny-sd"]
    for m in models:
        flat = inspect_folder(model_zoo / m.id.split("/")[-1])
        snapshot = Path(m.path)
        assert snapshot.parent.name == "snapshots" and snapshot.parent.parent.name == (
            "models--" + m.id.replace("/", "--")
        )
        assert (m.kind, m.format, m.architecture) == (flat.kind, flat.format, flat.architecture)
        assert m.weight_files == flat.weight_files
        # Sizes and mtimes come from the blobs behind the links: the digest is the flat
        # folder's, so a profile carries over between the two layouts.
        assert m.storage_bytes == flat.storage_bytes
        assert m.file_digest == flat.file_digest
    # Stable across scans.
    assert [m.file_digest for m in scan_hub_cache(cache)[0]] == [m.file_digest for m in models]


def test_snapshots_are_told_apart_from_store_folders(cache: Path, model_zoo: Path) -> None:
    models, _ = scan_hub_cache(cache)
    assert all(is_hub_snapshot(Path(m.path)) for m in models)
    assert not is_hub_snapshot(model_zoo / "tiny-gpt2")


def test_genedge_json_overrides_the_repo_id(model_zoo: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(model_zoo / "tiny-gpt2", tmp_path / "g"))
    (folder / "genedge.json").write_text(json.dumps({"id": "my-gpt2"}))
    put_in_hub_cache(tmp_path / "hub", "org/tiny-gpt2", folder)
    models, bad = scan_hub_cache(tmp_path / "hub")
    assert [m.id for m in models] == ["my-gpt2"] and bad == []


def test_broken_repos_are_reported_one_line_each_and_do_not_stop_the_scan(
    cache: Path, model_zoo: Path, tmp_path: Path
) -> None:
    # A missing blob (deleted by hand, or a cleanup gone wrong).
    snap = put_in_hub_cache(cache, "org/no-blob", model_zoo / "tiny-gpt2")
    _blob_of(snap, "model.safetensors").unlink()
    # No snapshot: refs/main written, the snapshot never was.
    (cache / "models--org--no-snapshot" / "refs").mkdir(parents=True)
    (cache / "models--org--no-snapshot" / "snapshots").mkdir()
    (cache / "models--org--no-snapshot" / "refs" / "main").write_text("ab" * 20)
    # No snapshots folder at all.
    (cache / "models--org--no-snapshots-dir" / "blobs").mkdir(parents=True)
    # A snapshots folder holding nothing, no refs.
    (cache / "models--org--empty" / "snapshots").mkdir(parents=True)
    # A config that is not JSON.
    bad_cfg = Path(shutil.copytree(model_zoo / "tiny-llama", tmp_path / "bad-cfg"))
    (bad_cfg / "config.json").write_text("{not json")
    put_in_hub_cache(cache, "org/bad-config", bad_cfg)
    # Not a causal LM: served by nobody here, said why.
    not_lm = Path(shutil.copytree(model_zoo / "tiny-gpt2", tmp_path / "not-lm"))
    cfg = json.loads((not_lm / "config.json").read_text())
    (not_lm / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertModel"]}))
    put_in_hub_cache(cache, "org/bert", not_lm)
    # A dataset repo: none of ours, not reported.
    (cache / "datasets--org--data" / "snapshots").mkdir(parents=True)
    (cache / "datasets--org--data" / "refs").mkdir()
    (cache / "datasets--org--data" / "refs" / "main").write_text("cd" * 20)

    models, bad = scan_hub_cache(cache)
    assert [m.id for m in models] == ["tiny-gpt2", "tiny-org/tiny-llama", "tiny-org/tiny-sd"]
    by_repo = {
        next(p for p in Path(b.path).parts if p.startswith("models--")): b.reason for b in bad
    }
    assert set(by_repo) == {
        "models--org--no-blob",
        "models--org--no-snapshot",
        "models--org--no-snapshots-dir",
        "models--org--empty",
        "models--org--bad-config",
        "models--org--bert",
    }, by_repo
    assert all("\n" not in r for r in by_repo.values())
    assert by_repo["models--org--no-blob"].startswith(
        f"snapshots/{snap.name[:7]}/model.safetensors"
    )
    assert (
        "blob" in by_repo["models--org--no-blob"]
        and "is missing" in by_repo["models--org--no-blob"]
    )
    assert "hf download org/no-blob" in by_repo["models--org--no-blob"]
    assert by_repo["models--org--no-snapshot"].startswith("refs/main points to commit abababa")
    assert "no snapshot" in by_repo["models--org--no-snapshot"]
    assert by_repo["models--org--no-snapshots-dir"].startswith("no snapshots folder")
    assert by_repo["models--org--empty"].startswith("no snapshot in the cache")
    assert "config.json: not valid JSON" in by_repo["models--org--bad-config"]
    assert by_repo["models--org--bad-config"].startswith("revision ")
    assert "BertModel" in by_repo["models--org--bert"]
    # A failure inside a snapshot points at the snapshot folder itself.
    (bad_cfg_entry,) = [b for b in bad if "bad-config" in b.path]
    assert Path(bad_cfg_entry.path).parent.name == "snapshots"


def test_missing_or_unreadable_cache_is_one_bad_entry(tmp_path: Path) -> None:
    models, bad = scan_hub_cache(tmp_path / "nowhere")
    assert models == [] and len(bad) == 1 and "cache directory not found" in bad[0].reason
    (tmp_path / "file").write_text("x")
    models, bad = scan_hub_cache(tmp_path / "file")
    assert models == [] and len(bad) == 1 and "unreadable" in bad[0].reason


# --------------------------------------------------------------------------------------
# Revisions
# --------------------------------------------------------------------------------------


@pytest.fixture
def two_revisions(model_zoo: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """`org/gpt2` with an old revision (tagged v1) and a newer one that refs/main names; the
    newer one's weights differ (another id in genedge.json tells them apart)."""
    root = tmp_path / "hub"
    old = Path(shutil.copytree(model_zoo / "tiny-gpt2", tmp_path / "old"))
    new = Path(shutil.copytree(model_zoo / "tiny-gpt2", tmp_path / "new"))
    (new / "notes.txt").write_text("a newer revision")
    old_snap = put_in_hub_cache(root, "org/gpt2", old, commit="1" * 40, refs=("v1",))
    new_snap = put_in_hub_cache(root, "org/gpt2", new, commit="2" * 40, refs=("main",))
    return root, old_snap, new_snap


def test_refs_main_is_served_unless_a_revision_is_pinned(
    two_revisions: tuple[Path, Path, Path],
) -> None:
    root, old_snap, new_snap = two_revisions
    (m,) = scan_hub_cache(root)[0]
    assert Path(m.path) == new_snap.resolve()
    for pin in ("v1", "refs/v1", "1" * 40, "1111111"):
        models, bad = scan_hub_cache(root, {"org/gpt2": pin})
        assert bad == [] and Path(models[0].path) == old_snap.resolve(), pin
    assert Path(scan_hub_cache(root, {"org/gpt2": "main"})[0][0].path) == new_snap.resolve()


def test_a_pin_the_cache_lacks_is_a_clear_reason(two_revisions: tuple[Path, Path, Path]) -> None:
    root, _, _ = two_revisions
    models, bad = scan_hub_cache(root, {"org/gpt2": "v2", "org/absent": "main"})
    assert models == []
    reasons = {Path(b.path).name: b.reason for b in bad}
    # Newest first: the main revision has a blob written today, v1's are the zoo's.
    assert reasons["models--org--gpt2"] == (
        "pinned revision 'v2' is not in the cache (cached: 2222222 (main), 1111111 (v1)); "
        "download it: hf download org/gpt2 --revision v2"
    )
    assert reasons["models--org--absent"].startswith(
        "revision 'main' is pinned but org/absent is not in the cache"
    )


def test_without_refs_main_the_newest_snapshot_is_served(model_zoo: Path, tmp_path: Path) -> None:
    root = tmp_path / "hub"
    old = put_in_hub_cache(root, "org/gpt2", model_zoo / "tiny-gpt2", commit="a" * 40, refs=())
    folder = Path(shutil.copytree(model_zoo / "tiny-gpt2", tmp_path / "newer"))
    (folder / "notes.txt").write_text("newer")
    new = put_in_hub_cache(root, "org/gpt2", folder, commit="b" * 40, refs=())
    newest = max(os.stat(_blob_of(old, "config.json")).st_mtime, 0) + 100
    os.utime(_blob_of(new, "notes.txt"), (newest, newest))
    (m,) = scan_hub_cache(root)[0]
    assert Path(m.path) == new.resolve()


# --------------------------------------------------------------------------------------
# Several roots, settings
# --------------------------------------------------------------------------------------


def test_first_root_wins_a_duplicate_id(cache: Path, model_zoo: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    shutil.copytree(model_zoo / "tiny-llama", flat / "llama")
    (flat / "llama" / "genedge.json").write_text(json.dumps({"id": "tiny-org/tiny-llama"}))
    shutil.copytree(model_zoo / "tiny-gpt2", flat / "tiny-gpt2")

    models, bad = scan_roots([StoreRoot(flat), StoreRoot(cache, "hf_cache")])
    served = {m.id: m.path for m in models}
    assert served["tiny-org/tiny-llama"] == str(flat / "llama")
    assert served["tiny-gpt2"] == str(flat / "tiny-gpt2")
    assert "tiny-org/tiny-sd" in served
    assert len(bad) == 2
    by_id = {b.reason.split("'")[1]: b for b in bad}
    assert "snapshots" in by_id["tiny-org/tiny-llama"].path
    assert by_id["tiny-org/tiny-llama"].reason.startswith(
        f"duplicate model id 'tiny-org/tiny-llama': served from {flat / 'llama'}"
    )
    # The other order serves the cache's copies.
    models, bad = scan_roots([StoreRoot(cache, "hf_cache"), StoreRoot(flat)])
    assert {m.id: m.path for m in models}["tiny-gpt2"].startswith(str(cache.resolve()))
    assert {b.path for b in bad} == {str(flat / "llama"), str(flat / "tiny-gpt2")}


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("EDGE_HF_CACHE", "~/.cache/huggingface/hub")
    monkeypatch.setenv("EDGE_EXTRA_STORE_DIRS", f"/a{os.pathsep}/b")
    monkeypatch.setenv("EDGE_HF_REVISIONS", "org/a=v1.0, org/b=4f2c1e9")
    s = AgentSettings(store_dir=tmp_path / "store")
    assert s.hf_cache == [tmp_path / ".cache/huggingface/hub"]
    assert s.extra_store_dirs == [Path("/a"), Path("/b")]
    assert s.hf_revisions == {"org/a": "v1.0", "org/b": "4f2c1e9"}
    roots = store_roots(s)
    assert [(r.path, r.layout) for r in roots] == [
        (tmp_path / "store", "folders"),
        (Path("/a"), "folders"),
        (Path("/b"), "folders"),
        (tmp_path / ".cache/huggingface/hub", "hf_cache"),
    ]
    assert roots[-1].revisions == {"org/a": "v1.0", "org/b": "4f2c1e9"}

    monkeypatch.setenv("EDGE_HF_CACHE", '["/x", "/y"]')
    monkeypatch.setenv("EDGE_HF_REVISIONS", '{"org/a": "main"}')
    s = AgentSettings()
    assert s.hf_cache == [Path("/x"), Path("/y")] and s.hf_revisions == {"org/a": "main"}

    monkeypatch.setenv("EDGE_HF_REVISIONS", "org/a")
    with pytest.raises(ValidationError, match="REPO=REVISION"):
        AgentSettings()
    monkeypatch.delenv("EDGE_HF_REVISIONS")
    monkeypatch.delenv("EDGE_HF_CACHE")
    monkeypatch.delenv("EDGE_EXTRA_STORE_DIRS")
    s = AgentSettings()
    assert s.hf_cache == [] and s.extra_store_dirs == [] and s.hf_revisions == {}


# --------------------------------------------------------------------------------------
# Ids with a slash
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "ok"),
    [
        ("org/name", True),
        ("org/sub/name", True),
        ("org/../name", False),
        ("org//name", False),
        ("/name", False),
        ("org/", False),
        ("org/.hidden", False),
        ("a" * 257, False),
    ],
)
def test_ids_may_have_slashes_but_no_empty_or_dot_parts(
    model_zoo: Path, tmp_path: Path, model_id: str, ok: bool
) -> None:
    folder = Path(shutil.copytree(model_zoo / "tiny-gpt2", tmp_path / "m"))
    (folder / "genedge.json").write_text(json.dumps({"id": model_id}))
    if ok:
        assert inspect_folder(folder).id == model_id
    else:
        with pytest.raises(BadModelFolder, match=r"is not a valid model id|at most 256"):
            inspect_folder(folder)


def test_profile_files_of_slashed_ids_are_flat_and_unambiguous(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path, "fp")
    assert store.path("org/name") == tmp_path / "fp" / "org%2Fname.json"
    assert store.path("org--name") != store.path("org/name")
    assert profile_file_stem("plain") == "plain"
    for bad_id in ("a%2Fb", ".x"):
        with pytest.raises(ValueError):
            profile_file_stem(bad_id)


# --------------------------------------------------------------------------------------
# The agent and the command line
# --------------------------------------------------------------------------------------


async def test_agent_serves_a_hub_cache_end_to_end(
    cache: Path, store: Path, tmp_path: Path
) -> None:
    """One agent over a flat store (tiny-llama) and a hub cache (the same weights as
    tiny-org/tiny-llama): both listed, loaded and generating the same text through the same
    loader, and the cached pipeline draws; the slashed id's profile is saved, then reused by
    the next agent."""
    settings = agent_settings(store, tmp_path, hf_cache=[cache], profile_text_tokens=2)
    chat = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}
    chat["temperature"] = 0  # type: ignore[assignment]
    async with running_agent(settings) as c:
        doc = (await c.get("/v1/models")).json()
        ids = {m["id"] for m in doc["data"]}
        assert {"tiny-llama", "tiny-org/tiny-llama", "tiny-org/tiny-sd"} <= ids
        # tiny-gpt2 is in both roots: the store folder wins, the cache's copy is reported.
        assert [b["reason"].split(":")[0] for b in doc["bad_folders"]] == [
            "duplicate model id 'tiny-gpt2'"
        ]

        r = await c.put(
            "/v1/models/tiny-org/tiny-llama/level", json={"level": "resident", "wait": True}
        )
        assert r.status_code == 200, r.text
        assert r.json()["id"] == "tiny-org/tiny-llama" and r.json()["level"] == "resident"
        st = (await c.get("/v1/models/tiny-org/tiny-llama/status")).json()
        assert st["memory_bytes"] > 0

        texts = []
        for model in ("tiny-org/tiny-llama", "tiny-llama"):
            r = await c.post("/v1/chat/completions", json={**chat, "model": model})
            assert r.status_code == 200, r.text
            assert r.json()["model"] == model
            texts.append(r.json()["choices"][0]["message"]["content"])
        assert texts[0] == texts[1] and texts[0]

        image = {"prompt": "a red cube", "size": "32x32", "steps": 2, "seed": 1}
        r = await c.post("/v1/images/generations", json={**image, "model": "tiny-org/tiny-sd"})
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 1 and r.json()["data"][0]["b64_json"]

        r = await c.post("/v1/models/tiny-org/tiny-llama/profile")
        assert r.status_code == 200, r.text
        assert r.json()["profile_status"] == "done"
        assert r.json()["profile"]["model_id"] == "tiny-org/tiny-llama"
        fingerprint = c.app.state.agent.host.fingerprint  # type: ignore[attr-defined]

    saved = tmp_path / "profiles" / fingerprint / "tiny-org%2Ftiny-llama.json"
    assert saved.is_file()
    assert json.loads(saved.read_text())["model_id"] == "tiny-org/tiny-llama"
    assert not (tmp_path / "profiles" / fingerprint / "tiny-org").exists()

    async with running_agent(settings) as c:
        for _ in range(100):
            st = (await c.get("/v1/models/tiny-org/tiny-llama/status")).json()
            if st["profile_status"] != "pending":
                break
            await asyncio.sleep(0.05)
        assert st["profile_status"] == "cached"
        assert st["profile"]["file_digest"] == json.loads(saved.read_text())["file_digest"]


def test_cli_store_lists_a_hub_cache(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (cache / "models--org--broken" / "refs").mkdir(parents=True)  # a download cut short
    (cache / "models--org--broken" / "refs" / "main").write_text("ab" * 20)
    assert cli_main(["store", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "Hugging Face cache" in out
    assert "tiny-org/tiny-llama" in out and "LlamaForCausalLM" in out
    assert "not served (1):" in out and "models--org--broken: no snapshots folder" in out

    assert cli_main(["store", "--json", "--hf-cache", str(cache)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["layout"] for r in doc["roots"]] == ["hf_cache"]
    assert [m["id"] for m in doc["models"]] == [
        "tiny-gpt2",
        "tiny-org/tiny-llama",
        "tiny-org/tiny-sd",
    ]

    # No paths: the agent's own settings.
    monkeypatch.setenv("EDGE_STORE_DIR", str(tmp_path / "not-yet"))
    monkeypatch.setenv("EDGE_HF_CACHE", str(cache))
    monkeypatch.setenv("EDGE_HF_REVISIONS", "tiny-gpt2=v9")
    assert cli_main(["store"]) == 0
    out = capsys.readouterr().out
    assert "not-yet" not in out and "tiny-org/tiny-sd" in out
    assert "pinned revision 'v9' is not in the cache" in out

    (tmp_path / "empty").mkdir()
    assert cli_main(["store", str(tmp_path / "empty")]) == 2
    assert "no servable model" in capsys.readouterr().err
    assert cli_main(["store", str(cache), "--revision", "nonsense"]) == 1
    assert "REPO=REVISION" in capsys.readouterr().err
