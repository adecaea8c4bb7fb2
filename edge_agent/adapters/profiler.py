"""The profiler: measures one model on this host's hardware (DESIGN.md, edge agent).

For each model it records bytes on disk; memory held after load and peak memory during one
default generation (CUDA allocator on a GPU, process RSS on CPU); preload seconds *cold*
(page cache of the model's files dropped with fsync + posix_fadvise(DONTNEED)), *warm* (files
in the page cache) and *from host RAM* (the cached tier), for both the library's own loader
and ours (`ModelProfile.loaders`; the library has no host-RAM tier, so its `ram_s` stays
unset); the time of one default generation; and the time to free the device memory. The
notes say how our loader read the weights (the pipelined reader, or why it fell back) and
how long filling the cached tier took.

On the warm-loaded model it also measures throughput at several batch sizes (text 1, 4, 16:
tokens/s, time to first token, request seconds; images 1, 2, 4: images/s), within a time
bound (`edge_agent.adapters.throughput`): the orchestrator plans a batching host's capacity
with these rather than with the batch-1 time.

Every timed load ends with the weights on the device and the device synchronised (the
loaders do this), so lazy safetensors mappings are never mistaken for finished work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, overload

from edge_agent.adapters import pagecache, store
from edge_agent.adapters.device import MemoryMeter, is_cuda, synchronize
from edge_agent.adapters.host import Nvml
from edge_agent.adapters.throughput import (
    DEFAULT_BOUNDS,
    ThroughputBounds,
    measure_images,
    measure_text,
)
from edge_agent.adapters.torch_models import (
    ImagePipelineModel,
    TextModel,
    TorchModelLoader,
    dtype_name,
    param_count,
)
from edge_agent.core.ports import ImageParams, LoadedModel, LoadReport, TextParams
from edge_agent.errors import BadModelFolder
from genedge.contract import (
    BatchPoint,
    ChatMessage,
    ImageDefaults,
    LoaderTiming,
    ModelKind,
    ModelManifest,
    ModelProfile,
)

log = logging.getLogger("edge_agent.profiler")

Progress = Callable[[str, float], None]
# One load the profile times: a loader's `load` or `load_with_library` for one model.
Load = Callable[[], tuple[LoadedModel, LoadReport]]
T = TypeVar("T")

# A fixed English prompt so text generation times compare across hosts and models.
_PROMPT = (
    "Edge servers near users can serve image and text generation with far less delay than "
    "the cloud, but they have little disk and GPU memory, so deciding which models to keep "
    "loaded is a careful trade-off between storage, memory and switching delay."
)
_PROMPT_WORDS = _PROMPT.split()
_IMAGE_PROMPT = "a lighthouse on a cliff at sunset"


def _pinned(copy: object) -> bool:
    """Whether a host copy is page-locked (host copies say so in `pinned`)."""
    return bool(getattr(copy, "pinned", False))


PROBE_WORDS = 96  # words of the standard text probe


def profile_prompt(words: int = PROBE_WORDS) -> str:
    reps = words // len(_PROMPT_WORDS) + 1
    return " ".join((_PROMPT_WORDS * reps)[:words])


@dataclass(frozen=True)
class TextProbe:
    """The text generation a profile times: `words` of the fixed prompt (as a chat message
    or a plain prompt) and `tokens` new tokens; `notes` say what was shortened."""

    prompt: str
    chat: bool
    words: int
    tokens: int
    notes: list[str] = field(default_factory=list)

    def inputs(self) -> tuple[list[ChatMessage] | None, str | None]:
        """(messages, prompt) for `generate_text`."""
        if self.chat:
            return [ChatMessage(role="user", content=self.prompt)], None
        return None, self.prompt


def _longest_fitting(model: TextModel, chat: bool, budget: int) -> int | None:
    """The most words of the probe prompt (up to PROBE_WORDS) whose tokens fit `budget`,
    by bisection; None when not even one word fits."""

    def fits(words: int) -> bool:
        probe = TextProbe(profile_prompt(words), chat, words, 0)
        return model.prompt_tokens(*probe.inputs()) <= budget

    if not fits(1):
        return None
    lo, hi = 1, PROBE_WORDS
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


@dataclass(frozen=True)
class _Measured:
    """What the cold-loaded model is measured for, besides its load time."""

    resident: int  # bytes held after the load
    peak: int  # bytes at the peak of one default generation
    rss_delta: int | None  # process RSS growth over the load (CPU)
    nvml_delta: int | None  # NVML's used-memory growth over the load (GPU)
    params: int
    dtype: str
    generation_s: float
    what: str  # what the generation ran (`generation_what`)


class Profiler:
    def __init__(
        self,
        loader: TorchModelLoader,
        *,
        fingerprint: str,
        description: str,
        versions: dict[str, str],
        text_tokens: int = 16,
        nvml: Nvml | None = None,
        throughput: ThroughputBounds | None = DEFAULT_BOUNDS,
    ) -> None:
        """`throughput`: how far batches are measured; None measures batch 1 only
        (`EDGE_PROFILE_THROUGHPUT=false`)."""
        self.loader = loader
        self.device = loader.device
        self.fingerprint = fingerprint
        self.description = description
        self.versions = versions
        self.text_tokens = text_tokens
        self.nvml = nvml
        self.throughput = throughput

    # -------------------------------------------------------------------------------
    def text_probe(self, model: LoadedModel) -> TextProbe:
        """The probe prompt and output length, fitted to the model's context.

        The output is capped at half the context, and the prompt shortened (fewest words
        dropped) until prompt plus output fit: any valid causal LM can be profiled, also
        one with a context shorter than the standard probe (a 64-position GPT-2). A model
        whose chat template alone overruns the context is probed with a plain prompt. The
        notes say what was shortened, so profiles of different models stay comparable.
        """
        words, tokens = PROBE_WORDS, self.text_tokens
        if not isinstance(model, TextModel):
            return TextProbe(profile_prompt(words), True, words, tokens)
        ctx = model.context_length()
        if ctx is None:
            return TextProbe(profile_prompt(words), True, words, tokens)
        notes: list[str] = []
        if tokens > max(1, ctx // 2):
            tokens = max(1, ctx // 2)
            notes.append(
                f"probe output capped at {tokens} new tokens (asked {self.text_tokens}) "
                f"by the {ctx}-token context"
            )
        for chat in (True, False):
            fitted = _longest_fitting(model, chat, ctx - tokens)
            if fitted is None:
                continue
            if not chat:
                notes.append("the chat template alone overruns the context: plain prompt")
            if fitted < words:
                notes.append(
                    f"probe prompt shortened from {words} words to {fitted} to fit the "
                    f"{ctx}-token context with {tokens} new tokens"
                )
            return TextProbe(profile_prompt(fitted), chat, fitted, tokens, notes)
        # Not even one word and the output fit: shrink the output to what one word leaves.
        left = ctx - model.prompt_tokens(None, profile_prompt(1))
        if left < 1:
            raise BadModelFolder(f"{model.model_id}: a {ctx}-token context holds no prompt")
        notes.append(f"probe cut to 1 word and {left} new tokens by the {ctx}-token context")
        return TextProbe(profile_prompt(1), False, 1, left, notes)

    def _generate(
        self,
        model: LoadedModel,
        manifest: ModelManifest,
        warmup: bool,
        probe: TextProbe | None = None,
    ) -> str:
        if manifest.kind == ModelKind.TEXT:
            probe = probe or self.text_probe(model)
            tokens = 1 if warmup else probe.tokens
            text_params = TextParams(max_tokens=tokens, temperature=0.0, top_p=1.0, seed=0)
            messages, prompt = probe.inputs()
            res = model.generate_text(messages, prompt, text_params)
            # The tokens really generated (greedy may meet EOS first): what cost estimates
            # scale by (edge_agent.core.limits reads "N new tokens").
            made = res.completion_tokens or tokens
            kind = "chat prompt" if probe.chat else "plain prompt"
            return f"~{probe.words}-word {kind}, {made} new tokens, greedy, batch 1"
        d = manifest.image_defaults or ImageDefaults()
        steps = 1 if warmup else d.steps
        params = ImageParams(
            width=d.width, height=d.height, steps=steps, guidance_scale=d.guidance_scale, seed=0
        )
        model.generate_image(_IMAGE_PROMPT, params)
        cfg = " with CFG" if d.guidance_scale > 1 else ""
        return f"{d.width}x{d.height}, {steps} steps{cfg}, 1 image"

    def _timed_close(self, model: LoadedModel) -> float:
        t0 = time.perf_counter()
        model.close()
        synchronize(self.device)
        return time.perf_counter() - t0

    @overload
    def _timed_load(self, load: Load) -> tuple[LoadReport, None, float]: ...

    @overload
    def _timed_load(
        self, load: Load, use: Callable[[LoadedModel], T]
    ) -> tuple[LoadReport, T, float]: ...

    def _timed_load(
        self, load: Load, use: Callable[[LoadedModel], T] | None = None
    ) -> tuple[LoadReport, T | None, float]:
        """Every load the profile times: `load()` (the loader times it and reports the
        seconds, weights on the device and the device synchronised), then `use` on the
        model (the cold load's measurements), then a timed close. Returns the load's report,
        what `use` returned, and the seconds the close took. The model is closed even when
        `use` fails, so a failed profile leaves no weights on the device."""
        model, report = load()
        try:
            used = use(model) if use is not None else None
        finally:
            evict_s = self._timed_close(model)
        return report, used, evict_s

    def _warm_up(self, model: LoadedModel, manifest: ModelManifest) -> TextProbe | None:
        """One short generation, paying the process's one-time costs; the text probe."""
        probe = self.text_probe(model) if manifest.kind == ModelKind.TEXT else None
        self._generate(model, manifest, warmup=True, probe=probe)
        return probe

    def _measure(
        self,
        model: LoadedModel,
        manifest: ModelManifest,
        probe: TextProbe | None,
        memory: tuple[MemoryMeter, int, int | None],
        step: Progress,
    ) -> _Measured:
        """The cold-loaded model's memory (from `memory`: the meter, its reading and NVML's
        before the load), size and dtype, and one timed default generation's time and peak
        memory."""
        meter, base, nvml_before = memory
        rss_delta = None
        if meter.cuda:
            resident = max(0, meter.now() - base)
        else:
            rss_delta = meter.now() - base
            resident = model.memory_bytes()
        nvml_after = self._nvml_used()
        params = param_count(model)
        dtype = dtype_name(model)
        step("one default generation", 0.3)
        self._generate(model, manifest, warmup=True, probe=probe)
        meter.start_peak()
        gen_base = meter.now()
        t0 = time.perf_counter()
        what = self._generate(model, manifest, warmup=False, probe=probe)
        synchronize(self.device)
        generation_s = time.perf_counter() - t0
        if meter.cuda:
            peak = max(0, meter.stop_peak() - base)
        else:
            peak = resident + max(0, meter.stop_peak() - gen_base)
        nvml_delta = None
        if nvml_before is not None and nvml_after is not None:
            nvml_delta = nvml_after - nvml_before
        return _Measured(resident, peak, rss_delta, nvml_delta, params, dtype, generation_s, what)

    def _load_from_host(self, manifest: ModelManifest, notes: list[str]) -> float:
        """Fill the cached tier with `manifest` (a note says how long that took), then time
        a load from it; the copy is released afterwards."""
        t0 = time.perf_counter()
        copy = self.loader.read_to_host(manifest)
        fill_s = time.perf_counter() - t0
        notes.append(
            f"filling the cached tier (warm files into {'pinned ' if _pinned(copy) else ''}"
            f"host RAM) took {fill_s:.3f} s"
        )
        try:
            report, _, _ = self._timed_load(lambda: self.loader.load(manifest, copy))
            return report.seconds
        finally:
            # A cached copy prepares its next load in the background: let that finish, so
            # it does not compete with the library loader's timings below.
            ready = getattr(copy, "ready", None)
            if callable(ready):
                ready()
            copy.release()

    def profile(self, manifest: ModelManifest, progress: Progress | None = None) -> ModelProfile:
        """Measure `manifest` on this host. Blocking; takes a few loads' worth of time."""

        def step(what: str, frac: float) -> None:
            log.info("profiling %s: %s", manifest.id, what)
            if progress:
                progress(what, frac)

        files = store.folder_files(Path(manifest.path))
        meter = MemoryMeter(self.device)
        notes: list[str] = []
        ours = LoaderTiming()
        lib = LoaderTiming()

        def load_ours() -> tuple[LoadedModel, LoadReport]:
            return self.loader.load(manifest, None)

        # 0. Warm-up: a first load and generation in this process pays one-time costs
        # (lazy imports, allocator pools, thread pools) that are not the model's.
        step("warm-up load and generation", 0.02)
        _, probe, _ = self._timed_load(load_ours, lambda m: self._warm_up(m, manifest))
        if probe is not None:
            notes.extend(probe.notes)

        # 1. Ours, cold: also the memory and generation measurements.
        step("cold load (page cache dropped)", 0.05)
        dropped = pagecache.drop_page_cache(files)
        if not dropped:
            notes.append("the OS refused to drop the page cache: 'cold' loads may be warm")
        nvml_before = self._nvml_used()
        memory = (meter, meter.now(), nvml_before)
        report, measured, evict_s = self._timed_load(
            load_ours, lambda m: self._measure(m, manifest, probe, memory, step)
        )
        ours.cold_s = report.seconds
        notes.extend(report.notes)
        loader_name = report.loader
        if loader_name != "library":
            notes.append(f"{loader_name} loader: {self.loader.describe()}")

        # 2. Ours, warm (files now in the page cache); then the throughput on that model.
        step("warm load, then throughput at several batch sizes", 0.5)
        pagecache.read_files(files)
        report, batches, _ = self._timed_load(
            load_ours, lambda m: self._measure_throughput(m, manifest, probe, measured)
        )
        ours.warm_s = report.seconds
        throughput, batch_notes = batches
        notes.extend(batch_notes)

        # 3. Ours, from the host-RAM tier.
        step("load from host RAM", 0.65)
        ours.ram_s = self._load_from_host(manifest, notes)

        # 4. The library's own loader, cold and warm, for comparison.
        if loader_name != "library":

            def load_lib() -> tuple[LoadedModel, LoadReport]:
                return self.loader.load_with_library(manifest)

            step("library loader, cold", 0.8)
            pagecache.drop_page_cache(files)
            lib.cold_s = self._timed_load(load_lib)[0].seconds
            step("library loader, warm", 0.9)
            lib.warm_s = self._timed_load(load_lib)[0].seconds
        step("done", 1.0)

        loaders = {loader_name: ours, **({"library": lib} if loader_name != "library" else {})}
        return self._assemble(
            manifest,
            measured,
            ours=ours,
            loaders=loaders,
            dropped=dropped,
            evict_s=evict_s,
            notes=notes,
            throughput=throughput,
        )

    def _measure_throughput(
        self,
        model: LoadedModel,
        manifest: ModelManifest,
        probe: TextProbe | None,
        measured: _Measured,
    ) -> tuple[list[BatchPoint], list[str]]:
        """The throughput points and their notes (none when turned off)."""
        bounds = self.throughput
        if bounds is None:
            return [], []
        base_s = measured.generation_s
        if isinstance(model, TextModel) and probe is not None:
            return measure_text(model, probe.inputs(), probe.tokens, base_s, bounds)
        if isinstance(model, ImagePipelineModel):
            d = manifest.image_defaults or ImageDefaults()
            params = ImageParams(
                width=d.width, height=d.height, steps=d.steps, guidance_scale=d.guidance_scale
            )
            return measure_images(model, _IMAGE_PROMPT, params, base_s, bounds, self.device)
        return [], []

    def _assemble(
        self,
        manifest: ModelManifest,
        measured: _Measured,
        *,
        ours: LoaderTiming,
        loaders: dict[str, LoaderTiming],
        dropped: bool,
        evict_s: float,
        notes: list[str],
        throughput: list[BatchPoint],
    ) -> ModelProfile:
        """The profile from the measurements (`ours`: the loader the agent uses, also in
        `loaders`)."""
        assert ours.cold_s is not None and ours.warm_s is not None and ours.ram_s is not None
        return ModelProfile(
            model_id=manifest.id,
            kind=manifest.kind,
            architecture=manifest.architecture,
            host_fingerprint=self.fingerprint,
            host_description=self.description,
            file_digest=manifest.file_digest,
            device=self.device,
            dtype=measured.dtype,
            params=measured.params,
            storage_bytes=manifest.storage_bytes,
            resident_bytes=measured.resident,
            peak_bytes=measured.peak,
            memory_method="cuda_allocated" if is_cuda(self.device) else "tensor_bytes+rss_growth",
            rss_delta_bytes=measured.rss_delta,
            nvml_used_delta_bytes=measured.nvml_delta,
            load_cold_s=ours.cold_s,
            load_warm_s=ours.warm_s,
            load_ram_s=ours.ram_s,
            cold_cache_dropped=dropped,
            loaders=loaders,
            generation_s=measured.generation_s,
            generation_what=measured.what,
            evict_s=evict_s,
            throughput=throughput,
            versions=self.versions,
            notes=notes,
        )

    def _nvml_used(self) -> int | None:
        if self.nvml is None or not self.device.startswith("cuda"):
            return None
        index = int(self.device.split(":")[1]) if ":" in self.device else 0
        gpu = self.nvml.gpu(index)
        return gpu.used_bytes if gpu is not None else None
