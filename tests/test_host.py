"""Host facts: NVML (real where present, a hand-written fake driver otherwise), RAM, disk,
bandwidth probes, fingerprint and versions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.adapters import host
from edge_agent.adapters.host import GpuInfo, Nvml

MiB = 1024 * 1024


# --------------------------------------------------------------------------------------
# NVML
# --------------------------------------------------------------------------------------


def test_read_gpu_without_a_driver_is_none_or_real() -> None:
    gpu = host.read_gpu()  # must not raise on a host without NVML
    if Nvml().available:
        assert isinstance(gpu, GpuInfo) and gpu.total_bytes > 0
    else:
        assert gpu is None
        assert Nvml().gpu(0) is None
        assert Nvml().process_used_bytes() is None


@dataclass
class _Mem:
    total: int
    free: int
    used: int


@dataclass
class _Proc:
    pid: int
    usedGpuMemory: int | None  # pynvml's field name


class FakeNvmlModule:
    """The few pynvml functions `Nvml` uses, over two fake GPUs."""

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.inits = 0
        self.shutdowns = 0
        self.procs: dict[int, list[_Proc]] = {0: [], 1: []}

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index not in (0, 1):
            raise RuntimeError("Invalid Argument")
        return index

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return b"NVIDIA H200" if handle == 0 else "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Mem:
        return _Mem(total=150_754_820_096, free=150_000_000_000, used=754_820_096)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[_Proc]:
        return self.procs[handle]


def test_nvml_with_a_fake_driver() -> None:
    fake = FakeNvmlModule()
    nvml = Nvml(fake)
    assert fake.inits == 0  # lazy
    assert nvml.available
    gpu = nvml.gpu(0)
    assert gpu == GpuInfo("NVIDIA H200", 150_754_820_096, 150_000_000_000, 754_820_096)
    assert nvml.gpu(1) is not None and nvml.gpu(1).name == "NVIDIA H100 80GB HBM3"  # type: ignore[union-attr]
    assert nvml.gpu(7) is None
    assert fake.inits == 1

    assert nvml.process_used_bytes(1234) is None  # not listed: unknown, not 0
    fake.procs[0].append(_Proc(1234, 1000))
    fake.procs[1].append(_Proc(1234, 24))
    fake.procs[1].append(_Proc(99, 5))
    assert nvml.process_used_bytes(1234) == 1024
    assert nvml.process_used_bytes(1234, index=1) == 24
    fake.procs[1].append(_Proc(4321, None))
    assert nvml.process_used_bytes(4321) is None

    nvml.close()
    assert fake.shutdowns == 1
    nvml.close()
    assert fake.shutdowns == 1


def test_nvml_init_failure_is_quiet_and_not_retried() -> None:
    fake = FakeNvmlModule(fail_init=True)
    with Nvml(fake) as nvml:
        assert not nvml.available
        assert nvml.gpu(0) is None
        assert nvml.process_used_bytes() is None
    assert fake.inits == 1 and fake.shutdowns == 0


# --------------------------------------------------------------------------------------
# RAM, disk, bandwidth
# --------------------------------------------------------------------------------------


def test_ram_and_disk(tmp_path: Path) -> None:
    total, available = host.ram_bytes()
    assert total > 0 and 0 < available <= total
    total, free = host.disk_bytes(tmp_path)
    assert total > 0 and 0 < free <= total
    # A path not created yet (the store dir before first start) reads its parent's disk.
    assert host.disk_bytes(tmp_path / "not" / "yet")[0] == total


def test_disk_read_bandwidth(tmp_path: Path) -> None:
    gbps, cold = host.measure_disk_read_GBps(tmp_path, 8 * MiB)
    assert isinstance(gbps, float) and gbps > 0
    assert isinstance(cold, bool)
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


def test_h2d_bandwidth_on_cpu() -> None:
    gbps = host.measure_h2d_GBps("cpu", 8 * MiB)
    assert isinstance(gbps, float) and gbps > 0
    with pytest.raises(ValueError):
        host.measure_h2d_GBps("tpu", 1024)


# --------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_short() -> None:
    fp = host.host_fingerprint("cpu", None)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert host.host_fingerprint("cpu", None) == fp
    h200 = GpuInfo("NVIDIA H200", 150_754_820_096, 1, 2)
    gpu_fp = host.host_fingerprint("cuda:0", h200)
    assert gpu_fp != fp
    # Free/used memory and the device index do not change the host kind.
    assert host.host_fingerprint("cuda:1", GpuInfo("NVIDIA H200", 150_754_820_096, 3, 4)) == gpu_fp
    assert host.host_fingerprint("cuda:0", GpuInfo("NVIDIA H100", 85_520_809_984, 1, 2)) != gpu_fp


def test_host_description() -> None:
    assert re.fullmatch(r"cpu / \d+ CPUs / \d+ GiB RAM", host.host_description("cpu", None))
    gpu = GpuInfo("NVIDIA H200", 143771 * MiB, 0, 0)
    assert re.fullmatch(
        r"NVIDIA H200 143771 MiB / \d+ CPUs / \d+ GiB RAM", host.host_description("cuda:0", gpu)
    )


def test_library_versions() -> None:
    versions = host.library_versions()
    assert versions["python"].count(".") == 2
    for lib in ("torch", "safetensors", "transformers", "diffusers"):
        assert versions.get(lib), lib
    assert host.cpu_model()
