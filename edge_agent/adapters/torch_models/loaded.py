"""What a model on the device shares, text or image: memory accounting and closing (the
`LoadedModel` port's bookkeeping), and the parameter count and dtype a profile reports."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import torch
from torch import nn

from edge_agent.adapters.torch_models.tensors import (
    tensors_of,
    unique_params,
    unique_storage_bytes,
)


class LoadedTorchModel:
    """The base of `TextModel` and `ImagePipelineModel`: subclasses say which torch modules
    they hold (`torch_modules`) and how to drop them (`_drop`)."""

    model_id: str

    def __init__(self, model_id: str, device: torch.device) -> None:
        self.model_id = model_id
        self.device = device
        self._memory: int | None = None

    def torch_modules(self) -> list[nn.Module]:  # overridden
        return []

    def memory_bytes(self) -> int:
        """Bytes of the unique storages of all parameters and buffers (a tied weight counts
        once); 0 after close."""
        modules = self.torch_modules()
        if not modules:
            return 0
        if self._memory is None:
            self._memory = unique_storage_bytes(modules)
        return self._memory

    def _drop(self) -> None:  # overridden: set every reference to None
        pass

    def close(self) -> None:
        """Drop every reference to modules and tensors and give the memory back (idempotent)."""
        modules = self.torch_modules()
        watch = [weakref.ref(m) for m in modules] + [weakref.ref(t) for t in tensors_of(modules)]
        del modules
        self._drop()
        self._memory = None
        # Reference counting frees a model at once; a full collection (a fifth of a second
        # or more in a process with the libraries imported) only when a cycle still holds
        # part of it.
        if any(r() is not None for r in watch):
            gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def param_count(loaded: Any) -> int:
    """Number of parameters of a loaded model (a tied weight counts once)."""
    if not isinstance(loaded, LoadedTorchModel):
        return 0
    return sum(p.numel() for p in unique_params(loaded.torch_modules()))


def dtype_name(loaded: Any) -> str:
    """The dtype holding most of a loaded model's parameters, e.g. `float16`."""
    if not isinstance(loaded, LoadedTorchModel):
        return "unknown"
    counts: dict[torch.dtype, int] = {}
    for p in unique_params(loaded.torch_modules()):
        counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    if not counts:
        return "unknown"
    return str(max(counts, key=lambda d: counts[d])).removeprefix("torch.")
