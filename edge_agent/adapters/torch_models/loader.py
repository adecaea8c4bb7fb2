"""`TorchModelLoader`, the agent's `ModelLoader`: moves a model's weights from disk to host
RAM (the `cached` level) and from either onto the compute device.

Its default is the *direct* loader (`load_direct`): the transfer of the weights starts
first, the skeletons are built (or taken ready from a cached copy) while it runs, and the
checkpoint tensors are assigned to them (`skeletons`, `assign`). `load` falls back to the
libraries' own loaders (`library`) when the direct loader cannot handle a folder, saying why
in the report's notes.
"""

from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from edge_agent.adapters.fastload import (
    HostMemory,
    PipelinedReader,
    UnsupportedByDirectLoader,
    plan_layout,
)
from edge_agent.adapters.torch_models import library, safetensors_reader
from edge_agent.adapters.torch_models.host_copies import BlockHostCopy, SafetensorsHostCopy
from edge_agent.adapters.torch_models.image import ImagePipelineModel
from edge_agent.adapters.torch_models.kv_cache import folder_batch_cache_bytes
from edge_agent.adapters.torch_models.safetensors_reader import SafetensorsSource
from edge_agent.adapters.torch_models.skeletons import (
    Prepared,
    finish,
    import_classes,
    prepare,
)
from edge_agent.adapters.torch_models.sources import BlockSource, TensorSource
from edge_agent.adapters.torch_models.tensors import DTYPES, normalise_device, synchronize
from edge_agent.adapters.torch_models.text import TextModel
from edge_agent.core.batching import BatchLimits
from edge_agent.core.ports import HostCopy, LoadReport
from edge_agent.errors import BadModelFolder, CorruptWeights
from genedge.contract import ModelKind, ModelManifest

# How the direct loader reads weight files: the pipelined block reader (`fastload`) or the
# older per-file one (`safetensors_reader`, whose docstring says why it stays).
READERS = ("pipelined", "safetensors")

# What `LoadReport.loader` (and so a profile's `loaders`) calls the direct loader: stored
# profiles and the orchestrator's copies of them use this name.
DIRECT_LOADER_NAME = "genedge"


def quiet_library_progress() -> None:
    """Turn off the libraries' tqdm bars: a server's log is for events, not progress bars
    (the agent reports progress in each model's status)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    tlog.disable_progress_bar()
    dlog.disable_progress_bar()


class TorchModelLoader:
    """Moves weights between disk, host RAM and `device` (implements `ModelLoader`).

    `reader` picks how the direct loader reads weight files (`pipelined` or `safetensors`,
    see `READERS`); `reader_threads` and `chunk_bytes` tune the pipelined one. `pin_memory`
    (default: when CUDA is available) page-locks the `cached` level's copies;
    `prepare_cached` keeps them prepared for their next load (`BlockHostCopy`).
    """

    def __init__(
        self,
        device: str = "cpu",
        *,
        dtype: str | None = None,
        pin_memory: bool | None = None,
        reader: str = "pipelined",
        reader_threads: int | None = None,
        chunk_bytes: int | None = None,
        host_memory: HostMemory | None = None,
        prepare_cached: bool = True,
    ) -> None:
        quiet_library_progress()
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)} or None, not {dtype!r}")
        if reader not in READERS:
            raise ValueError(f"reader must be one of {READERS}, not {reader!r}")
        self.device = device
        self.dtype = dtype
        self.reader = reader
        self._dev = normalise_device(device)
        self._cast = DTYPES[dtype] if dtype is not None else None
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._reader = PipelinedReader(
            self._dev, threads=reader_threads, chunk_bytes=chunk_bytes, memory=host_memory
        )
        # One background thread prepares cached copies for their next load (see
        # `BlockHostCopy`); `prepare_cached=False` leaves every load to build its own.
        self.prepare_cached = prepare_cached
        self._background: ThreadPoolExecutor | None = None
        self._background_lock = threading.Lock()

    @property
    def host_memory(self) -> HostMemory:
        """Accounting of the host buffers this loader holds (staging and `cached` blocks)."""
        return self._reader.memory

    def describe(self) -> str:
        """One line on how this loader reads weights (for profiles and benchmarks)."""
        if self.reader == "pipelined":
            return self._reader.describe()
        return safetensors_reader.DESCRIPTION

    def close(self) -> None:
        """Stop the reader threads and free the staging buffers (idempotent). Host copies
        made by this loader stay valid until released."""
        with self._background_lock:
            background, self._background = self._background, None
        if background is not None:
            background.shutdown(wait=True, cancel_futures=True)
        self._reader.close()

    def _prepare_later(self, copy: BlockHostCopy) -> None:
        """Prepare `copy`'s next load in the background (a load just took the last one)."""
        if not self.prepare_cached or copy.released:
            return
        with self._background_lock:
            if self._background is None:
                self._background = ThreadPoolExecutor(1, thread_name_prefix="prepare-next-load")
            background = self._background

        def work() -> None:
            if not copy.released:
                copy.offer_prepared(_try_prepare(copy.manifest))

        copy.track_preparation(background.submit(work))

    # ----------------------------------------------------------------------------------
    # stored -> cached
    def read_to_host(self, manifest: ModelManifest) -> BlockHostCopy | SafetensorsHostCopy:
        """Read every weight file of `manifest` into host RAM (pinned when configured): one
        block laid out as on the device with the pipelined reader, tensors per file with
        the safetensors one (also used for what the pipelined reader does not handle)."""
        if self.reader == "pipelined":
            try:
                layout = plan_layout(Path(manifest.path), list(manifest.weight_files))
            except UnsupportedByDirectLoader:
                layout = None  # the safetensors reader below, or its error
            if layout is not None:
                buffer = self._reader.read_to_host(layout, pinned=self.pin_memory)
                copy = BlockHostCopy(manifest.id, layout, buffer, manifest)
                if self.prepare_cached:
                    import_classes(manifest)
                    copy.offer_prepared(_try_prepare(manifest))
                return copy
        return safetensors_reader.read_to_host(manifest, pinned=self.pin_memory)

    # ----------------------------------------------------------------------------------
    # stored/cached -> device
    def load(
        self, manifest: ModelManifest, source: HostCopy | None
    ) -> tuple[TextModel | ImagePipelineModel, LoadReport]:
        """Load `manifest` onto the device with the direct loader, from `source` (tier
        `ram`) or from disk (tier `disk`); falls back to `load_with_library` when the direct
        loader cannot handle the folder. Corrupt or missing weights raise."""
        if source is not None and getattr(source, "model_id", manifest.id) != manifest.id:
            raise ValueError(f"host copy of {source.model_id} given to load {manifest.id}")
        reason: str | None = None
        try:
            return self.load_direct(manifest, source)
        except (CorruptWeights, BadModelFolder, torch.cuda.OutOfMemoryError):
            raise
        except Exception as exc:  # anything else: the library may know better
            failed = f"{type(exc).__name__}: {exc}"
            reason = f"{DIRECT_LOADER_NAME} loader failed ({failed}); used from_pretrained"
        # Outside the except block, so the failed attempt's tensors can be freed first.
        gc.collect()
        if self._dev.type == "cuda":
            torch.cuda.empty_cache()
        try:
            model, report = self.load_with_library(manifest)
        except Exception as exc:
            exc.add_note(reason)
            raise
        report.notes.insert(0, reason)
        if source is not None:
            report.notes.append("the library loader reads from disk, not from the host copy")
        return model, report

    def load_direct(
        self, manifest: ModelManifest, source: HostCopy | None
    ) -> tuple[TextModel | ImagePipelineModel, LoadReport]:
        """The direct loader alone (no fallback): skeletons built on `meta`, checkpoint
        tensors assigned to them as they arrive. Raises `UnsupportedByDirectLoader` (or the
        library's own error) for folders it cannot handle."""
        if source is not None and getattr(source, "model_id", manifest.id) != manifest.id:
            raise ValueError(f"host copy of {source.model_id} given to load {manifest.id}")
        if source is not None and not isinstance(source, BlockHostCopy | SafetensorsHostCopy):
            raise UnsupportedByDirectLoader(f"unknown host copy type {type(source).__name__}")
        notes: list[str] = []
        import_classes(manifest)
        t0 = time.perf_counter()
        # The transfer starts first, so everything below overlaps with it; only the end of
        # `finish` waits for the weights.
        tensors = self._tensor_source(manifest, source, notes)
        took_prepared = False
        try:
            prepared = None
            if isinstance(source, BlockHostCopy):
                prepared = source.take_prepared()
                took_prepared = prepared is not None
            if prepared is None:
                prepared = prepare(manifest)
            loaded = finish(manifest, prepared, tensors, self._dev)
            synchronize(self._dev)
            seconds = time.perf_counter() - t0
        finally:
            tensors.close()
            if took_prepared and isinstance(source, BlockHostCopy):
                self._prepare_later(source)  # after the load: it would compete for the GIL
        tier = "ram" if source is not None else "disk"
        report = LoadReport(loader=DIRECT_LOADER_NAME, tier=tier, seconds=seconds, notes=notes)
        return loaded, report

    def _tensor_source(
        self, manifest: ModelManifest, source: HostCopy | None, notes: list[str]
    ) -> TensorSource:
        """Start getting `manifest`'s tensors onto the device: from a host copy when given,
        else from disk with the configured reader."""
        root = Path(manifest.path)
        if isinstance(source, SafetensorsHostCopy):
            return SafetensorsSource(root, source, notes, device=self._dev, cast=self._cast)
        if isinstance(source, BlockHostCopy):
            host = source.acquire()
            if host is not None:
                transfer = self._reader.copy_from_host(source.layout, host, cleanup=source.unuse)
                return BlockSource(source.layout, transfer, self._cast)
            notes.append("the host copy was released: read from disk")
        if self.reader == "pipelined":
            layout = plan_layout(root, list(manifest.weight_files))
            return BlockSource(layout, self._reader.read(layout), self._cast)
        return SafetensorsSource(root, None, notes, device=self._dev, cast=self._cast)

    # ----------------------------------------------------------------------------------
    def batch_cache_bytes(self, manifest: ModelManifest, limits: BatchLimits) -> int:
        """Device bytes a running text batch of this model reserves next to its weights
        under `limits` (`kv_cache`, from its config); 0 for an image pipeline."""
        if manifest.kind != ModelKind.TEXT:
            return 0
        return folder_batch_cache_bytes(Path(manifest.path), limits, self.dtype)

    def load_with_library(
        self, manifest: ModelManifest
    ) -> tuple[TextModel | ImagePipelineModel, LoadReport]:
        """Load with the libraries' own `from_pretrained`, then move to the device (see
        `library`). Always reads from disk."""
        return library.load_with_library(manifest, self._dev, self._cast)


def _try_prepare(manifest: ModelManifest) -> Prepared | None:
    """`prepare`, or None when it fails (the load then prepares and reports itself)."""
    try:
        return prepare(manifest)
    except Exception:
        return None
