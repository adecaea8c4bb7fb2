"""What the agent's core needs from the outside world, as protocols.

The core (levels, swap pool, admission) is pure Python: it never imports torch. The torch
adapters (`edge_agent.adapters.torch_models`) implement these protocols for real models;
the tests implement them with hand-written fakes to exercise the state machine quickly.
The loader's methods are *blocking* and may take seconds: the core calls them in worker
threads. The fetcher's (`ModelFetcher`) are coroutines: a fetch is network I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from edge_agent.core.batching import BatchLimits
from genedge.contract import ChatMessage, FetchProgress, ModelManifest


@dataclass(frozen=True)
class TextParams:
    """Resolved text generation parameters (defaults already applied, limits checked)."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None = None
    # True: `max_tokens` is a default, shortened to what the model's context leaves after
    # the prompt. False: the client asked for that many, so a prompt plus `max_tokens` over
    # the context is refused (422) rather than silently answered with fewer tokens.
    fit_to_context: bool = True
    # Generation ends at the first of these strings, which is not part of the text.
    stop: tuple[str, ...] = ()
    # OpenAI's penalties: logit -= presence * [count > 0] + frequency * count, counting the
    # tokens generated so far.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # None: no log-probabilities; k: each token's logprob and its k likeliest alternatives.
    logprobs: int | None = None


@dataclass(frozen=True)
class ImageParams:
    """Resolved image generation parameters."""

    width: int
    height: int
    steps: int
    guidance_scale: float
    n: int = 1
    negative_prompt: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, its log-probability and the `top` likeliest tokens
    at its position (text, logprob), likeliest first."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class TextResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    # Per token of `text` when `TextParams.logprobs` asked for them (else None).
    logprobs: list[TokenLogprob] | None = None


@dataclass
class LoadReport:
    """How a load went: which loader ran, from which tier, and how long it took."""

    loader: str  # "genedge" (weights assigned from safetensors) or "library" (from_pretrained)
    tier: str  # "disk" or "ram"
    seconds: float
    notes: list[str] = field(default_factory=list)


class TokenSink(Protocol):
    def __call__(self, delta: str) -> None: ...


class LoadedModel(Protocol):
    """A model whose weights are on the compute device, ready to generate."""

    model_id: str

    def memory_bytes(self) -> int:
        """Bytes of parameters and buffers this model holds on its device."""
        ...

    def generate_text(
        self,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        params: TextParams,
        on_token: TokenSink | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TextResult:
        """Generate from chat `messages` (chat template applied) or a raw `prompt`.

        `on_token` is called from the generating thread with each decoded text delta;
        `should_stop` is polled between tokens so a disconnected client stops the work.
        """
        ...

    def generate_image(
        self,
        prompt: str,
        params: ImageParams,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[bytes]:
        """Generate `params.n` images; returns PNG-encoded bytes.

        `should_stop` is polled after every denoising step; when it says so the generation
        ends there and raises `ClientDisconnected` (nobody wants a half-denoised image).
        """
        ...

    def close(self) -> None:
        """Drop every reference to device memory and return it to the device."""
        ...


class HostCopy(Protocol):
    """A model's checkpoint tensors held in host RAM (pinned when a GPU exists)."""

    model_id: str
    nbytes: int

    def release(self) -> None: ...


class ModelLoader(Protocol):
    """Moves weights between disk, host RAM and the device."""

    device: str

    def read_to_host(self, manifest: ModelManifest) -> HostCopy:
        """stored -> cached: read every weight file into host RAM."""
        ...

    def load(
        self, manifest: ModelManifest, source: HostCopy | None
    ) -> tuple[LoadedModel, LoadReport]:
        """stored/cached -> device: from `source` when given, else from disk."""
        ...

    def batch_cache_bytes(self, manifest: ModelManifest, limits: BatchLimits) -> int:
        """Device bytes the model's running batch reserves next to its weights under
        `limits` (a text model's KV cache; 0 when it does not batch). Reads only the
        model's config: quick enough to call on the event loop."""
        ...


FetchProgressSink = Callable[[FetchProgress], None]
"""Receives a fetch's progress (a fresh copy each time), on the event loop."""

MakeRoom = Callable[[int, str], Awaitable[int]]
"""`make_room(shortfall_bytes, model_id)`: delete evictable models (never `model_id`) until
`shortfall_bytes` are freed; returns the bytes freed (0, deleting nothing, when even every
evictable model would not be enough)."""


class ModelFetcher(Protocol):
    """Brings a model the host lacks from a model repository (`edge_agent.adapters.fetch`).

    Unlike the loader, its methods are coroutines (the transfer is network I/O); the
    adapter moves any blocking disk work (hashing, deleting) to threads itself.
    """

    source: str  # the repository's base URL, for statuses and host facts
    measured_Bps: float | None  # bytes/s of the last completed fetch

    async def describe(self, model_id: str) -> ModelManifest | None:
        """What the repository says of `model_id` (kind, format, architecture, total
        bytes; `path` empty), or None when it does not offer it. Raises `FetchFailed`
        when the repository cannot be asked."""
        ...

    async def fetch(
        self, model_id: str, progress: FetchProgressSink, make_room: MakeRoom
    ) -> ModelManifest:
        """Fetch, verify and move the model's folder into place; returns its manifest
        (origin `fetched`). Raises `FetchFailed` with the reason; partial files are kept
        (out of sight of the store scan) so the next call resumes."""
        ...

    def removable(self, manifest: ModelManifest) -> bool:
        """Whether disk eviction may delete this folder at all (never a snapshot of the
        user's Hugging Face cache, whatever the settings)."""
        ...

    async def remove(self, manifest: ModelManifest) -> None:
        """Delete a held model's folder (disk eviction)."""
        ...
