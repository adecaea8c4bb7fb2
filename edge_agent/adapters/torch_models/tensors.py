"""Small torch helpers the rest of the package shares: the dtypes a load may cast to, the
device, and walking the tensors of a model's modules (memory and parameter accounting)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a load's clock counts only finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def normalise_device(device: str) -> torch.device:
    """`device` with the index spelled out (`cuda` -> `cuda:<current>`), so comparing a
    tensor's device with it is exact."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def tensors_of(modules: Iterable[nn.Module]) -> Iterator[torch.Tensor]:
    """Every parameter and (non-None) buffer of `modules`, shared ones as often as seen."""
    for m in modules:
        yield from m.parameters()
        yield from (b for b in m.buffers() if b is not None)


def unique_storage_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the distinct storages behind `modules`' tensors (a tied weight, or views of
    one block, count once); tensors on `meta` hold none."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in tensors_of(modules):
        if t.is_meta:
            continue
        st = t.untyped_storage()
        key = (str(t.device), st.data_ptr())
        if key not in seen:
            seen.add(key)
            total += st.nbytes()
    return total


def unique_params(modules: Iterable[nn.Module]) -> Iterator[nn.Parameter]:
    """Every parameter of `modules` once (tied weights are one parameter)."""
    seen: set[int] = set()
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                yield p
