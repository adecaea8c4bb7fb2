"""Pipelined safetensors reading: a model's checkpoint into one device block, at the speed of
the disk (cold), of the page cache (warm) or of the host-to-device link (pinned host RAM).

The libraries' loaders read a checkpoint tensor by tensor (small reads, one at a time, a
pageable host copy, then one device copy per tensor): on a GPU host they reach a fraction
of the hardware (DESIGN.md, `../shared/measured/README.md`). Here, as in ServerlessLLM:

1. **Layout** (`plan_layout`): the headers of every weight file of a model (validated by
   `store.read_safetensors_header`: truncated and garbage files fail here, naming the file)
   place every tensor in *one* block of bytes: each file's data section is copied verbatim,
   in *segments*; a tensor whose offset in the file is not `ALIGN`-aligned starts a new
   segment at an aligned place, so every tensor can be a `view` of the block with the
   alignment its dtype (and vectorised kernels) want.
2. **Transfer** (`PipelinedReader`): a pool of reader threads hands out the data sections
   in large chunks (`chunk_bytes`, several in flight) and reads each with one `preadv`:
   - to a *host* destination (the block on a CPU device, or a host block of the `cached`
     tier) the read scatters straight into place: no staging copy;
   - to a *CUDA* block each chunk lands in a reusable pinned staging buffer and is copied to
     the device asynchronously on the reading thread's own stream; the buffer is reused
     once its copy's event has completed, so reads and copies overlap.
   From a host block (the `cached` tier) to CUDA it is one asynchronous copy from pinned
   memory (PCIe speed); on a CPU device a memcpy split over the threads.
3. **Views**: `BlockLayout.views` makes every tensor a view of the block (no second copy);
   the caller builds the model skeleton on `meta` meanwhile and assigns the views
   (`torch_models`).

Host memory is allocated and tracked by `HostMemory`: pinned buffers are ordinary
allocations registered with `cudaHostRegister` (exact size: torch's caching host allocator
would round a 7 GB block up to 8 GB and keep it after it is freed), unregistered and freed
when released, so `pinned_bytes` returns to its base after any number of load/evict cycles.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edge_agent.adapters.store import read_safetensors_header
from edge_agent.errors import BadModelFolder, CorruptWeights

__all__ = [
    "ALIGN",
    "BlockLayout",
    "FilePlan",
    "HostBuffer",
    "HostMemory",
    "PipelinedReader",
    "Segment",
    "TensorEntry",
    "Transfer",
    "UnsupportedByDirectLoader",
    "plan_layout",
]

MiB = 1024**2

# Every tensor view starts at a multiple of this many bytes of the block: enough for every
# dtype (the largest element is 8 bytes) and for 128-bit vectorised loads in kernels.
ALIGN = 16

DEFAULT_CHUNK_BYTES = 16 * MiB
DEFAULT_THREADS = 4

# One preadv takes at most IOV_MAX (1024 on Linux) buffers.
_IOV_MAX = 512


class UnsupportedByDirectLoader(Exception):
    """The direct loader (`torch_models`: skeletons on `meta`, checkpoint tensors assigned)
    cannot load this folder; the library loader may."""


def _st_dtypes() -> dict[str, torch.dtype]:
    """safetensors dtype codes -> torch dtypes, for the ones this torch build has."""
    names = {
        "F64": "float64",
        "F32": "float32",
        "F16": "float16",
        "BF16": "bfloat16",
        "I64": "int64",
        "I32": "int32",
        "I16": "int16",
        "I8": "int8",
        "U8": "uint8",
        "BOOL": "bool",
        "C64": "complex64",
        "U64": "uint64",
        "U32": "uint32",
        "U16": "uint16",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2",
        "F8_E4M3FNUZ": "float8_e4m3fnuz",
        "F8_E5M2FNUZ": "float8_e5m2fnuz",
        "F8_E8M0": "float8_e8m0fnu",
    }
    out = {}
    for code, name in names.items():
        dt = getattr(torch, name, None)
        if isinstance(dt, torch.dtype):
            out[code] = dt
    return out


ST_DTYPES = _st_dtypes()


def _align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    """Where one checkpoint tensor lives in the block."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # in the block
    nbytes: int


@dataclass(frozen=True)
class Segment:
    """A byte range of one file copied verbatim into the block."""

    file_offset: int  # absolute, in the file
    nbytes: int
    block_offset: int


@dataclass(frozen=True)
class FilePlan:
    """One weight file: its expected size, the segments of its data section, its tensors."""

    rel: str
    path: Path
    size: int
    data_start: int
    data_end: int
    segments: tuple[Segment, ...]
    tensors: tuple[TensorEntry, ...]


@dataclass(frozen=True)
class BlockLayout:
    """Where every tensor of a model's weight files goes in one block of `nbytes` bytes."""

    files: tuple[FilePlan, ...]
    nbytes: int

    @property
    def data_bytes(self) -> int:
        """Bytes of tensor data (the block less its alignment padding)."""
        return sum(f.data_end - f.data_start for f in self.files)

    @property
    def file_bytes(self) -> int:
        """Bytes of the weight files, headers included (what a load reads from disk)."""
        return sum(f.size for f in self.files)

    def file(self, rel: str) -> FilePlan:
        for f in self.files:
            if f.rel == rel:
                return f
        raise KeyError(rel)

    def views(self, block: torch.Tensor, rel: str) -> dict[str, torch.Tensor]:
        """The tensors of weight file `rel` as views of `block` (a uint8 tensor of
        `nbytes`); zero-size tensors are fresh empty tensors (they hold no bytes)."""
        if block.numel() != self.nbytes or block.dtype != torch.uint8:
            raise ValueError(f"block of {block.numel()} {block.dtype}, expected {self.nbytes} B")
        out: dict[str, torch.Tensor] = {}
        for t in self.file(rel).tensors:
            if t.nbytes == 0:
                out[t.key] = torch.empty(t.shape, dtype=t.dtype, device=block.device)
            else:
                view = block[t.offset : t.offset + t.nbytes].view(t.dtype)
                out[t.key] = view.view(t.shape)
        return out


def plan_layout(root: Path, rels: Sequence[str]) -> BlockLayout:
    """Validate the headers of the weight files `rels` (relative to `root`) and place their
    tensors in one block. Raises `BadModelFolder` for a missing file, `CorruptWeights` for a
    truncated or garbled one (both naming `rel`), `UnsupportedByDirectLoader` for what the
    pipelined reader does not handle (not safetensors, a dtype torch lacks, big-endian)."""
    if sys.byteorder != "little":
        raise UnsupportedByDirectLoader("safetensors data is little-endian; this host is not")
    cursor = 0
    files: list[FilePlan] = []
    for rel in rels:
        if not rel.endswith(".safetensors"):
            raise UnsupportedByDirectLoader(f"{rel} is not a safetensors file")
        path = Path(root) / rel
        if not path.is_file():
            raise BadModelFolder(f"weight file {rel} is missing")
        header = read_safetensors_header(path, rel)
        data_start = 8 + len(header.raw)
        spans = sorted(
            (info["data_offsets"][0], info["data_offsets"][1], key, info)
            for key, info in header.tensors.items()
        )
        segments: list[Segment] = []
        tensors: list[TensorEntry] = []
        seg_file = seg_block = seg_len = 0
        open_segment = False
        for begin, end, key, info in spans:
            dtype = ST_DTYPES.get(info["dtype"])
            if dtype is None:
                raise UnsupportedByDirectLoader(f"{rel}: tensor {key!r} has dtype {info['dtype']}")
            nbytes = end - begin
            file_off = data_start + begin
            block_off = seg_block + (file_off - seg_file)
            if not open_segment or (nbytes and block_off % ALIGN):
                # Start a new segment at an aligned place: the tensor stays a valid view.
                if open_segment:
                    segments.append(Segment(seg_file, seg_len, seg_block))
                    cursor = seg_block + seg_len
                seg_file, seg_block, seg_len = file_off, _align(cursor), 0
                block_off = seg_block
                open_segment = True
            seg_len = file_off + nbytes - seg_file
            tensors.append(
                TensorEntry(key, dtype, tuple(int(d) for d in info["shape"]), block_off, nbytes)
            )
        if open_segment:
            segments.append(Segment(seg_file, seg_len, seg_block))
            cursor = seg_block + seg_len
        files.append(
            FilePlan(
                rel=rel,
                path=path,
                size=header.file_bytes,
                data_start=data_start,
                data_end=data_start + header.data_bytes,
                segments=tuple(s for s in segments if s.nbytes),
                tensors=tuple(tensors),
            )
        )
    return BlockLayout(files=tuple(files), nbytes=cursor)


@dataclass(frozen=True)
class _Chunk:
    """One read: bytes [lo, hi) of file `file`, scattered into the block as `pieces` of
    (offset in the chunk, offset in the block, bytes)."""

    file: int
    lo: int
    hi: int
    pieces: tuple[tuple[int, int, int], ...]


def _chunks(layout: BlockLayout, chunk_bytes: int) -> Iterator[_Chunk]:
    """The reads of every file's data section, in file order, with boundaries at multiples
    of `chunk_bytes` of the file (so every read but a section's first is aligned)."""
    for fi, f in enumerate(layout.files):
        segs = f.segments
        si = 0
        lo = f.data_start
        while lo < f.data_end:
            hi = min(f.data_end, (lo // chunk_bytes + 1) * chunk_bytes)
            pieces = []
            pos = lo
            while pos < hi:
                s = segs[si]
                s_end = s.file_offset + s.nbytes
                take = min(hi, s_end) - pos
                pieces.append((pos - lo, s.block_offset + (pos - s.file_offset), take))
                pos += take
                if pos >= s_end:
                    si += 1
            yield _Chunk(fi, lo, hi, tuple(pieces))
            lo = hi


# --------------------------------------------------------------------------------------
# Host memory
# --------------------------------------------------------------------------------------


def _page_size() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4096


class HostMemory:
    """Allocates host buffers (page-locked with `cudaHostRegister` when asked and CUDA is
    available) and keeps count of the live ones, so leaks show as a growing count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, tuple[int, bool]] = {}
        self._next = 0

    @property
    def live_bytes(self) -> int:
        """Bytes of every live buffer (pinned or not)."""
        with self._lock:
            return sum(n for n, _ in self._live.values())

    @property
    def pinned_bytes(self) -> int:
        """Bytes of live page-locked buffers."""
        with self._lock:
            return sum(n for n, pinned in self._live.values() if pinned)

    @property
    def live_buffers(self) -> int:
        with self._lock:
            return len(self._live)

    def allocate(self, nbytes: int, *, pinned: bool) -> HostBuffer:
        """A host buffer of `nbytes` (uint8, page-aligned); page-locked when `pinned` and
        CUDA is available (else ordinary memory: `HostBuffer.pinned` says which)."""
        nbytes = max(0, int(nbytes))
        page = _page_size()
        rounded = _align(max(nbytes, 1), page)
        # One page more, so the buffer can start on a page boundary (DMA and registering
        # work on whole pages; an unaligned start would pin a neighbour's page too).
        raw = torch.empty(rounded + page, dtype=torch.uint8)
        start = (-raw.data_ptr()) % page
        tensor = raw[start : start + nbytes]
        ptr: int | None = None
        is_pinned = False
        if pinned and torch.cuda.is_available():
            ptr = raw.data_ptr() + start
            err = int(torch.cuda.cudart().cudaHostRegister(ptr, rounded, 0))
            if err != 0:
                # Registering can fail (locked-memory limits): a pinned copy from torch's
                # own allocator still works, only its size is rounded.
                del raw, tensor
                ptr = None
                raw = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
                tensor = raw
            is_pinned = True
        with self._lock:
            key = self._next
            self._next += 1
            self._live[key] = (nbytes, is_pinned)
        return HostBuffer(self, key, tensor, raw, ptr, nbytes, is_pinned)

    def _forget(self, key: int) -> None:
        with self._lock:
            self._live.pop(key, None)


def _free_host(memory: HostMemory, key: int, raw: torch.Tensor, ptr: int | None) -> None:
    """Unregister a pinned buffer and forget it (the finaliser of `HostBuffer`)."""
    if ptr is not None:
        with contextlib.suppress(Exception):  # at interpreter exit CUDA may be gone
            torch.cuda.cudart().cudaHostUnregister(ptr)
    memory._forget(key)
    del raw


class HostBuffer:
    """A host allocation from `HostMemory`: `tensor` (uint8) until `free()` (idempotent; also
    run when the buffer is garbage-collected)."""

    def __init__(
        self,
        memory: HostMemory,
        key: int,
        tensor: torch.Tensor,
        raw: torch.Tensor,
        ptr: int | None,
        nbytes: int,
        pinned: bool,
    ) -> None:
        self.tensor: torch.Tensor | None = tensor
        self.nbytes = nbytes
        self.pinned = pinned
        self._finalizer = weakref.finalize(self, _free_host, memory, key, raw, ptr)

    @property
    def freed(self) -> bool:
        return self.tensor is None

    def free(self) -> None:
        """Give the memory back (unregistering it first when pinned). The caller makes sure
        no copy from it is still in flight."""
        self.tensor = None
        self._finalizer()


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _writable(t: torch.Tensor) -> memoryview:
    """A writable byte memoryview of a contiguous uint8 CPU tensor."""
    array: Any = t.numpy()  # shares the tensor's memory
    return memoryview(array).cast("B")


def _pread_full(fd: int, views: list[memoryview], offset: int, rel: str, expected: int) -> None:
    """Fill `views` with the bytes of `fd` from `offset`, in as few syscalls as it takes;
    a file that ends early raises CorruptWeights naming `rel`."""
    pos = offset
    pending = [v for v in views if len(v)]
    while pending:
        batch = pending[:_IOV_MAX]
        want = sum(len(v) for v in batch)
        try:
            n = os.preadv(fd, batch, pos)
        except OSError as exc:
            raise CorruptWeights(f"{rel}: cannot be read ({exc.strerror or exc})") from None
        if n == 0:
            raise CorruptWeights(
                f"{rel}: truncated: the file ends at byte {pos}, expected {expected} bytes"
            )
        pos += n
        if n == want:
            pending = pending[len(batch) :]
            continue
        # A short read: drop what was filled, keep the rest of the view it stopped in.
        rest: list[memoryview] = []
        for v in pending:
            if n >= len(v):
                n -= len(v)
            else:
                rest.append(v[n:])
                n = 0
        pending = rest


class _Staging:
    """A small pool of reusable staging buffers (pinned for CUDA): at most `count`, each of
    `nbytes`, allocated on first need and kept for later loads."""

    def __init__(self, memory: HostMemory, count: int, nbytes: int, pinned: bool) -> None:
        self.memory = memory
        self.count = count
        self.nbytes = nbytes
        self.pinned = pinned
        self._free: queue.Queue[list[Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._made: list[HostBuffer] = []

    def get(self) -> list[Any]:
        """[HostBuffer, CUDA event of its last copy or None]; blocks while all are in use."""
        with contextlib.suppress(queue.Empty):
            return self._free.get_nowait()
        with self._lock:
            if len(self._made) < self.count:
                buf = self.memory.allocate(self.nbytes, pinned=self.pinned)
                self._made.append(buf)
                return [buf, None]
        return self._free.get()

    def put(self, slot: list[Any]) -> None:
        self._free.put(slot)

    def close(self) -> None:
        """Free every buffer (no copy may be in flight: the loads have finished)."""
        with self._lock:
            for slot in list(self._free.queue):
                if slot[1] is not None:
                    slot[1].synchronize()
            for buf in self._made:
                buf.free()
            self._made.clear()
            self._free = queue.Queue()


class _FileJob:
    """The shared state of one transfer's reader threads: the next chunk, the open files,
    cancellation, and the destination."""

    def __init__(self, layout: BlockLayout, chunk_bytes: int, dest: torch.Tensor, direct: bool):
        self.layout = layout
        self.dest = dest
        self.direct = direct
        self.dest_view = _writable(dest) if direct else None
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._chunks = _chunks(layout, chunk_bytes)
        self.fds: list[int] = []
        try:
            for f in layout.files:
                self.fds.append(_open_checked(f))
        except BaseException:
            self.close()
            raise

    def next(self) -> _Chunk | None:
        with self._lock:
            if self.cancelled.is_set():
                return None
            return next(self._chunks, None)

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _open_checked(f: FilePlan) -> int:
    try:
        fd = os.open(f.path, os.O_RDONLY)
    except FileNotFoundError:
        raise BadModelFolder(f"weight file {f.rel} is missing") from None
    except OSError as exc:
        raise CorruptWeights(f"{f.rel}: cannot be read ({exc.strerror or exc})") from None
    size = os.fstat(fd).st_size
    if size != f.size:  # changed since its header was read
        os.close(fd)
        raise CorruptWeights(f"{f.rel}: {size} bytes, expected {f.size} (changed while loading)")
    fadvise = getattr(os, "posix_fadvise", None)
    if fadvise is not None:
        # A sequential hint doubles the kernel's read-ahead window for cold reads.
        with contextlib.suppress(OSError):
            fadvise(fd, f.data_start, f.data_end - f.data_start, os.POSIX_FADV_SEQUENTIAL)
    return fd


class Transfer:
    """A transfer in flight into `block` (a uint8 tensor on the target device). `wait()`
    before using the data; `cancel()` to give up. Views of `block` may be made at once."""

    def __init__(
        self,
        block: torch.Tensor,
        futures: list[Future[Any]],
        *,
        cancel: threading.Event | None = None,
        events: list[Any] | None = None,
        cleanup: Callable[[], None] | None = None,
        host_bound: bool = False,
    ) -> None:
        self.block: torch.Tensor | None = block
        # `cleanup` frees host memory the copies read: wait for them on the host first.
        self._host_bound = host_bound
        self._futures = futures
        self._cancel = cancel
        self._events = list(events or [])
        self._cleanup = cleanup
        self._done = False
        self._error: BaseException | None = None

    def wait(self) -> torch.Tensor:
        """Wait for every read and copy; returns the block (on CUDA the current stream is
        ordered after the copies). Raises the first error, preferring a file's own
        (CorruptWeights, BadModelFolder) over knock-on ones."""
        if not self._done:
            self._done = True
            for fut in self._futures:
                try:
                    ev = fut.result()
                except BaseException as exc:
                    if self._cancel is not None:
                        self._cancel.set()
                    better = isinstance(exc, CorruptWeights | BadModelFolder)
                    if self._error is None or (
                        better and not isinstance(self._error, CorruptWeights | BadModelFolder)
                    ):
                        self._error = exc
                    continue
                if ev is not None:
                    self._events.append(ev)
            self._futures = []
            block = self.block
            if block is not None and block.is_cuda:
                if self._error is not None:
                    # Copies already issued still write into the block: finish them before
                    # the block's memory can go to anyone else.
                    torch.cuda.synchronize(block.device)
                elif self._host_bound:
                    for ev in self._events:
                        ev.synchronize()
                else:
                    stream = torch.cuda.current_stream(block.device)
                    for ev in self._events:
                        stream.wait_event(ev)
            self._events = []
            if self._cleanup is not None:
                self._cleanup()
                self._cleanup = None
        if self._error is not None:
            self.block = None
            raise self._error
        assert self.block is not None
        return self.block

    def cancel(self) -> None:
        """Stop reading, wait for the threads, drop the block; never raises."""
        if self._cancel is not None:
            self._cancel.set()
        with contextlib.suppress(BaseException):
            self.wait()
        block, self.block = self.block, None
        if block is not None and block.is_cuda:
            # Copies already issued still write into the block: let them finish first.
            torch.cuda.synchronize(block.device)


class PipelinedReader:
    """Reads models' weight files (`BlockLayout`) into one block per model on `device`, with
    `threads` reader threads, `chunk_bytes` per read and, for CUDA, a pool of `2 x threads`
    pinned staging buffers reused across loads. Thread-safe: loads of several models may
    run at once (they share the threads and the staging pool)."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        *,
        threads: int | None = None,
        chunk_bytes: int | None = None,
        staging: bool | None = None,
        memory: HostMemory | None = None,
    ) -> None:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        self.device = dev
        self.threads = max(1, threads or DEFAULT_THREADS)
        self.chunk_bytes = max(4096, chunk_bytes or DEFAULT_CHUNK_BYTES)
        # On CUDA reads must go through host memory; on a CPU device reading straight into
        # the block is one copy less (`staging=True` forces the CUDA path's shape, for tests).
        self.staging = dev.type != "cpu" if staging is None else staging or dev.type != "cpu"
        self.memory = memory if memory is not None else HostMemory()
        self._staging = _Staging(
            self.memory, 2 * self.threads, self.chunk_bytes, pinned=dev.type == "cuda"
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._local = threading.local()
        self._h2d_stream: Any = None

    def describe(self) -> str:
        """One line for profiles and benchmarks: how this reader reads."""
        how = "pinned staging" if self.device.type == "cuda" else "direct"
        if self.staging and self.device.type == "cpu":
            how = "host staging"
        return (
            f"pipelined reader: {self.threads} threads x {self.chunk_bytes / MiB:g} MiB reads, "
            f"{how}, one block per model on {self.device}"
        )

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.threads, thread_name_prefix="genedge-read"
                )
            return self._pool

    def close(self) -> None:
        """Stop the threads and free the staging buffers (idempotent)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._staging.close()

    # ----------------------------------------------------------------------------------
    def _empty_block(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def read(self, layout: BlockLayout) -> Transfer:
        """Start reading `layout`'s files into a new block on the device."""
        block = self._empty_block(layout.nbytes)
        return self._start_files(layout, block, direct=not self.staging)

    def read_to_host(self, layout: BlockLayout, *, pinned: bool) -> HostBuffer:
        """Read `layout`'s files into a new host buffer (page-locked when `pinned`), laid out
        as the device block will be; blocking. Frees the buffer when reading fails."""
        buf = self.memory.allocate(layout.nbytes, pinned=pinned)
        try:
            assert buf.tensor is not None
            self._start_files(layout, buf.tensor, direct=True).wait()
        except BaseException:
            buf.free()
            raise
        return buf

    def copy_from_host(
        self,
        layout: BlockLayout,
        host: torch.Tensor,
        *,
        cleanup: Callable[[], None] | None = None,
    ) -> Transfer:
        """Start copying a host block (from `read_to_host`) into a new device block: one
        asynchronous copy on CUDA (full PCIe speed when `host` is pinned), a memcpy split
        over the threads on CPU. `cleanup` runs once the copy no longer reads `host` (in
        `Transfer.wait` or `cancel`, or here when starting fails)."""
        try:
            return self._copy_from_host(layout, host, cleanup)
        except BaseException:
            if cleanup is not None:
                cleanup()
            raise

    def _copy_from_host(
        self, layout: BlockLayout, host: torch.Tensor, cleanup: Callable[[], None] | None
    ) -> Transfer:
        if host.numel() != layout.nbytes:
            raise ValueError(f"host block of {host.numel()} B, layout needs {layout.nbytes}")
        block = self._empty_block(layout.nbytes)
        if self.device.type == "cuda":
            if self._h2d_stream is None:
                self._h2d_stream = torch.cuda.Stream(self.device)
            stream = self._h2d_stream
            # The block may reuse memory the current stream still works on: order after it.
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                block.copy_(host, non_blocking=bool(host.is_pinned()))
                done = torch.cuda.Event()
                done.record(stream)
            return Transfer(block, [], events=[done], cleanup=cleanup, host_bound=True)
        cancel = threading.Event()
        step = max(self.chunk_bytes, 64 * MiB)
        ranges = iter([(lo, min(lo + step, layout.nbytes)) for lo in range(0, layout.nbytes, step)])
        lock = threading.Lock()

        def work() -> None:
            while not cancel.is_set():
                with lock:
                    r = next(ranges, None)
                if r is None:
                    return
                block[r[0] : r[1]].copy_(host[r[0] : r[1]])

        pool = self._executor()
        n = min(self.threads, max(1, layout.nbytes // step))
        futures = [pool.submit(work) for _ in range(n)]
        return Transfer(block, futures, cancel=cancel, cleanup=cleanup)

    # ----------------------------------------------------------------------------------
    def _start_files(self, layout: BlockLayout, dest: torch.Tensor, *, direct: bool) -> Transfer:
        job = _FileJob(layout, self.chunk_bytes, dest, direct)
        start: Any = None
        if dest.is_cuda:
            # Copies run on the readers' streams; the block may reuse memory the current
            # stream still works on, so they wait for it first.
            start = torch.cuda.Event()
            start.record(torch.cuda.current_stream(dest.device))
        pool = self._executor()
        futures = [pool.submit(self._work, job, start) for _ in range(self.threads)]
        return Transfer(dest, futures, cancel=job.cancelled, cleanup=job.close)

    def _stream(self) -> Any:
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = torch.cuda.Stream(self.device)
            self._local.stream = stream
        return stream

    def _work(self, job: _FileJob, start: Any) -> Any:
        """One reader thread's loop: take the next chunk, read it, put it in place. Returns
        the CUDA event of its last copy (None on CPU)."""
        try:
            stream = None
            if job.dest.is_cuda:
                stream = self._stream()
                stream.wait_event(start)
            while (chunk := job.next()) is not None:
                f = job.layout.files[chunk.file]
                fd = job.fds[chunk.file]
                if job.direct:
                    assert job.dest_view is not None
                    views = [job.dest_view[b : b + n] for _, b, n in chunk.pieces]
                    _pread_full(fd, views, chunk.lo, f.rel, f.size)
                else:
                    self._staged(job, chunk, fd, f, stream)
            if stream is not None:
                done = torch.cuda.Event()
                done.record(stream)
                return done
            return None
        except BaseException:
            job.cancelled.set()
            raise

    def _staged(self, job: _FileJob, chunk: _Chunk, fd: int, f: FilePlan, stream: Any) -> None:
        slot = self._staging.get()
        try:
            buf, event = slot
            if event is not None:
                event.synchronize()  # its previous copy must be done before we overwrite it
                slot[1] = None
            staging: torch.Tensor = buf.tensor
            n = chunk.hi - chunk.lo
            _pread_full(fd, [_writable(staging[:n])], chunk.lo, f.rel, f.size)
            if stream is None:
                for src, dst, k in chunk.pieces:
                    job.dest[dst : dst + k].copy_(staging[src : src + k])
                return
            with torch.cuda.stream(stream):
                for src, dst, k in chunk.pieces:
                    job.dest[dst : dst + k].copy_(staging[src : src + k], non_blocking=True)
                event = torch.cuda.Event()
                event.record(stream)
            slot[1] = event
        finally:
            self._staging.put(slot)
