"""The OS page cache of model files: drop it (for cold-load measurements) or fill it.

A "cold" preload must read its weights from the disk, not from the copy the kernel keeps in
free RAM after the last read. Linux drops the cached pages of one file on
`posix_fadvise(POSIX_FADV_DONTNEED)`, without root and without touching other files, which
is what `drop_page_cache` does. Files on a memory-backed filesystem (tmpfs, ramfs) have no
disk to go back to: their pages cannot be dropped and the call reports False.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("edge_agent.pagecache")

DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024

_MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})
# fsync on a read-only descriptor or an odd file may be refused this way; harmless here.
_FSYNC_HARMLESS = frozenset({errno.EINVAL, errno.EROFS, errno.EBADF, errno.ENOTSUP})


def drop_page_cache(paths: Iterable[Path]) -> bool:
    """Ask the kernel to forget the cached pages of every file in `paths`.

    For each file: open read-only, `fsync`, then `posix_fadvise(fd, 0, 0, DONTNEED)`. The
    fsync comes first because DONTNEED only drops *clean* pages: pages still dirty (a file
    just written, such as a fresh download or the disk probe) must be written back before
    the kernel can let them go, and would otherwise stay cached and make a "cold" read warm.

    Returns True when every file was dropped; False when any could not be (no
    `posix_fadvise` on this OS, a missing or unreadable file, not a regular file, a
    memory-backed filesystem). Never raises for those: the caller records that its cold
    numbers may be warm.
    """
    fadvise = getattr(os, "posix_fadvise", None)
    dontneed = getattr(os, "POSIX_FADV_DONTNEED", None)
    paths = list(paths)
    if fadvise is None or dontneed is None:
        log.debug("posix_fadvise is not available: page cache not dropped")
        return False
    mounts = _mount_table()
    ok = True
    for path in paths:
        ok = _drop_one(Path(path), fadvise, dontneed, mounts) and ok
    return ok


_Fadvise = Callable[[int, int, int, int], None]


def _drop_one(path: Path, fadvise: _Fadvise, dontneed: int, mounts: list[tuple[str, str]]) -> bool:
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        log.debug("cannot open %s to drop its page cache: %s", path, exc)
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in _FSYNC_HARMLESS:
                log.debug("fsync %s: %s", path, exc)
        fadvise(fd, 0, 0, dontneed)
    except OSError as exc:
        log.debug("cannot drop the page cache of %s: %s", path, exc)
        return False
    finally:
        os.close(fd)
    return _filesystem_type(path, mounts) not in _MEMORY_FILESYSTEMS


def _mount_table() -> list[tuple[str, str]]:
    """(mount point, filesystem type) pairs from /proc/self/mounts, longest first; empty
    where there is no such file (the filesystem type is then unknown, not memory)."""
    try:
        text = Path("/proc/self/mounts").read_text()
    except OSError:
        return []
    table = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            # Mount points escape spaces and tabs as octal (\040, \011).
            mount = fields[1].replace("\\040", " ").replace("\\011", "\t")
            table.append((mount, fields[2]))
    # Later mounts shadow earlier ones on the same point: keep the last one seen first.
    table.reverse()
    table.sort(key=lambda m: len(m[0]), reverse=True)
    return table


def _filesystem_type(path: Path, mounts: list[tuple[str, str]]) -> str | None:
    real = os.path.realpath(path)
    for mount, fstype in mounts:
        if real == mount or real.startswith(mount.rstrip("/") + "/"):
            return fstype
    return None


def read_files(paths: Iterable[Path], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Read every file in `paths` sequentially, discarding the data; returns the bytes read.

    Used to put a model's files in the page cache (warm loads) and to time disk reads. One
    buffer is reused for every chunk (`readinto`), so reading a 16 GB model allocates no more
    than `chunk_bytes`. Errors opening or reading a file propagate.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        return 0
    largest = max((_size(p) for p in paths), default=0)
    buf = bytearray(max(4096, min(chunk_bytes, largest)))
    view = memoryview(buf)
    total = 0
    for path in paths:
        with path.open("rb", buffering=0) as f:
            while True:
                n = f.readinto(view)
                if not n:
                    break
                total += n
    return total


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
