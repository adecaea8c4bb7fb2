"""Torch implementations of the agent's ports (`edge_agent.core.ports`): read checkpoints into
host RAM, load them onto the compute device, generate text and images, and free the memory.

Two loaders:

- **genedge** (the default): for every torch module of the model (the transformers model, or
  each module component of a diffusers pipeline) build the skeleton from its config with
  parameters on the `meta` device and buffers real (so non-persistent buffers such as rotary
  `inv_freq` are computed as usual), then *assign* the checkpoint tensors, already on the
  device, as the parameters (`assign_tensors`, what `load_state_dict(..., assign=True)`
  does in one linear pass): no random initialisation, no second copy. Tied weights are
  re-tied, and the result is verified: no parameter or buffer left on `meta`, no checkpoint
  tensor left unused. Where the tensors come from is the *reader* (`reader=`):
  - `pipelined` (the default, `edge_agent.adapters.fastload`): every weight file of the model
    read with large parallel reads into *one* device block (through reusable pinned staging
    buffers on CUDA), started before the skeletons are built so the two overlap; the
    tensors are views of the block, assigned while the copies may still run. The `cached`
    level is a `BlockHostCopy`: the same block in (pinned) host RAM, so loading from it is
    one host-to-device copy; it also keeps the model's skeletons, tokenizers and schedulers
    prepared for the next load (rebuilt in the background after each), so that load is
    little more than the copy.
  - `safetensors`: the previous path, kept as a fallback: `safetensors.load_file` per file
    into host memory, then one device copy per tensor; its `cached` level is a
    `SafetensorsHostCopy`.
- **library**: the libraries' own `from_pretrained`, then `.to(device)`. The profiler uses
  it as a yardstick, and `load` falls back to it (saying why in `LoadReport.notes`) when the
  genedge path cannot handle a folder (an unknown component class, `.bin` weights, checkpoint
  keys that need the library's renaming...). Corrupt or missing weight files never fall back:
  they raise `CorruptWeights` / `BadModelFolder` naming the file.

Load times count only finished work: on CUDA the device is synchronised before the clock
stops. Generation runs under `torch.inference_mode()`; sampling uses a per-request
`torch.Generator`, so a seed reproduces its output even while other requests run in other
threads, and no lock is shared between models.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import importlib
import inspect
import io
import json
import re
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_agent.adapters.fastload import (
    BlockLayout,
    HostBuffer,
    HostMemory,
    PipelinedReader,
    Transfer,
    UnsupportedByGenedge,
    plan_layout,
)
from edge_agent.core.ports import (
    HostCopy,
    ImageParams,
    LoadReport,
    TextParams,
    TextResult,
    TokenSink,
)
from edge_agent.errors import (
    BadModelFolder,
    ClientDisconnected,
    CorruptWeights,
    InvalidRequest,
    ModelUnavailable,
    WrongModelKind,
)
from genedge.contract import ChatMessage, ModelFormat, ModelManifest

__all__ = [
    "READERS",
    "BlockHostCopy",
    "ImagePipelineModel",
    "SafetensorsHostCopy",
    "TextModel",
    "TorchModelLoader",
    "UnsupportedByGenedge",
    "assign_tensors",
    "dtype_name",
    "param_count",
]

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}

# safetensors header dtype codes of the floating types (for the library loader's dtype).
_ST_FLOAT = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}

# accelerate's `init_empty_weights` patches `nn.Module.register_parameter` process-wide, and
# diffusers' own loader uses it too: overlapping uses in two threads could leave the patch in
# place. Every skeleton build and every library load holds this lock (skeletons take
# milliseconds; library loads are only for profiling and fallback).
_INIT_LOCK = threading.RLock()

# How the genedge loader reads weight files (see the module docstring).
READERS = ("pipelined", "safetensors")


# --------------------------------------------------------------------------------------
# Reading safetensors
# --------------------------------------------------------------------------------------


def _read_safetensors(root: Path, rel: str) -> dict[str, torch.Tensor]:
    """Every tensor of `root/rel` in (owned, not memory-mapped) CPU memory.

    A missing file raises BadModelFolder; a truncated or garbled one CorruptWeights, both
    naming `rel`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = root / rel
    if not path.is_file():
        raise BadModelFolder(f"weight file {rel} is missing")
    try:
        try:
            # `pread` reads the bytes into process memory now; the default `mmap` backend
            # would leave them to page faults during the first generation.
            return load_file(path, device="cpu", backend="pread")
        except TypeError:  # safetensors < 0.8 has no `backend`: copy out of the mapping
            return {k: v.clone() for k, v in load_file(path, device="cpu").items()}
    except SafetensorError as exc:
        raise CorruptWeights(f"{rel}: unreadable safetensors file ({exc})") from None
    except FileNotFoundError:
        raise BadModelFolder(f"weight file {rel} is missing") from None
    except OSError as exc:
        raise CorruptWeights(f"{rel}: cannot be read ({exc})") from None


def _check_safetensors(root: Path, rel: str) -> None:
    """Validate one weight file's header and size without reading its tensors (the same
    checks a load makes first): BadModelFolder when missing, CorruptWeights when broken."""
    from safetensors import SafetensorError, safe_open

    path = root / rel
    if not path.is_file():
        raise BadModelFolder(f"weight file {rel} is missing")
    if not rel.endswith(".safetensors"):
        return
    try:
        with safe_open(path, framework="pt"):
            pass
    except SafetensorError as exc:
        raise CorruptWeights(f"{rel}: unreadable safetensors file ({exc})") from None
    except OSError as exc:
        raise CorruptWeights(f"{rel}: cannot be read ({exc})") from None


def _header_float_dtype(path: Path) -> torch.dtype | None:
    """The dtype of the first floating tensor in a safetensors header (no tensor read)."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    for key, info in header.items():
        if key != "__metadata__" and isinstance(info, dict):
            dt = _ST_FLOAT.get(str(info.get("dtype")))
            if dt is not None:
                return dt
    return None


def _variant(weight_files: Iterable[str]) -> str | None:
    """The common weight variant (`fp16` in `model.fp16.safetensors`), if every file has it."""
    variants = set()
    for rel in weight_files:
        name = Path(rel).name.removesuffix(".safetensors")
        name = re.sub(r"-\d+-of-\d+$", "", name)
        variants.add(name.split(".", 1)[1] if "." in name else None)
    return variants.pop() if len(variants) == 1 else None


def _by_component(weight_files: Iterable[str]) -> dict[str, list[str]]:
    """Weight files grouped by their first folder ('' for files at the model root)."""
    out: dict[str, list[str]] = {}
    for rel in weight_files:
        head, _, _ = rel.rpartition("/")
        out.setdefault(head.split("/")[0] if head else "", []).append(rel)
    return out


# --------------------------------------------------------------------------------------
# Host copies (the `cached` level)
# --------------------------------------------------------------------------------------


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
        self._prepared: _Prepared | None = None
        self._preparing: Future[None] | None = None

    def ready(self, timeout: float | None = None) -> bool:
        """Wait for a preparation in progress; True when the next load finds one ready."""
        fut = self._preparing
        if fut is not None:
            with contextlib.suppress(Exception):
                fut.result(timeout)
        return self._prepared is not None

    def take_prepared(self) -> _Prepared | None:
        """The prepared model for one load (waiting for one being built), or None."""
        self.ready()
        with self._lock:
            prepared, self._prepared = self._prepared, None
            return prepared

    def offer_prepared(self, prepared: _Prepared | None) -> None:
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


# --------------------------------------------------------------------------------------
# Helpers on modules
# --------------------------------------------------------------------------------------


def _tensors_of(modules: Iterable[nn.Module]) -> Iterator[torch.Tensor]:
    for m in modules:
        yield from m.parameters()
        yield from (b for b in m.buffers() if b is not None)


def _unique_storage_bytes(modules: Iterable[nn.Module]) -> int:
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in _tensors_of(modules):
        if t.is_meta:
            continue
        st = t.untyped_storage()
        key = (str(t.device), st.data_ptr())
        if key not in seen:
            seen.add(key)
            total += st.nbytes()
    return total


def _unique_params(modules: Iterable[nn.Module]) -> Iterator[nn.Parameter]:
    seen: set[int] = set()
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                yield p


def assign_tensors(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str] | None:
    """What `module.load_state_dict(state, strict=False, assign=True)` does, in one pass over
    `state`: parameters become `nn.Parameter`s of the given tensors (keeping `requires_grad`),
    persistent buffers are replaced, shapes must match. Returns the keys nothing took.

    `load_state_dict` walks every module and filters the whole state dict for each (quadratic:
    a third of a pipeline's load from pinned memory); this is linear. Returns None, doing
    nothing, when any module customises loading (its own `_load_from_state_dict`, load
    hooks, extra state): the caller then uses `load_state_dict`, which honours them.
    """
    base_load = nn.Module._load_from_state_dict
    base_extra = nn.Module.set_extra_state
    modules = dict(module.named_modules(remove_duplicate=False))
    for m in modules.values():
        cls = type(m)
        if (
            cls._load_from_state_dict is not base_load
            or cls.set_extra_state is not base_extra
            or m._load_state_dict_pre_hooks
            or m._load_state_dict_post_hooks
        ):
            return None
    # Check every shape before changing anything, as load_state_dict does.
    plan: list[tuple[nn.Module, str, torch.Tensor, bool]] = []
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, t in state.items():
        prefix, _, name = key.rpartition(".")
        m = modules.get(prefix)
        old: torch.Tensor | None = None
        is_param = False
        if m is not None and m._parameters.get(name) is not None:
            old, is_param = m._parameters[name], True
        elif m is not None and name not in m._non_persistent_buffers_set:
            old = m._buffers.get(name)
        if m is None or old is None:
            unexpected.append(key)
        elif old.shape != t.shape:
            mismatched.append(f"{key}: checkpoint {tuple(t.shape)}, model {tuple(old.shape)}")
        else:
            plan.append((m, name, t, is_param))
    if mismatched:
        raise RuntimeError(f"size mismatch: {'; '.join(mismatched[:5])}")
    for m, name, t, is_param in plan:
        if is_param:
            old_param = m._parameters[name]
            assert old_param is not None
            m._parameters[name] = nn.Parameter(t, requires_grad=old_param.requires_grad)
        else:
            m._buffers[name] = t
    return unexpected


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _normalise_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# Loaded models
# --------------------------------------------------------------------------------------


class _Loaded:
    """What text and image models share: memory accounting and closing."""

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
            self._memory = _unique_storage_bytes(modules)
        return self._memory

    def _drop(self) -> None:  # overridden: set every reference to None
        pass

    def close(self) -> None:
        """Drop every reference to modules and tensors and give the memory back (idempotent)."""
        modules = self.torch_modules()
        watch = [weakref.ref(m) for m in modules] + [weakref.ref(t) for t in _tensors_of(modules)]
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


class _DeltaStreamer:
    """Decodes generated tokens incrementally and reports each new piece of text.

    Uses a sliding window (as text-generation-inference does): the text of the tokens after
    `prefix` minus the text of those before `read`, so tokenizers whose pieces depend on their
    neighbours (leading spaces) decode right; a piece ending in an incomplete UTF-8 character
    is held back until the character is complete. The concatenation of the deltas is the
    result text by construction.
    """

    def __init__(self, tokenizer: Any, on_token: TokenSink | None) -> None:
        self.tokenizer = tokenizer
        self.on_token = on_token
        self.tokens: list[int] = []
        self.pieces: list[str] = []
        self._prefix = 0
        self._read = 0
        self._prompt_seen = False

    def _decode(self, ids: list[int]) -> str:
        return str(
            self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )

    def _emit(self, final: bool) -> None:
        before = self._decode(self.tokens[self._prefix : self._read])
        after = self._decode(self.tokens[self._prefix :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            delta = after[len(before) :]
            self._prefix, self._read = self._read, len(self.tokens)
            self.pieces.append(delta)
            if self.on_token is not None:
                self.on_token(delta)

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt
            self._prompt_seen = True
            return
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist())
        self._emit(final=False)

    def end(self) -> None:
        if self._read < len(self.tokens):
            self._emit(final=True)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@functools.cache
def _streamer_class() -> type:
    """`_DeltaStreamer` as a transformers `BaseStreamer` (transformers imported lazily)."""
    from transformers.generation.streamers import BaseStreamer

    return type("DeltaStreamer", (_DeltaStreamer, BaseStreamer), {})


@functools.cache
def _poll_stop_class() -> type:
    from transformers import StoppingCriteria

    class PollStop(StoppingCriteria):
        """Stops generation when `should_stop()` says so (polled after every token)."""

        def __init__(self, should_stop: Callable[[], bool]) -> None:
            self.should_stop = should_stop

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            stop = bool(self.should_stop())
            return torch.full(
                (input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device
            )

    return PollStop


@functools.cache
def _seeded_sampler_class() -> type:
    from transformers import LogitsProcessor, TopPLogitsWarper

    class SeededSampler(LogitsProcessor):
        """Samples the next token itself with a per-request `generator` and leaves only that
        token possible, so `generate(do_sample=False)` picks it. This keeps sampling off
        torch's global RNG: a seed reproduces its text even while other threads generate."""

        def __init__(self, temperature: float, top_p: float, generator: torch.Generator):
            self.temperature = temperature
            self.top = TopPLogitsWarper(top_p) if top_p < 1.0 else None
            self.generator = generator

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            logits = scores.float() / self.temperature
            if self.top is not None:
                logits = self.top(input_ids, logits)
            probs = torch.softmax(logits, dim=-1)
            chosen = torch.multinomial(probs, 1, generator=self.generator)
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(1, chosen, 0.0)

    return SeededSampler


class TextModel(_Loaded):
    """A transformers causal LM and its tokenizer on the device."""

    kind = "text"

    def __init__(self, model_id: str, model: nn.Module, tokenizer: Any, device: torch.device):
        super().__init__(model_id, device)
        self.model: Any = model
        self.tokenizer: Any = tokenizer

    def torch_modules(self) -> list[nn.Module]:
        return [self.model] if self.model is not None else []

    def _drop(self) -> None:
        self.model = None
        self.tokenizer = None

    # ----------------------------------------------------------------------------------
    def _prompt_text(
        self, tokenizer: Any, messages: list[ChatMessage] | None, prompt: str | None
    ) -> tuple[str, bool]:
        """The text to tokenise and whether the tokenizer should add its special tokens."""
        if messages is not None:
            conv = [{"role": m.role, "content": m.content} for m in messages]
            if getattr(tokenizer, "chat_template", None):
                text = tokenizer.apply_chat_template(
                    conv, tokenize=False, add_generation_prompt=True
                )
                return str(text), False  # the template writes its own BOS
            lines = "".join(f"{m['role']}: {m['content']}\n" for m in conv)
            return lines + "assistant:", True
        if prompt is None:
            raise InvalidRequest("either messages or prompt is required")
        return prompt, True

    def context_length(self) -> int | None:
        """Tokens the model can attend to (prompt plus output), when its config says."""
        model = self.model
        return None if model is None else self._context_length(model)

    def prompt_tokens(self, messages: list[ChatMessage] | None, prompt: str | None) -> int:
        """How many tokens `generate_text` would feed the model for this prompt."""
        tok = self.tokenizer
        if tok is None:
            raise ModelUnavailable(f"model {self.model_id} has been closed", model=self.model_id)
        text, special = self._prompt_text(tok, messages, prompt)
        return max(1, len(tok(text, add_special_tokens=special)["input_ids"]))

    def _context_length(self, model: Any) -> int | None:
        cfg = model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            v = getattr(cfg, name, None)
            if isinstance(v, int) and v > 0:
                return v
        return None

    def generate_text(
        self,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        params: TextParams,
        on_token: TokenSink | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TextResult:
        """Generate from chat `messages` (chat template applied, or a plain `role: content`
        transcript when the tokenizer has none) or from a raw `prompt`.

        Greedy when `temperature == 0`, else sampled (temperature, top-p) with a generator
        seeded by `params.seed`. Each decoded text delta goes to `on_token`; `should_stop` is
        polled after every token. finish_reason is "length" when `max_tokens` (or the
        model's context) ran out, else "stop".
        """
        model, tok = self.model, self.tokenizer
        if model is None or tok is None:
            raise ModelUnavailable(f"model {self.model_id} has been closed", model=self.model_id)
        text, special = self._prompt_text(tok, messages, prompt)
        enc = tok(text, return_tensors="pt", add_special_tokens=special)
        input_ids = enc["input_ids"]
        gen_cfg = copy.deepcopy(model.generation_config)
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else tok.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos_ids), 0)
        if input_ids.shape[1] == 0:  # an empty prompt: start from BOS (or EOS, as GPT-2 does)
            start = tok.bos_token_id if tok.bos_token_id is not None else next(iter(eos_ids), 0)
            input_ids = torch.tensor([[start]])
        n_prompt = int(input_ids.shape[1])
        max_new = params.max_tokens
        ctx = self._context_length(model)
        if ctx is not None:
            if n_prompt >= ctx:
                raise InvalidRequest(
                    f"the prompt is {n_prompt} tokens; {self.model_id} has a context of {ctx}",
                    field="messages" if messages is not None else "prompt",
                    model=self.model_id,
                )
            if n_prompt + max_new > ctx and not params.fit_to_context:
                raise InvalidRequest(
                    f"the prompt is {n_prompt} tokens and max_tokens is {max_new}: "
                    f"{n_prompt + max_new} tokens, above the context of {ctx} of "
                    f"{self.model_id}; ask for at most {ctx - n_prompt} tokens",
                    field="max_tokens",
                    model=self.model_id,
                )
            max_new = min(max_new, ctx - n_prompt)
        gen_cfg.max_new_tokens = max_new
        gen_cfg.max_length = None
        gen_cfg.min_new_tokens = None
        gen_cfg.min_length = 0
        gen_cfg.do_sample = False
        gen_cfg.num_beams = 1
        gen_cfg.num_return_sequences = 1
        gen_cfg.temperature = None
        gen_cfg.top_p = None
        gen_cfg.top_k = None
        gen_cfg.pad_token_id = pad
        processors = []
        if params.temperature > 0:
            generator = torch.Generator(device=self.device)
            if params.seed is not None:
                generator.manual_seed(params.seed)
            else:
                generator.seed()
            processors.append(_seeded_sampler_class()(params.temperature, params.top_p, generator))
        streamer = _streamer_class()(tok, on_token)
        criteria = [_poll_stop_class()(should_stop)] if should_stop is not None else []
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=torch.ones_like(input_ids).to(self.device),
                generation_config=gen_cfg,
                logits_processor=processors,
                stopping_criteria=criteria,
                streamer=streamer,
            )
        new = out[0, n_prompt:].tolist()
        n_new = len(new)
        hit_eos = bool(new) and new[-1] in eos_ids
        finish = "length" if n_new >= max_new and not hit_eos else "stop"
        return TextResult(
            text=streamer.text,
            prompt_tokens=n_prompt,
            completion_tokens=n_new,
            finish_reason=finish,
        )

    def generate_image(
        self,
        prompt: str,
        params: ImageParams,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[bytes]:
        raise WrongModelKind(
            f"{self.model_id} is a text model; it cannot generate images", model=self.model_id
        )


class ImagePipelineModel(_Loaded):
    """A diffusers pipeline on the device."""

    kind = "image"

    def __init__(self, model_id: str, pipeline: Any, device: torch.device):
        super().__init__(model_id, device)
        self.pipeline: Any = pipeline
        # A pipeline's scheduler keeps per-call state (its timesteps): one call at a time per
        # pipeline. Other models are never blocked by this lock.
        self._lock = threading.Lock()
        with contextlib.suppress(AttributeError):
            pipeline.set_progress_bar_config(disable=True)

    def torch_modules(self) -> list[nn.Module]:
        pipe = self.pipeline
        if pipe is None:
            return []
        return [c for c in pipe.components.values() if isinstance(c, nn.Module)]

    def _drop(self) -> None:
        pipe = self.pipeline
        self.pipeline = None
        if pipe is not None:
            # The pipeline may still be referenced by a caller: unhook its modules too.
            for name, comp in list(pipe.components.items()):
                if isinstance(comp, nn.Module):
                    with contextlib.suppress(Exception):
                        setattr(pipe, name, None)

    def generate_text(
        self,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        params: TextParams,
        on_token: TokenSink | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TextResult:
        raise WrongModelKind(
            f"{self.model_id} is an image model; it cannot generate text", model=self.model_id
        )

    def generate_image(
        self,
        prompt: str,
        params: ImageParams,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[bytes]:
        """Generate `params.n` images of `params.width` x `params.height`; PNG bytes.

        `should_stop` is polled after every denoising step (diffusers' `callback_on_step_end`)
        and before each pipeline call; once it says so, `ClientDisconnected` is raised from
        the step callback. Raising, rather than setting the pipeline's `_interrupt`, also
        skips the VAE decode that diffusers still runs after an interrupt (on CPU a large
        image's decode alone takes longer than a step). Pipelines without that callback
        stop only between images.
        """
        pipe = self.pipeline
        if pipe is None:
            raise ModelUnavailable(f"model {self.model_id} has been closed", model=self.model_id)
        factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
        if params.width % factor or params.height % factor:
            raise InvalidRequest(
                f"width and height must be multiples of {factor} for {self.model_id}",
                field="size",
                model=self.model_id,
            )
        accepted = inspect.signature(pipe.__call__).parameters
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "width": params.width,
            "height": params.height,
            "num_inference_steps": params.steps,
            "guidance_scale": params.guidance_scale,
            "output_type": "pil",
        }
        if "num_images_per_prompt" in accepted:
            kwargs["num_images_per_prompt"] = params.n
        if params.negative_prompt is not None and "negative_prompt" in accepted:
            kwargs["negative_prompt"] = params.negative_prompt
        if params.seed is not None:
            kwargs["generator"] = torch.Generator(device=self.device).manual_seed(params.seed)
        if should_stop is not None and "callback_on_step_end" in accepted:
            kwargs["callback_on_step_end"] = _stop_on_step_end(should_stop, self.model_id)
        calls = 1 if "num_images_per_prompt" in accepted else params.n
        images: list[Any] = []
        with self._lock, torch.inference_mode():
            for _ in range(calls):
                if should_stop is not None and should_stop():
                    raise _stopped(self.model_id)
                images.extend(pipe(**kwargs).images)
        return [_png(im) for im in images]


def _stopped(model_id: str) -> ClientDisconnected:
    return ClientDisconnected("the client went away: generation stopped", model=model_id)


def _stop_on_step_end(should_stop: Callable[[], bool], model_id: str) -> Callable[..., Any]:
    """A diffusers `callback_on_step_end` that ends the denoising loop once `should_stop()`."""

    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
        if should_stop():
            raise _stopped(model_id)
        return tensors

    return on_step_end


def param_count(loaded: Any) -> int:
    """Number of parameters of a loaded model (a tied weight counts once)."""
    if not isinstance(loaded, _Loaded):
        return 0
    return sum(p.numel() for p in _unique_params(loaded.torch_modules()))


def dtype_name(loaded: Any) -> str:
    """The dtype holding most of a loaded model's parameters, e.g. `float16`."""
    if not isinstance(loaded, _Loaded):
        return "unknown"
    counts: dict[torch.dtype, int] = {}
    for p in _unique_params(loaded.torch_modules()):
        counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    if not counts:
        return "unknown"
    return str(max(counts, key=lambda d: counts[d])).removeprefix("torch.")


# --------------------------------------------------------------------------------------
# What a load builds without weights
# --------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """Everything of one model that needs no weights: the torch modules with parameters on
    `meta` (`to_assign`: name, module, its weight files), tokenizers, schedulers, configs.
    Built during a load while the transfer runs, or ahead of time for a cached copy (then
    a load from host RAM is little more than the copy). Used by one load only."""

    kind: str  # "text" | "image"
    to_assign: list[tuple[str, nn.Module, list[str]]] = field(default_factory=list)
    parts: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # pipeline config values
    pipe_cls: Any = None


# --------------------------------------------------------------------------------------
# Where a load's checkpoint tensors come from
# --------------------------------------------------------------------------------------


class _TensorSource:
    """The checkpoint tensors of one load, by weight file, on the device in the target
    dtype. Created when the load starts (a pipelined source starts its transfer at once, so
    it overlaps with building the skeletons); `finish` waits for the data."""

    def state(self, rels: list[str]) -> dict[str, torch.Tensor]:  # overridden
        """The tensors of weight files `rels`; their data may still be arriving until
        `finish()` (views of a block being filled)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Wait until every tensor handed out holds its data (raises the transfer's error)."""

    def close(self) -> None:
        """Stop whatever is still running and drop references (idempotent)."""


class _BlockSource(_TensorSource):
    """Views of one device block filled by a `Transfer` (the pipelined reader)."""

    def __init__(self, layout: BlockLayout, transfer: Transfer, cast: torch.dtype | None):
        self.layout = layout
        self._transfer: Transfer | None = transfer
        self._block: torch.Tensor | None = None
        # A cast makes new tensors: then every tensor is copied out of the block, so the
        # block is freed when the load ends instead of being kept alive by a few views.
        self._convert = cast is not None and any(
            t.dtype.is_floating_point and t.dtype != cast for f in layout.files for t in f.tensors
        )
        self._cast = cast

    def _wait(self) -> torch.Tensor:
        if self._block is None:
            if self._transfer is None:
                raise RuntimeError("tensor source already closed")
            self._block = self._transfer.wait()
            self._transfer = None
        return self._block

    def state(self, rels: list[str]) -> dict[str, torch.Tensor]:
        # Views can be made (and assigned) before the data is there; a cast reads the data.
        block = self._wait() if self._convert else self._pending_block()
        out: dict[str, torch.Tensor] = {}
        for rel in rels:
            for key, t in self.layout.views(block, rel).items():
                if key in out:
                    raise CorruptWeights(f"{rel}: tensor {key!r} is also in another shard")
                out[key] = t
        if self._convert:
            cast = self._cast
            out = {
                k: t.to(cast) if t.is_floating_point() and t.dtype != cast else t.clone()
                for k, t in out.items()
            }
        return out

    def _pending_block(self) -> torch.Tensor:
        if self._block is not None:
            return self._block
        if self._transfer is None or self._transfer.block is None:
            raise RuntimeError("tensor source already closed")
        return self._transfer.block

    def finish(self) -> None:
        self._wait()

    def close(self) -> None:
        transfer, self._transfer = self._transfer, None
        if transfer is not None:
            transfer.cancel()
        self._block = None


class _SafetensorsSource(_TensorSource):
    """Tensors read per file with `safetensors` (or from a `SafetensorsHostCopy`), each
    copied to the device on its own: the previous reader, kept as a fallback."""

    def __init__(
        self,
        loader: TorchModelLoader,
        root: Path,
        held: SafetensorsHostCopy | None,
        notes: list[str],
    ):
        self._loader = loader
        self._root = root
        self._held = held
        self._notes = notes

    def state(self, rels: list[str]) -> dict[str, torch.Tensor]:
        return self._loader._state_dict(self._root, rels, self._held, self._notes)


# --------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------


def quiet_library_progress() -> None:
    """Turn off the libraries' tqdm bars: a server's log is for events, not progress bars
    (the agent reports progress in each model's status)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    tlog.disable_progress_bar()
    dlog.disable_progress_bar()


class TorchModelLoader:
    """Moves weights between disk, host RAM and `device` (implements `ModelLoader`).

    `reader` picks how the genedge loader reads weight files (`pipelined` or `safetensors`,
    see the module docstring); `reader_threads` and `chunk_bytes` tune the pipelined one.
    `pin_memory` (default: when CUDA is available) page-locks the `cached` level's copies;
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
        self._dev = _normalise_device(device)
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
        return "safetensors reader: load_file per weight file, one device copy per tensor"

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
                self._background = ThreadPoolExecutor(1, thread_name_prefix="genedge-prepare")
            background = self._background

        def work() -> None:
            if not copy.released:
                copy.offer_prepared(self._try_prepare(copy.manifest))

        copy._preparing = background.submit(work)

    def _try_prepare(self, manifest: ModelManifest) -> _Prepared | None:
        """`_prepare`, or None when it fails (the load then prepares and reports itself)."""
        try:
            return self._prepare(manifest)
        except Exception:
            return None

    # ----------------------------------------------------------------------------------
    # stored -> cached
    def read_to_host(self, manifest: ModelManifest) -> BlockHostCopy | SafetensorsHostCopy:
        """Read every weight file of `manifest` into host RAM (pinned when configured): one
        block laid out as on the device with the pipelined reader, tensors per file with
        the safetensors one (also used for what the pipelined reader does not handle)."""
        root = Path(manifest.path)
        if self.reader == "pipelined":
            try:
                layout = plan_layout(root, list(manifest.weight_files))
            except UnsupportedByGenedge:
                layout = None  # the safetensors reader below, or its error
            if layout is not None:
                buffer = self._reader.read_to_host(layout, pinned=self.pin_memory)
                copy = BlockHostCopy(manifest.id, layout, buffer, manifest)
                if self.prepare_cached:
                    _import_classes(manifest)
                    copy.offer_prepared(self._try_prepare(manifest))
                return copy
        files: dict[str, dict[str, torch.Tensor]] = {}
        for rel in manifest.weight_files:
            tensors = _read_safetensors(root, rel)
            if self.pin_memory:
                tensors = {k: v.pin_memory() for k, v in tensors.items()}
            files[rel] = tensors
        return SafetensorsHostCopy(manifest.id, files, self.pin_memory)

    # ----------------------------------------------------------------------------------
    # stored/cached -> device
    def load(
        self, manifest: ModelManifest, source: HostCopy | None
    ) -> tuple[TextModel | ImagePipelineModel, LoadReport]:
        """Load `manifest` onto the device with the genedge loader, from `source` (tier
        `ram`) or from disk (tier `disk`); falls back to `load_with_library` when the genedge
        path cannot handle the folder. Corrupt or missing weights raise."""
        if source is not None and getattr(source, "model_id", manifest.id) != manifest.id:
            raise ValueError(f"host copy of {source.model_id} given to load {manifest.id}")
        reason: str | None = None
        try:
            return self.load_genedge(manifest, source)
        except (CorruptWeights, BadModelFolder, torch.cuda.OutOfMemoryError):
            raise
        except Exception as exc:  # anything else: the library may know better
            reason = f"genedge loader failed ({type(exc).__name__}: {exc}); used from_pretrained"
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

    def load_genedge(
        self, manifest: ModelManifest, source: HostCopy | None
    ) -> tuple[TextModel | ImagePipelineModel, LoadReport]:
        """The genedge path alone (no fallback): raises `UnsupportedByGenedge` (or the
        library's own error) for folders it cannot handle."""
        if source is not None and getattr(source, "model_id", manifest.id) != manifest.id:
            raise ValueError(f"host copy of {source.model_id} given to load {manifest.id}")
        if source is not None and not isinstance(source, BlockHostCopy | SafetensorsHostCopy):
            raise UnsupportedByGenedge(f"unknown host copy type {type(source).__name__}")
        notes: list[str] = []
        _import_classes(manifest)
        t0 = time.perf_counter()
        # The transfer starts first, so everything below overlaps with it; only the end of
        # `_finish` waits for the weights.
        tensors = self._tensor_source(manifest, source, notes)
        took_prepared = False
        try:
            prepared = None
            if isinstance(source, BlockHostCopy):
                prepared = source.take_prepared()
                took_prepared = prepared is not None
            if prepared is None:
                prepared = self._prepare(manifest)
            loaded = self._finish(manifest, prepared, tensors)
            _synchronize(self._dev)
            seconds = time.perf_counter() - t0
        finally:
            tensors.close()
            if took_prepared and isinstance(source, BlockHostCopy):
                self._prepare_later(source)  # after the load: it would compete for the GIL
        tier = "ram" if source is not None else "disk"
        return loaded, LoadReport(loader="genedge", tier=tier, seconds=seconds, notes=notes)

    def _tensor_source(
        self, manifest: ModelManifest, source: HostCopy | None, notes: list[str]
    ) -> _TensorSource:
        """Start getting `manifest`'s tensors onto the device: from a host copy when given,
        else from disk with the configured reader."""
        root = Path(manifest.path)
        rels = list(manifest.weight_files)
        if isinstance(source, SafetensorsHostCopy):
            return _SafetensorsSource(self, root, source, notes)
        if isinstance(source, BlockHostCopy):
            host = source.acquire()
            if host is not None:
                transfer = self._reader.copy_from_host(source.layout, host, cleanup=source.unuse)
                return _BlockSource(source.layout, transfer, self._cast)
            notes.append("the host copy was released: read from disk")
        if self.reader == "pipelined":
            layout = plan_layout(root, rels)
            return _BlockSource(layout, self._reader.read(layout), self._cast)
        return _SafetensorsSource(self, root, None, notes)

    # ----------------------------------------------------------------------------------
    def _state_dict(
        self,
        root: Path,
        rels: list[str],
        source: SafetensorsHostCopy | None,
        notes: list[str],
    ) -> dict[str, torch.Tensor]:
        """The checkpoint tensors of `rels`, on the device and in the target dtype."""
        for rel in rels:
            if not rel.endswith(".safetensors"):
                raise UnsupportedByGenedge(f"{rel} is not a safetensors file")
        out: dict[str, torch.Tensor] = {}
        for rel in rels:
            held = source.tensors(rel) if source is not None else None
            from_host = held is not None
            if held is None:
                if source is not None:
                    notes.append(f"{rel} was not in the host copy: read from disk")
                held = _read_safetensors(root, rel)
            for key, t in held.items():
                if key in out:
                    raise CorruptWeights(f"{rel}: tensor {key!r} is also in another shard")
                out[key] = self._to_device(t, from_host=from_host)
        return out

    def _to_device(self, t: torch.Tensor, *, from_host: bool) -> torch.Tensor:
        dtype = self._cast if self._cast is not None and t.is_floating_point() else t.dtype
        if self._dev.type == "cpu":
            # On a CPU device the host copy already is device memory: the model shares its
            # tensors (inference never writes weights). Reference counting keeps them alive
            # while the model uses them, whatever happens to the host copy.
            return t.to(dtype=dtype)
        return t.to(self._dev, dtype=dtype, non_blocking=t.is_pinned())

    def _assign(self, module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
        """Assign `state` as `module`'s parameters, re-tie, move buffers, and verify."""
        keys = assign_tensors(module, state)
        if keys is None:  # some module customises loading: let torch run its hooks
            keys = list(module.load_state_dict(state, strict=False, assign=True).unexpected_keys)
        unexpected = self._really_unexpected(module, keys)
        if unexpected:
            more = f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
            raise UnsupportedByGenedge(
                f"{what}: checkpoint tensors the model does not use: {unexpected[:5]}{more}"
            )
        tie = getattr(module, "tie_weights", None)
        if callable(tie):
            tie()
        # One walk over the modules (each walk of a pipeline's UNet costs milliseconds):
        # computed buffers to the device, and nothing may be left on meta.
        on_meta: list[str] = []
        for prefix, sub in module.named_modules(remove_duplicate=False):
            dot = f"{prefix}." if prefix else ""
            for name, buf in list(sub._buffers.items()):
                if buf is None:
                    continue
                if buf.is_meta:
                    on_meta.append(dot + name)
                elif buf.device != self._dev:
                    sub._buffers[name] = buf.to(self._dev)
            on_meta += [dot + n for n, p in sub._parameters.items() if p is not None and p.is_meta]
        if on_meta:
            raise UnsupportedByGenedge(
                f"{what}: not in the checkpoint (left on meta): {on_meta[:5]}"
            )
        module.eval()

    @staticmethod
    def _really_unexpected(module: nn.Module, keys: list[str]) -> list[str]:
        """Unexpected keys minus the ones the libraries ignore too: non-persistent buffers
        saved by older versions (CLIP's `position_ids`) and the class's ignore patterns."""
        if not keys:
            return []
        buffers = {n for n, _ in module.named_buffers()}
        patterns = list(getattr(module, "_keys_to_ignore_on_load_unexpected", None) or [])
        return [k for k in keys if k not in buffers and not any(re.search(p, k) for p in patterns)]

    def _skeleton(self, build: Callable[[], nn.Module]) -> nn.Module:
        from accelerate import init_empty_weights
        from transformers.initialization import no_init_weights

        # Parameters on meta, buffers real; and no random init of parameters about to be
        # replaced (on meta tensors it still costs ~0.4 s of Python for a 135M model).
        with _INIT_LOCK, init_empty_weights(include_buffers=False), no_init_weights():
            return build()

    # ----------------------------------------------------------------------------------
    def _prepare(self, manifest: ModelManifest) -> _Prepared:
        """Everything of `manifest` that needs no weights (skeletons, tokenizers, ...)."""
        if manifest.format == ModelFormat.DIFFUSERS:
            return self._prepare_pipeline(manifest)
        return self._prepare_causal_lm(manifest)

    def _prepare_causal_lm(self, manifest: ModelManifest) -> _Prepared:
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        root = Path(manifest.path)
        rels = list(manifest.weight_files)
        if not rels:
            raise BadModelFolder(f"{manifest.id}: no weight files")
        config = AutoConfig.from_pretrained(root)
        # The class the config names (as the library does), else whatever the Auto class maps.
        cls = getattr(transformers, manifest.architecture, None)
        build: Any = getattr(cls, "_from_config", None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module) and callable(build)):
            build = AutoModelForCausalLM.from_config
        model: Any = self._skeleton(lambda: build(config))
        generation_config = None
        if (root / "generation_config.json").is_file():
            generation_config = GenerationConfig.from_pretrained(root)
        tokenizer = AutoTokenizer.from_pretrained(root)
        return _Prepared(
            kind="text",
            to_assign=[(manifest.id, model, rels)],
            parts={"model": model, "tokenizer": tokenizer, "generation_config": generation_config},
        )

    def _prepare_pipeline(self, manifest: ModelManifest) -> _Prepared:
        root = Path(manifest.path)
        try:
            index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BadModelFolder(f"model_index.json: {exc}") from None
        pipe_cls = _resolve_class("diffusers", str(index.get("_class_name")))
        weights = _by_component(manifest.weight_files)
        prepared = _Prepared(kind="image", pipe_cls=pipe_cls)
        for name, spec in index.items():
            if name.startswith("_"):
                continue
            if not (isinstance(spec, list) and len(spec) == 2):
                prepared.config[name] = spec  # a pipeline config value (requires_safety_...)
                continue
            lib, cls_name = spec
            if lib is None or cls_name is None:
                prepared.parts[name] = None
                continue
            cls = _resolve_class(str(lib), str(cls_name))
            sub = root / name
            if name in weights:
                module = self._component_skeleton(cls, sub)
                prepared.to_assign.append((name, module, weights[name]))
                prepared.parts[name] = module
            else:  # tokenizers, schedulers...
                loader = getattr(cls, "from_pretrained", None)
                if loader is None:
                    raise UnsupportedByGenedge(f"component {name}: {cls_name} has no loader")
                prepared.parts[name] = loader(sub)
        accepted = inspect.signature(pipe_cls).parameters
        unknown = [n for n in prepared.parts if n not in accepted]
        if unknown:
            raise UnsupportedByGenedge(f"{pipe_cls.__name__} takes no component {unknown}")
        return prepared

    def _finish(
        self, manifest: ModelManifest, prepared: _Prepared, tensors: _TensorSource
    ) -> TextModel | ImagePipelineModel:
        """Assign the weights to the prepared skeletons and wrap the result. On CUDA the
        views are assigned while the copies may still run (kernels launched later queue
        behind them); `tensors.finish()` waits for the data before returning."""
        for name, module, rels in prepared.to_assign:
            self._assign(module, tensors.state(rels), name)
        tensors.finish()
        parts = prepared.parts
        if prepared.kind == "text":
            model = parts["model"]
            floating = {p.dtype for p in model.parameters() if p.is_floating_point()}
            if len(floating) == 1:
                model.config.dtype = floating.pop()
            if parts["generation_config"] is not None:
                model.generation_config = parts["generation_config"]
            return TextModel(manifest.id, model, parts["tokenizer"], self._dev)
        pipe_cls = prepared.pipe_cls
        accepted = inspect.signature(pipe_cls).parameters
        kwargs: dict[str, Any] = {}
        for pname, p in accepted.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if pname in parts:
                kwargs[pname] = parts[pname]
            elif pname in prepared.config:
                kwargs[pname] = prepared.config[pname]
            elif p.default is inspect.Parameter.empty:
                kwargs[pname] = None  # an optional component the folder leaves out
        if "requires_safety_checker" in accepted:
            kwargs["requires_safety_checker"] = False
        pipe = pipe_cls(**kwargs)
        return ImagePipelineModel(manifest.id, pipe, self._dev)

    def _component_skeleton(self, cls: type, sub: Path) -> nn.Module:
        """The module of pipeline component folder `sub`, parameters on `meta`."""
        if not issubclass(cls, nn.Module):
            raise UnsupportedByGenedge(f"{sub.name}: {cls.__name__} is not a torch module")
        if hasattr(cls, "load_config") and hasattr(cls, "from_config"):  # diffusers
            cfg = cls.load_config(sub)
            module = self._skeleton(lambda: cls.from_config(cfg))
        elif hasattr(cls, "_from_config") and hasattr(cls, "config_class"):  # transformers
            tcfg = cls.config_class.from_pretrained(sub)
            module = self._skeleton(lambda: cls._from_config(tcfg))
        else:
            raise UnsupportedByGenedge(f"{sub.name}: do not know how to build {cls.__name__}")
        return module

    # ----------------------------------------------------------------------------------
    # The library's own loader
    def load_with_library(
        self, manifest: ModelManifest
    ) -> tuple[TextModel | ImagePipelineModel, LoadReport]:
        """Load with `DiffusionPipeline.from_pretrained` / `AutoModelForCausalLM.from_pretrained`
        (+ `AutoTokenizer`), then move to the device. Always reads from disk."""
        from safetensors import SafetensorError

        root = Path(manifest.path)
        for rel in manifest.weight_files:
            _check_safetensors(root, rel)
        notes: list[str] = []
        _import_classes(manifest)
        try:
            return self._library_load(manifest, notes)
        except SafetensorError as exc:  # a file changed under us since the check above
            raise CorruptWeights(f"{manifest.id}: unreadable safetensors file ({exc})") from None

    def _library_load(
        self, manifest: ModelManifest, notes: list[str]
    ) -> tuple[TextModel | ImagePipelineModel, LoadReport]:
        root = Path(manifest.path)
        variant = _variant(manifest.weight_files)
        t0 = time.perf_counter()
        loaded: TextModel | ImagePipelineModel
        if manifest.format == ModelFormat.DIFFUSERS:
            from diffusers import DiffusionPipeline

            dtype: Any = self._cast
            if dtype is None:  # keep each component's stored dtype, as the genedge path does
                dtype = {"default": torch.float32}
                for name, rels in _by_component(manifest.weight_files).items():
                    stored = _header_float_dtype(root / rels[0])
                    if stored is not None:
                        dtype[name] = stored
            with _INIT_LOCK:
                pipe = DiffusionPipeline.from_pretrained(root, dtype=dtype, variant=variant)
            pipe.to(self._dev)
            loaded = ImagePipelineModel(manifest.id, pipe, self._dev)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model: Any
            with _INIT_LOCK:
                model = AutoModelForCausalLM.from_pretrained(
                    root, dtype=self._cast if self._cast is not None else "auto", variant=variant
                )
            model.to(self._dev)
            model.eval()
            tokenizer = AutoTokenizer.from_pretrained(root)
            loaded = TextModel(manifest.id, model, tokenizer, self._dev)
        _synchronize(self._dev)
        seconds = time.perf_counter() - t0
        return loaded, LoadReport(loader="library", tier="disk", seconds=seconds, notes=notes)


def _resolve_class(library: str, name: str) -> type:
    """The class a `model_index.json` entry names: `["diffusers", "UNet2DConditionModel"]`,
    `["transformers", "CLIPTextModel"]`, or a diffusers pipeline module such as
    `["stable_diffusion", "StableDiffusionSafetyChecker"]`."""
    candidates = [library]
    if library not in ("diffusers", "transformers"):
        candidates = [f"diffusers.pipelines.{library}", "diffusers", "transformers"]
    for mod_name in candidates:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        cls = getattr(mod, name, None)
        if isinstance(cls, type):
            return cls
    raise UnsupportedByGenedge(f"unknown component class {library}.{name}")


def _import_classes(manifest: ModelManifest) -> None:
    """Import the libraries and the classes a model names before a load's clock starts, so
    a load time never includes importing diffusers or transformers (seconds, once)."""
    import accelerate  # noqa: F401

    with contextlib.suppress(Exception):
        if manifest.format == ModelFormat.DIFFUSERS:
            import diffusers

            index = json.loads((Path(manifest.path) / "model_index.json").read_text("utf-8"))
            getattr(diffusers, str(index.get("_class_name")), None)
            getattr(diffusers, "DiffusionPipeline", None)
            for name, spec in index.items():
                named = isinstance(spec, list) and len(spec) == 2 and None not in spec
                if named and not name.startswith("_"):
                    with contextlib.suppress(UnsupportedByGenedge):
                        _resolve_class(str(spec[0]), str(spec[1]))
        else:
            import transformers

            getattr(transformers, manifest.architecture, None)
            getattr(transformers, "AutoModelForCausalLM", None)
            getattr(transformers, "AutoTokenizer", None)
