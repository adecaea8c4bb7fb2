"""The agent as a model repository: the manifests (every file's path, size and sha256) of the
models it holds, for other agents to fetch (`edge_agent.adapters.fetch`).

Hashing a 270 MB model takes seconds, so each file's sha256 is computed once, in a worker
thread, and remembered by (path, size, mtime_ns): a file replaced in place is hashed again.
Concurrent manifest requests for the same model wait for one hashing pass.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from edge_agent.adapters.fetch import sha256_of
from edge_agent.adapters.store import folder_files
from genedge.contract import ModelManifest, RepositoryFile, RepositoryManifest, RepositoryModel


def summary(m: ModelManifest) -> RepositoryModel:
    """How the repository's list shows a model (no checksums)."""
    return RepositoryModel(
        model_id=m.id,
        kind=m.kind,
        format=m.format,
        architecture=m.architecture,
        total_bytes=m.storage_bytes,
    )


class RepositoryIndex:
    """Checksums of the files this agent serves as a repository, cached by stat."""

    def __init__(self) -> None:
        self._hashes: dict[str, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, sha256)
        self._locks: dict[str, asyncio.Lock] = {}

    def _files(self, m: ModelManifest) -> list[tuple[str, Path, os.stat_result]]:
        root = Path(m.path)
        return [(p.relative_to(root).as_posix(), p, p.stat()) for p in folder_files(root)]

    def _hash_missing(self, files: list[tuple[str, Path, os.stat_result]]) -> None:
        for _, path, st in files:
            key = str(path)
            known = self._hashes.get(key)
            if known is None or known[:2] != (st.st_size, st.st_mtime_ns):
                digest = sha256_of(path).hexdigest()
                self._hashes[key] = (st.st_size, st.st_mtime_ns, digest)

    async def manifest(self, m: ModelManifest) -> RepositoryManifest:
        """Every file of the model's folder with its size and sha256."""
        lock = self._locks.setdefault(m.id, asyncio.Lock())
        async with lock:
            files = await asyncio.to_thread(self._files, m)
            await asyncio.to_thread(self._hash_missing, files)
        listed = [
            RepositoryFile(path=rel, size=st.st_size, sha256=self._hashes[str(path)][2])
            for rel, path, st in files
        ]
        return RepositoryManifest(
            **summary(m).model_dump(exclude={"total_bytes"}),
            total_bytes=sum(f.size for f in listed),
            files=listed,
        )

    @staticmethod
    def file_path(m: ModelManifest, rel: str) -> Path | None:
        """The absolute path of `rel` when it is one of the model's files, else None: only
        listed files are served, so `..`, hidden files and links out of the folder are not."""
        root = Path(m.path)
        for p in folder_files(root):
            if p.relative_to(root).as_posix() == rel:
                return p
        return None
