"""The compute device: which one, how much memory it has, and how much a model uses on it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psutil
import torch


def resolve_device(setting: str) -> str:
    """`auto` -> `cuda:0` when CUDA is available, else `cpu`; anything else as given."""
    if setting == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {setting!r} asked for, but CUDA is not available")
    return setting


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def synchronize(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(torch.device(device))


def device_total_free(device: str) -> tuple[int, int]:
    """(total, free) bytes of the device; host RAM for `cpu`."""
    if is_cuda(device):
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return int(total), int(free)
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


@dataclass
class MemorySample:
    allocated: int  # CUDA allocated bytes, or process RSS on CPU


class MemoryMeter:
    """Measures memory the way the profile reports it: CUDA allocated bytes on a GPU, the
    process's resident set size on CPU. `peak_during()` samples RSS in a thread on CPU (the
    kernel keeps no resettable RSS peak); on CUDA it reads the allocator's own peak."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.cuda = is_cuda(device)
        self._proc = psutil.Process()

    def now(self) -> int:
        if self.cuda:
            synchronize(self.device)
            return int(torch.cuda.memory_allocated(torch.device(self.device)))
        return int(self._proc.memory_info().rss)

    def start_peak(self) -> None:
        if self.cuda:
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(torch.device(self.device))
            return
        self._peak = self.now()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, self.now())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop_peak(self) -> int:
        if self.cuda:
            synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(torch.device(self.device)))
        self._stop.set()
        self._thread.join()
        return max(self._peak, self.now())
