"""Fetching a model the host lacks from a model repository (level `absent` -> `stored`).

A model repository is any genedge agent (`GET /v1/repository...`, `edge_agent.api.repository`):
it lists the models it holds and, per model, a manifest of every file with its size and
sha256. `Fetcher` implements the core's `ModelFetcher` port over an injected
`httpx.AsyncClient`:

- a disk-space check before any byte: the bytes still needed against the free space of the
  fetch directory, after asking the manager to evict models it may delete (`make_room`);
  a refusal says "needs X GB, Y GB free";
- every file is written under a temporary name (`<file>.part`) in a staging folder
  (`<fetch dir>/.staging/<model id>/`, hidden, so the store scan never sees a half model);
- HTTP range requests resume a partial file (`Range: bytes=N-`), both when a connection
  drops during a fetch (a few automatic retries) and when a failed fetch is asked again;
- the sha256 of each file is computed while it is written (the kept prefix re-hashed on a
  resume) and checked against the manifest; a mismatch deletes that file's partial and fails
  with a reason naming the file;
- when every file is verified, a marker (`.genedge-origin.json`: origin `fetched`, source,
  time) is written and the whole folder is renamed into `<fetch dir>/<model id>` at once;
- an optional bandwidth cap, and progress (bytes, rate, ETA) reported to a callback.

Blocking disk work (writing, hashing, deleting) runs in worker threads in blocks of a few MB,
so the event loop keeps serving requests while a fetch runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from edge_agent.adapters.store import MANIFEST_FILE
from edge_agent.core.ports import FetchProgressSink, MakeRoom
from edge_agent.errors import FetchFailed, ModelFolderError
from genedge.contract import (
    BadModelFolder,
    FetchProgress,
    ModelManifest,
    ModelOrigin,
    RepositoryFile,
    RepositoryManifest,
)

log = logging.getLogger("edge_agent.fetch")

MARKER_FILE = ".genedge-origin.json"
"""In a model folder the agent fetched: origin, source and time. Hidden, so the store's
file list and digest ignore it; its presence is what makes the model `fetched` after a
restart (and so evictable)."""
STAGING_DIR = ".staging"
TRASH_PREFIX = ".trash-"
_FOLDER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+:@%-]{0,255}$")


def folder_name(model_id: str) -> str:
    """The fetch directory's folder of a model: its id with `/` (a hub repo id `org/name`)
    and other reserved characters percent-encoded (`org%2Fname`), as the profile store
    names files; the marker keeps the real id, which the scan restores (`_with_marked_id`)."""
    return quote(model_id, safe="._+-")


def _with_marked_id(manifest: ModelManifest) -> ModelManifest:
    """The manifest with origin `fetched` and the id the marker recorded (a folder name
    cannot hold `/`), or as it is for a folder the agent did not fetch."""
    marker = Path(manifest.path) / MARKER_FILE
    if not marker.is_file():
        return manifest
    try:
        model_id = json.loads(marker.read_text()).get("model_id") or manifest.id
    except (OSError, ValueError, AttributeError):
        model_id = manifest.id
    return manifest.model_copy(update={"id": str(model_id), "origin": ModelOrigin.FETCHED})


FLUSH_BYTES = 4 * 1024**2  # bytes received before one write+hash in a worker thread
RATE_WINDOW_S = 2.0
GB = 1e9


def _gb(n: float) -> str:
    return f"{n / GB:.2f}"


def sha256_of(path: Path, upto: int | None = None) -> hashlib._Hash:
    """sha256 of a file's first `upto` bytes (all when None); blocking."""
    h = hashlib.sha256()
    left = upto
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(FLUSH_BYTES if left is None else min(FLUSH_BYTES, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h


def scan_fetched(
    fetch_dir: Path, held: list[ModelManifest]
) -> tuple[list[ModelManifest], list[BadModelFolder]]:
    """The models under the fetch directory (what earlier runs fetched), with their origin
    from the marker; `held` are the store's models: an id both hold is reported as a bad
    folder here (the store's copy is served). Leftover trash of an interrupted eviction is
    deleted. Never raises."""
    from edge_agent.adapters.store import scan_store

    fetch_dir.mkdir(parents=True, exist_ok=True)
    for entry in fetch_dir.glob(f"{TRASH_PREFIX}*"):
        shutil.rmtree(entry, ignore_errors=True)
    manifests, bad = scan_store(fetch_dir)
    ids = {m.id for m in held}
    good: list[ModelManifest] = []
    for m in map(_with_marked_id, manifests):
        if m.id in ids:
            reason = f"model id {m.id!r} is also in the store, which is served"
            bad.append(BadModelFolder(path=m.path, reason=reason))
            continue
        good.append(m)
    return good, bad


def mark_origins(manifests: list[ModelManifest]) -> list[ModelManifest]:
    """Set each manifest's origin from its folder's marker (a store root that is also the
    fetch directory), with the id the marker recorded."""
    return [_with_marked_id(m) for m in manifests]


def _safe_rel(rel: str) -> PurePosixPath:
    """A manifest path that stays inside the model folder and is not hidden (the store scan
    ignores hidden files, so a hidden file would be fetched and never served)."""
    p = PurePosixPath(rel)
    if (
        p.is_absolute()
        or "\\" in rel
        or "\0" in rel
        or not p.parts
        or any(part in ("", ".", "..") or part.startswith(".") for part in p.parts)
        or rel.endswith(".part")
    ):
        raise FetchFailed(f"the repository's manifest has an unsafe file path {rel!r}")
    return p


@dataclass
class _Tally:
    """Progress of one fetch, shared by its files."""

    progress: FetchProgress
    sink: FetchProgressSink
    clock: Callable[[], float]
    transferred: int = 0  # bytes that came over the network in this call (written)
    received: int = 0  # the same, counted as they arrive (for the bandwidth cap)
    transfer_s: float = 0.0
    resumes: int = 0
    samples: deque[tuple[float, int]] | None = None

    def add(self, n: int) -> None:
        self.transferred += n
        p = self.progress
        p.bytes_done += n
        now = time.monotonic()
        if self.samples is None:
            self.samples = deque()
        self.samples.append((now, p.bytes_done))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.popleft()
        t0, b0 = self.samples[0]
        if now > t0:
            p.rate_Bps = max(0.0, (p.bytes_done - b0) / (now - t0))
        left = p.bytes_total - p.bytes_done
        p.eta_s = left / p.rate_Bps if p.rate_Bps > 0 else None
        self.emit()

    def emit(self) -> None:
        self.sink(self.progress.model_copy())


class Fetcher:
    """Fetches models from the repository at `repository_url` into `fetch_dir`.

    `disk_free(path)` says how many bytes may still be written there (default
    `shutil.disk_usage`; tests inject a full disk). `max_Bps` caps the transfer rate.
    `retries` is how many times a dropped connection is resumed within one fetch.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        repository_url: str,
        fetch_dir: Path,
        *,
        token: str = "",
        max_Bps: float | None = None,
        retries: int = 3,
        retry_backoff_s: float = 0.5,
        reserve_bytes: int = 64 * 1024**2,
        disk_free: Callable[[Path], int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.source = repository_url.rstrip("/")
        self.fetch_dir = Path(fetch_dir)
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.max_Bps = max_Bps
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.reserve_bytes = reserve_bytes
        self.disk_free = disk_free or (lambda p: shutil.disk_usage(p).free)
        self.clock = clock
        self.measured_Bps: float | None = None
        # Fetches under way: model -> the bytes it still has to write. Each space check
        # counts the others' as taken, so two fetches never both count the same free bytes.
        self._promised: dict[str, Callable[[], int]] = {}

    # ------------------------------------------------------------------ repository calls
    def _url(self, model_id: str, what: str) -> str:
        return f"{self.source}/v1/repository/{quote(model_id, safe='')}/{what}"

    async def repository_manifest(self, model_id: str) -> RepositoryManifest | None:
        """The repository's manifest of `model_id`, None when it does not offer it."""
        try:
            r = await self.client.get(self._url(model_id, "manifest"), headers=self.headers)
        except httpx.HTTPError as exc:
            raise FetchFailed(
                f"model repository {self.source} unreachable: {type(exc).__name__}: {exc}",
                model=model_id,
            ) from exc
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise FetchFailed(
                f"model repository {self.source} answered {r.status_code} for the manifest "
                f"of {model_id!r}: {r.text[:200]}",
                model=model_id,
            )
        try:
            return RepositoryManifest.model_validate_json(r.content)
        except ValidationError as exc:
            raise FetchFailed(
                f"model repository {self.source} sent a bad manifest for {model_id!r}: "
                f"{exc.errors()[0]['msg']}",
                model=model_id,
            ) from exc

    async def describe(self, model_id: str) -> ModelManifest | None:
        rm = await self.repository_manifest(model_id)
        if rm is None:
            return None
        return ModelManifest(
            id=model_id,
            kind=rm.kind,
            format=rm.format,
            path="",
            architecture=rm.architecture,
            storage_bytes=rm.total_bytes,
            origin=ModelOrigin.FETCHED,
        )

    # ------------------------------------------------------------------ the fetch
    async def fetch(
        self, model_id: str, progress: FetchProgressSink, make_room: MakeRoom
    ) -> ModelManifest:
        rm = await self.repository_manifest(model_id)
        if rm is None:
            raise FetchFailed(f"model repository {self.source} no longer offers {model_id!r}")
        folder = folder_name(model_id)
        if not _FOLDER_RE.match(folder) or rm.model_id != model_id:
            raise FetchFailed(f"{model_id!r} cannot be a folder name in the fetch directory")
        rels = [_safe_rel(f.path) for f in rm.files]
        if len(set(rels)) != len(rels):
            raise FetchFailed("the repository's manifest lists a file twice")
        dest = self.fetch_dir / folder
        if dest.exists():
            raise FetchFailed(
                f"{dest} already exists but is not served (see bad_folders); remove it to fetch"
            )
        stage = self.fetch_dir / STAGING_DIR / folder
        await asyncio.to_thread(stage.mkdir, parents=True, exist_ok=True)
        kept = await asyncio.to_thread(self._tidy_stage, stage, rm.files)
        total = sum(f.size for f in rm.files)
        await self._check_space(model_id, total - kept, make_room)
        try:
            return await self._transfer(
                model_id, rm, rels, stage, dest, folder, total, kept, progress
            )
        finally:
            self._promised.pop(model_id, None)

    async def _transfer(
        self,
        model_id: str,
        rm: RepositoryManifest,
        rels: list[PurePosixPath],
        stage: Path,
        dest: Path,
        folder: str,
        total: int,
        kept: int,
        progress: FetchProgressSink,
    ) -> ModelManifest:
        tally = _Tally(
            FetchProgress(
                source=self.source,
                bytes_total=total,
                bytes_done=kept,
                resumed_bytes=kept,
                started_at=self.clock(),
            ),
            progress,
            self.clock,
        )
        tally.emit()
        self._promised[model_id] = lambda: total - tally.progress.bytes_done
        for f, rel in zip(rm.files, rels, strict=True):
            await self._fetch_file(model_id, f, stage / rel, tally)
        await asyncio.to_thread(self._write_marker, stage, model_id, rm)
        if folder != model_id and not any(f.path == MANIFEST_FILE for f in rm.files):
            # the folder's name cannot carry the id (`org/name`): say it in genedge.json
            text = json.dumps({"id": model_id})
            await asyncio.to_thread((stage / MANIFEST_FILE).write_text, text)
        manifest = await asyncio.to_thread(self._move_into_place, stage, dest)
        tally.progress.finished_at = self.clock()
        tally.progress.eta_s = 0.0
        if tally.transfer_s > 0 and tally.transferred > 0:
            self.measured_Bps = tally.transferred / tally.transfer_s
            tally.progress.rate_Bps = self.measured_Bps
        tally.emit()
        log.info(
            "fetched %s from %s: %d bytes (%d resumed) in %.2f s",
            model_id,
            self.source,
            total,
            tally.progress.resumed_bytes,
            tally.transfer_s,
        )
        return manifest

    def _tidy_stage(self, stage: Path, files: list[RepositoryFile]) -> int:
        """Drop staged files the manifest no longer lists or that are too long; returns
        the bytes kept (complete files and `.part` prefixes), all re-verified later."""
        wanted: dict[Path, int] = {}
        for f in files:
            wanted[stage / f.path] = f.size
            wanted[stage / (f.path + ".part")] = f.size
        kept = 0
        for dirpath, _, names in os.walk(stage):
            for name in names:
                p = Path(dirpath) / name
                size = p.stat().st_size
                if p in wanted and size <= wanted[p]:
                    kept += size
                else:
                    p.unlink()
        return kept

    async def _check_space(self, model_id: str, need: int, make_room: MakeRoom) -> None:
        """Refuse before any byte when the disk cannot take what is still needed, after
        evicting what may be evicted."""
        want = need + self.reserve_bytes
        free = await asyncio.to_thread(self.disk_free, self.fetch_dir)
        if want + self._others(model_id) > free:
            freed = await make_room(want + self._others(model_id) - free, model_id)
            free = await asyncio.to_thread(self.disk_free, self.fetch_dir)
            others = self._others(model_id)  # again: other fetches moved while we waited
            if want + others > free:
                raise FetchFailed(
                    f"needs {_gb(need)} GB (plus a {_gb(self.reserve_bytes)} GB reserve) on "
                    f"{self.fetch_dir}, {_gb(free)} GB free"
                    + (f", {_gb(others)} GB of it promised to fetches under way" if others else "")
                    + (f" after evicting {_gb(freed)} GB" if freed else " and nothing evictable")
                    + "; nothing was written",
                    model=model_id,
                )
        self._promised[model_id] = lambda: need  # no await since the last comparison

    def _others(self, model_id: str) -> int:
        """Bytes the fetches under way other than `model_id`'s have still to write."""
        return sum(max(0, left()) for m, left in self._promised.items() if m != model_id)

    async def _fetch_file(self, model_id: str, f: RepositoryFile, final: Path, t: _Tally) -> None:
        if final.exists():
            h = await asyncio.to_thread(sha256_of, final)
            if h.hexdigest() == f.sha256:
                return
            await asyncio.to_thread(final.unlink)
            t.progress.bytes_done -= f.size
            t.progress.resumed_bytes -= f.size
        part = final.with_name(final.name + ".part")
        await asyncio.to_thread(part.parent.mkdir, parents=True, exist_ok=True)
        attempt = 0
        while True:
            start = part.stat().st_size if part.exists() else 0
            try:
                hasher = await self._download(model_id, f, part, start, t)
                break
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise FetchFailed(
                        f"{f.path}: connection lost ({type(exc).__name__}: {exc}) after "
                        f"{attempt + 1} attempt(s); the partial file is kept and setting the "
                        "level again resumes",
                        model=model_id,
                    ) from exc
                attempt += 1
                t.resumes += 1
                log.info("fetch %s: %s interrupted (%s), resuming", model_id, f.path, exc)
                await asyncio.sleep(self.retry_backoff_s * attempt)
        digest = hasher.hexdigest()
        if digest != f.sha256:
            await asyncio.to_thread(part.unlink, True)
            t.progress.bytes_done -= f.size
            t.emit()
            raise FetchFailed(
                f"{f.path}: sha256 mismatch (expected {f.sha256[:12]}..., got {digest[:12]}...); "
                "the partial file was deleted",
                model=model_id,
            )
        await asyncio.to_thread(os.replace, part, final)

    async def _download(
        self, model_id: str, f: RepositoryFile, part: Path, start: int, t: _Tally
    ) -> hashlib._Hash:
        """Bring `part` from `start` bytes to the whole file; returns its sha256 state."""
        hasher = await asyncio.to_thread(sha256_of, part, start) if start else hashlib.sha256()
        if start == f.size:
            return hasher
        headers = dict(self.headers)
        if start:
            headers["range"] = f"bytes={start}-"
        url = self._url(model_id, "file")
        async with self.client.stream("GET", url, params={"path": f.path}, headers=headers) as r:
            if r.status_code == 200 and start:  # the server ignored the range: start over
                t.progress.bytes_done -= start
                start, hasher = 0, hashlib.sha256()
            elif r.status_code == 206:
                got = r.headers.get("content-range", "")
                if not got.startswith(f"bytes {start}-"):
                    raise FetchFailed(f"{f.path}: asked from byte {start}, got range {got!r}")
            elif r.status_code != 200:
                await r.aread()
                raise FetchFailed(
                    f"{f.path}: the repository answered {r.status_code}: {r.text[:200]}",
                    model=model_id,
                )
            size = start
            with open(part, "r+b" if start else "wb") as out:
                out.seek(start)
                out.truncate()
                buf = bytearray()
                began = time.monotonic()
                try:
                    async for chunk in r.aiter_raw():
                        buf += chunk
                        size += len(chunk)
                        t.received += len(chunk)
                        if size > f.size:
                            raise FetchFailed(f"{f.path}: more bytes than its size {f.size}")
                        if len(buf) >= FLUSH_BYTES:
                            await self._flush(out, hasher, buf, t)
                            buf = bytearray()
                        await self._throttle(t, began)
                finally:  # keep what arrived, so a resume starts after it
                    if buf:
                        await self._flush(out, hasher, buf, t)
                    t.transfer_s += time.monotonic() - began
        if size != f.size:
            raise httpx.RemoteProtocolError(f"{f.path}: the body ended at {size} of {f.size}")
        return hasher

    async def _flush(
        self, out: IO[bytes], hasher: hashlib._Hash, buf: bytearray, t: _Tally
    ) -> None:
        data = bytes(buf)

        def write() -> None:
            out.write(data)
            out.flush()
            hasher.update(data)

        await asyncio.to_thread(write)
        t.add(len(data))

    async def _throttle(self, t: _Tally, began: float) -> None:
        """Sleep just enough to keep this attempt's transfer under `max_Bps`."""
        if not self.max_Bps:
            return
        ahead = t.received / self.max_Bps - (time.monotonic() - began) - t.transfer_s
        if ahead > 0.005:
            await asyncio.sleep(ahead)

    def _write_marker(self, stage: Path, model_id: str, rm: RepositoryManifest) -> None:
        doc = {
            "origin": ModelOrigin.FETCHED.value,
            "model_id": model_id,
            "source": self.source,
            "fetched_at": self.clock(),
            "files": [f.model_dump() for f in rm.files],
        }
        (stage / MARKER_FILE).write_text(json.dumps(doc, indent=1))

    def _move_into_place(self, stage: Path, dest: Path) -> ModelManifest:
        """One rename makes the verified folder a model; a folder the store cannot serve
        is deleted (a half model is never left behind)."""
        from edge_agent.adapters.store import inspect_folder

        os.rename(stage, dest)
        try:
            manifest = inspect_folder(dest)
        except ModelFolderError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise FetchFailed(f"the fetched folder cannot be served: {exc.message}") from exc
        return _with_marked_id(manifest)

    # ------------------------------------------------------------------ eviction
    def removable(self, manifest: ModelManifest) -> bool:
        from edge_agent.adapters.hub_cache import is_hub_snapshot

        return not is_hub_snapshot(Path(manifest.path))

    async def remove(self, manifest: ModelManifest) -> None:
        """Delete a model's folder: renamed to hidden trash first (one atomic step, so the
        store never sees a half-deleted model), then removed."""
        folder = Path(manifest.path)
        trash = folder.with_name(f"{TRASH_PREFIX}{folder.name}-{os.getpid()}-{time.time_ns()}")

        def rm() -> None:
            os.rename(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)

        await asyncio.to_thread(rm)
