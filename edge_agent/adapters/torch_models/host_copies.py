"""The `cached` level: a model's weights held in host RAM (page-locked when a GPU exists, so
host-to-device copies run at full bandwidth and asynchronously), implementing the
`HostCopy` port.

- `BlockHostCopy` (the pipelined reader's): every weight file in one block laid out as on
  the device, so loading from it is one host-to-device copy; it also keeps the model's
  skeletons, tokenizers and schedulers prepared for the next load.
- `SafetensorsHostCopy` (the safetensors reader's, see `safetensors_reader`): the tensors
  of each weight file, each copied to the device on its own.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING

import torch

from edge_agent.adapters.fastload import BlockLayout, HostBuffer
from genedge.contract import ModelManifest

if TYPE_CHECKING:
    from edge_agent.adapters.torch_models.skeletons import Prepared


class SafetensorsHostCopy:
    """A model's checkpoint tensors in host RAM, per weight file (pinned when a GPU exists,
    so host-to-device copies run at full bandwidth and asynchronously)."""

    def __init__(self, model_id: str, files: dict[str, dict[str, torch.Tensor]], pinned: bool):
        self.model_id = model_id
        self.pinned = pinned
        self._files: dict[str, dict[str, torch.Tensor]] | None = files
        self.nbytes = sum(t.numel() * t.element_size() for f in files.values() for t in f.values())

    @property
    def released(self) -> bool:
        return self._files is None

    def files(self) -> list[str]:
        """Relative paths of the weight files held."""
        return list(self._files or {})

    def tensors(self, rel: str) -> dict[str, torch.Tensor] | None:
        """The tensors of weight file `rel`, or None when not held (or released)."""
        files = self._files
        return None if files is None else files.get(rel)

    def release(self) -> None:
        """Drop the tensors (idempotent); memory returns once no load still uses them."""
        self._files = None
        self.nbytes = 0


class BlockHostCopy:
    """A model's weight files in one host block (page-locked when a GPU exists), laid out
    exactly as the device block will be, so loading from it is one host-to-device copy.

    `release()` frees the block (unregistering the page-locked memory) once no load is
    still copying from it: loads hold it with `acquire()` / `unuse()`.

    It also keeps the model *prepared* for its next load (skeletons on `meta`, tokenizers,
    schedulers: no weights, little memory), so that load skips the Python work of building
    them; the loader prepares the next one in the background after each load.
    """

    def __init__(
        self, model_id: str, layout: BlockLayout, buffer: HostBuffer, manifest: ModelManifest
    ):
        self.model_id = model_id
        self.layout = layout
        self.manifest = manifest
        self.pinned = buffer.pinned
        self.nbytes = buffer.nbytes
        self._buffer: HostBuffer | None = buffer
        self._users = 0
        self._released = False
        self._lock = threading.Lock()
        self._prepared: Prepared | None = None
        self._preparing: Future[None] | None = None

    def ready(self, timeout: float | None = None) -> bool:
        """Wait for a preparation in progress; True when the next load finds one ready."""
        fut = self._preparing
        if fut is not None:
            with contextlib.suppress(Exception):
                fut.result(timeout)
        return self._prepared is not None

    def track_preparation(self, preparing: Future[None]) -> None:
        """The background preparation of the next load (waited for by `ready`, cancelled
        by `release`)."""
        self._preparing = preparing

    def take_prepared(self) -> Prepared | None:
        """The prepared model for one load (waiting for one being built), or None."""
        self.ready()
        with self._lock:
            prepared, self._prepared = self._prepared, None
            return prepared

    def offer_prepared(self, prepared: Prepared | None) -> None:
        """Keep `prepared` for the next load (dropped once released)."""
        with self._lock:
            if not self._released:
                self._prepared = prepared

    @property
    def released(self) -> bool:
        return self._released

    def files(self) -> list[str]:
        """Relative paths of the weight files held (none once released)."""
        return [] if self._released else [f.rel for f in self.layout.files]

    def acquire(self) -> torch.Tensor | None:
        """The host block for one load (None once released); pair with `unuse()`."""
        with self._lock:
            if self._released or self._buffer is None or self._buffer.tensor is None:
                return None
            self._users += 1
            return self._buffer.tensor

    def unuse(self) -> None:
        """A load no longer reads the block; frees it if it was released meanwhile."""
        with self._lock:
            self._users = max(0, self._users - 1)
            buffer = self._take_if_free()
        if buffer is not None:
            buffer.free()

    def release(self) -> None:
        """Free the block (idempotent); deferred until running loads have copied it."""
        with self._lock:
            self._released = True
            self.nbytes = 0
            self._prepared = None
            buffer = self._take_if_free()
        if self._preparing is not None:
            self._preparing.cancel()  # one still queued is not needed any more
        if buffer is not None:
            buffer.free()

    def _take_if_free(self) -> HostBuffer | None:
        if self._released and self._users == 0:
            buffer, self._buffer = self._buffer, None
            return buffer
        return None
