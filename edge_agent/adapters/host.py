"""Facts about this host: GPU (through NVML), RAM, disk, bandwidths, and a fingerprint.

The fingerprint names a *host kind* (CPU model and count, RAM size, GPU model and memory,
torch version) so that profiles measured on one H200 host can be reused on an identical
one. NVML state lives in an `Nvml` instance, never in module globals, so tests and callers
can make and close their own. torch is imported only inside `measure_h2d_GBps`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import psutil

from edge_agent.adapters import pagecache

log = logging.getLogger("edge_agent.host")

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class GpuInfo:
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int


class Nvml:
    """A lazily initialised NVML session.

    The first use calls `nvmlInit`; when the library or the driver is missing, that failure
    is logged once at debug level and every later call answers None (or False) without
    trying again. `close()` calls `nvmlShutdown` if `nvmlInit` succeeded. Pass `module` (an
    object with pynvml's functions) to test with a fake driver.
    """

    def __init__(self, module: Any = None) -> None:
        self._module = module
        self._lock = threading.Lock()
        self._state: bool | None = None  # None: not tried; True: initialised; False: failed

    # ------------------------------------------------------------------ session
    def _nvml(self) -> Any | None:
        with self._lock:
            if self._state is None:
                self._state = self._init()
            return self._module if self._state else None

    def _init(self) -> bool:
        try:
            if self._module is None:
                import pynvml

                self._module = pynvml
            self._module.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded...
            log.debug("NVML unavailable: %s", exc)
            return False
        return True

    @property
    def available(self) -> bool:
        """Whether NVML answers on this host (initialises it on first use)."""
        return self._nvml() is not None

    def close(self) -> None:
        with self._lock:
            if self._state:
                try:
                    self._module.nvmlShutdown()
                except Exception as exc:
                    log.debug("nvmlShutdown: %s", exc)
            self._state = None

    def __enter__(self) -> Nvml:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ queries
    def gpu(self, index: int = 0) -> GpuInfo | None:
        """Name and memory of GPU `index` as the driver sees it (all processes), or None."""
        nv = self._nvml()
        if nv is None:
            return None
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            name = nv.nvmlDeviceGetName(handle)
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:
            log.debug("NVML query of GPU %d failed: %s", index, exc)
            return None
        if isinstance(name, bytes):  # older pynvml releases
            name = name.decode("utf-8", "replace")
        return GpuInfo(
            name=str(name),
            total_bytes=int(mem.total),
            free_bytes=int(mem.free),
            used_bytes=int(mem.used),
        )

    def process_used_bytes(self, pid: int | None = None, index: int | None = None) -> int | None:
        """GPU memory used by process `pid` (default: this one) on GPU `index` (default: all).

        None when NVML is missing, the driver does not report per-process memory (some MIG
        and container setups), or it does not list the process (no CUDA context yet, or a
        PID namespace hides it): "not known" rather than a misleading 0.
        """
        nv = self._nvml()
        if nv is None:
            return None
        pid = os.getpid() if pid is None else pid
        try:
            indexes = [index] if index is not None else range(nv.nvmlDeviceGetCount())
            used: int | None = None
            for i in indexes:
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                for proc in nv.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid != pid:
                        continue
                    if proc.usedGpuMemory is None:  # NVML_VALUE_NOT_AVAILABLE
                        return None
                    used = (used or 0) + int(proc.usedGpuMemory)
        except Exception as exc:
            log.debug("NVML process query failed: %s", exc)
            return None
        return used


def read_gpu(index: int = 0) -> GpuInfo | None:
    """One-shot read of GPU `index`; None (quietly) without NVML or a driver."""
    with Nvml() as nvml:
        return nvml.gpu(index)


# --------------------------------------------------------------------------------------
# RAM and disk
# --------------------------------------------------------------------------------------


def ram_bytes() -> tuple[int, int]:
    """(total, available) bytes of host RAM."""
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def disk_bytes(path: Path) -> tuple[int, int]:
    """(total, free) bytes of the filesystem holding `path` (or its nearest existing parent).

    `free` is what an unprivileged process may use (excludes root-reserved blocks)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    usage = psutil.disk_usage(str(p))
    return int(usage.total), int(usage.free)


# --------------------------------------------------------------------------------------
# Bandwidths
# --------------------------------------------------------------------------------------


def measure_disk_read_GBps(directory: Path, size_bytes: int = 256 * MiB) -> tuple[float, bool]:
    """Sequential read bandwidth of the disk under `directory`, in GB/s (1e9 bytes/s).

    Writes a probe file of random bytes (so compressing filesystems cannot cheat), fsyncs
    it, drops it from the page cache, times reading it back and deletes it. Returns
    `(GBps, cold)`: `cold` is False when the page cache could not be dropped (no
    posix_fadvise, tmpfs...), in which case the number is a memory bandwidth, not the disk's.
    The probe file's name starts with a dot, so a store scan running meanwhile ignores it.
    """
    chunk = min(size_bytes, 4 * MiB)
    fd, name = tempfile.mkstemp(prefix=".genedge-disk-probe-", dir=directory)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            written = 0
            while written < size_bytes:
                n = min(chunk, size_bytes - written)
                f.write(os.urandom(n))
                written += n
            f.flush()
            os.fsync(f.fileno())
        cold = pagecache.drop_page_cache([path])
        t0 = time.perf_counter()
        nbytes = pagecache.read_files([path])
        elapsed = time.perf_counter() - t0
    finally:
        path.unlink(missing_ok=True)
    return nbytes / max(elapsed, 1e-9) / 1e9, cold


def measure_h2d_GBps(device: str, size_bytes: int = 256 * MiB) -> float:
    """Host-to-device copy bandwidth in GB/s (1e9 bytes/s), best of 3 after one warm-up.

    On `cuda*`: a pinned host buffer copied to the device, timed up to a synchronise (what
    a preload from the cached tier does). On `cpu`: a host memcpy (`copy_` into a
    preallocated tensor), the cost of "loading" a model that stays in host RAM.
    """
    import torch

    n = max(1, size_bytes)
    if device.startswith("cuda"):
        dev = torch.device(device)
        src = torch.empty(n, dtype=torch.uint8, pin_memory=True).fill_(1)
        dst = torch.empty(n, dtype=torch.uint8, device=dev)

        def copy() -> None:
            dst.copy_(src, non_blocking=True)
            torch.cuda.synchronize(dev)

    elif device == "cpu":
        src = torch.ones(n, dtype=torch.uint8)
        dst = torch.empty_like(src)

        def copy() -> None:
            dst.copy_(src)

    else:
        raise ValueError(f"cannot measure host->device bandwidth for device {device!r}")
    copy()  # warm-up: first-touch page faults, CUDA context and copy engines
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        copy()
        best = min(best, time.perf_counter() - t0)
    return n / max(best, 1e-9) / 1e9


# --------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`), else what `platform` knows, else `unknown`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _torch_version() -> str:
    """torch's major.minor from package metadata (no import); `none` when not installed."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        mod: ModuleType | None = sys.modules.get("torch")
        version = getattr(mod, "__version__", None) or "none"
    if version == "none":
        return version
    return ".".join(version.split("+")[0].split(".")[:2])


def _device_type(device: str) -> str:
    return device.split(":", 1)[0]


def host_fingerprint(device: str, gpu: GpuInfo | None) -> str:
    """16 hex chars naming this *kind* of host: CPU model and logical count, RAM (GiB),
    device type, GPU name and memory, torch major.minor. The device index is left out
    (`cuda:0` and `cuda:1` of one host are the same kind); free memory is left out (it
    varies). Hosts with equal fingerprints can share measured profiles."""
    ram_total, _ = ram_bytes()
    parts = [
        cpu_model(),
        str(os.cpu_count() or 0),
        str(round(ram_total / GiB)),
        _device_type(device),
        gpu.name if gpu else "-",
        str(gpu.total_bytes) if gpu else "-",
        _torch_version(),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def host_description(device: str, gpu: GpuInfo | None) -> str:
    """For people: `NVIDIA H200 143771 MiB / 16 CPUs / 125 GiB RAM`, `cpu / 2 CPUs / 23 GiB RAM`."""
    ram_total, _ = ram_bytes()
    head = f"{gpu.name} {gpu.total_bytes // MiB} MiB" if gpu else device
    return f"{head} / {os.cpu_count() or 0} CPUs / {round(ram_total / GiB)} GiB RAM"


def library_versions() -> dict[str, str]:
    """Versions of python and the model libraries, from package metadata (nothing imported);
    libraries that are not installed are left out."""
    versions = {"python": platform.python_version()}
    for dist in ("torch", "diffusers", "transformers", "safetensors"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
