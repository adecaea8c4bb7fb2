"""The shared contract: pydantic schemas used by every server route *and* every httpx client.

Nothing here imports FastAPI, torch or any service package, so the orchestrator, the gateway,
the edge agent and the tests all speak exactly these shapes. Generation endpoints follow the
OpenAI API closely enough that OpenAI clients work; everything else is versioned under /v1.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

# --------------------------------------------------------------------------------------
# Bounds every message obeys (issue 11: a bad input is a 422 naming the field, never a 500)
# --------------------------------------------------------------------------------------

MAX_SEED = 2**63 - 1  # torch generators take a signed 64-bit seed
MAX_ID_CHARS = 256
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"
ModelId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
"""A model id: what a store folder, `genedge.json` or a Hugging Face repo id (`org/name`) may be."""
MAX_MODELS_PER_MESSAGE = 10_000
MAX_COUNT_PER_BATCH = 1_000_000  # requests of one model in one arrivals batch or heartbeat
Count = Annotated[int, Field(ge=0, le=MAX_COUNT_PER_BATCH)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
NonNegInt = Annotated[int, Field(ge=0)]


class Contract(BaseModel):
    """Base of every schema: floats are finite (no NaN or Infinity from JSON or Python)."""

    model_config = ConfigDict(allow_inf_nan=False)


_D = TypeVar("_D", bound=dict[str, Any])


def _bounded_keys(v: _D) -> _D:
    if len(v) > MAX_MODELS_PER_MESSAGE:
        raise ValueError(f"at most {MAX_MODELS_PER_MESSAGE} models per message")
    return v


# --------------------------------------------------------------------------------------
# Errors: one JSON shape for every service, `{"error": {"type", "message", ...}}`.
# --------------------------------------------------------------------------------------


class ErrorBody(Contract):
    type: str = Field(description="Machine-readable error class, e.g. `invalid_request`.")
    message: str = Field(description="What went wrong, for a human.")
    field: str | None = Field(default=None, description="The request field at fault, if any.")
    model: str | None = Field(default=None, description="The model concerned, if any.")
    retry_after_s: float | None = None
    details: list[dict[str, Any]] | None = None


class ErrorResponse(Contract):
    error: ErrorBody


# --------------------------------------------------------------------------------------
# Models, levels and profiles
# --------------------------------------------------------------------------------------


class ModelKind(StrEnum):
    TEXT = "text"
    IMAGE = "image"


class ModelFormat(StrEnum):
    TRANSFORMERS = "transformers"
    DIFFUSERS = "diffusers"


class Level(StrEnum):
    """Where a model's weights live on a host (DESIGN.md, "Model levels").

    `pooled` is not a target: it is what a stored or cached model is while it occupies the
    host's single shared swap pool of GPU memory.
    """

    ABSENT = "absent"
    STORED = "stored"
    CACHED = "cached"
    POOLED = "pooled"
    RESIDENT = "resident"


TARGET_LEVELS = (Level.STORED, Level.CACHED, Level.RESIDENT)
TargetLevel = Literal["stored", "cached", "resident"]
_K = TypeVar("_K")


def level_rank(level: str) -> int:
    """A target level's place in `stored < cached < resident`; -1 for any other level."""
    return TARGET_LEVELS.index(Level(level)) if level in TARGET_LEVELS else -1


def merge_pins(*sources: Mapping[_K, TargetLevel]) -> dict[_K, TargetLevel]:
    """Pins from several sources, each key at the highest level any source gives it."""
    merged: dict[_K, TargetLevel] = {}
    for pins in sources:
        for key, level in pins.items():
            if key not in merged or level_rank(level) > level_rank(merged[key]):
                merged[key] = level
    return merged


class Priority(StrEnum):
    """A model's priority class (issue 15): the agent's swap-pool scheduler serves a higher
    class first (within its starvation bound) and the decision weighs a higher class's
    delay and cloud cost more when capacity binds."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class ModelOrigin(StrEnum):
    """Who put a model's files on the host: `user` (a store root the operator fills; never
    deleted by the agent unless a setting says so) or `fetched` (the agent fetched it from
    a model repository; its disk space may be reclaimed)."""

    USER = "user"
    FETCHED = "fetched"


class FetchProgress(Contract):
    """A fetch of a model's files from a model repository, under way or last finished."""

    source: str = Field(description="Base URL of the repository fetched from.")
    bytes_total: NonNegInt
    bytes_done: NonNegInt = 0
    resumed_bytes: NonNegInt = Field(
        default=0, description="Bytes kept from an earlier interrupted attempt."
    )
    rate_Bps: float = Field(default=0.0, ge=0, description="Recent transfer rate, bytes/s.")
    eta_s: float | None = Field(default=None, ge=0)
    started_at: float
    finished_at: float | None = None


class ModelState(StrEnum):
    READY = "ready"  # at its level, nothing moving
    LOADING = "loading"  # moving up (disk or RAM -> device, disk -> RAM)
    DRAINING = "draining"  # waiting for in-flight requests before going down
    EVICTING = "evicting"  # freeing memory
    FAILED = "failed"  # last transition failed; `failed_reason` says why
    FETCHING = "fetching"  # level `absent`: its files are coming from a model repository


class TextDefaults(Contract):
    max_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0


class ImageDefaults(Contract):
    width: int = 512
    height: int = 512
    steps: int = 20
    guidance_scale: float = 7.5


class ModelManifest(Contract):
    """What the agent knows about a model folder before loading it.

    Read from `genedge.json` in the folder when present, otherwise inferred from the
    Hugging Face layout (`model_index.json` -> diffusers pipeline, `config.json` with a
    `*ForCausalLM` architecture -> transformers text model).
    """

    id: str
    kind: ModelKind
    format: ModelFormat
    path: str
    architecture: str = Field(description="Pipeline class or model architecture name.")
    text_defaults: TextDefaults | None = None
    image_defaults: ImageDefaults | None = None
    weight_files: list[str] = Field(default_factory=list, description="Relative paths.")
    storage_bytes: NonNegInt = 0
    file_digest: str = ""
    origin: ModelOrigin = ModelOrigin.USER


class BadModelFolder(Contract):
    path: str
    reason: str


class LoaderTiming(Contract):
    """Preload seconds of one loader from each tier (None: not measured)."""

    cold_s: float | None = None
    warm_s: float | None = None
    ram_s: float | None = None


class BatchPoint(Contract):
    """`batch` requests of one model run at once on one host (a profile's throughput)."""

    batch: int = Field(ge=1)
    request_s: float = Field(description="Seconds from submission to a request's end (median).")
    tokens_per_s: float | None = Field(default=None, description="Text: all requests' tokens.")
    ttft_s: float | None = Field(default=None, description="Text: time to first token (median).")
    images_per_s: float | None = None


class ModelProfile(Contract):
    """A model measured on one host kind. Times count only finished work (weights on the
    device, device synchronised)."""

    model_config = ConfigDict(protected_namespaces=())

    schema_version: int = 1
    model_id: str
    kind: ModelKind
    architecture: str
    host_fingerprint: str
    host_description: str = ""
    file_digest: str
    device: str
    dtype: str
    params: int
    storage_bytes: int
    resident_bytes: int = Field(description="Memory held after load (CUDA allocated or RSS).")
    peak_bytes: int = Field(description="Peak memory during one default generation.")
    memory_method: Literal["cuda_allocated", "tensor_bytes+rss_growth"] = Field(
        description="`cuda_allocated`: allocator bytes after load / peak during generation. "
        "`tensor_bytes+rss_growth` (CPU): bytes of the model's tensors; peak adds the process "
        "RSS growth during generation (a freed-and-reused heap makes a plain RSS delta "
        "meaningless for a reload)."
    )
    rss_delta_bytes: int | None = Field(
        default=None, description="Raw process RSS growth over the load (CPU), for reference."
    )
    nvml_used_delta_bytes: int | None = None
    load_cold_s: float = Field(description="Preload from disk with the page cache dropped.")
    load_warm_s: float = Field(description="Preload from disk with the files in page cache.")
    load_ram_s: float = Field(description="Preload from the host-RAM (cached) tier.")
    cold_cache_dropped: bool = Field(
        default=True, description="False where the OS refused to drop the page cache."
    )
    loaders: dict[str, LoaderTiming] = Field(
        default_factory=dict, description="Per loader (`library`, `genedge`) timings."
    )
    generation_s: float
    generation_what: str
    evict_s: float | None = None
    throughput: list[BatchPoint] = Field(
        default_factory=list,
        description="Requests run together (text at 1, 4, 16; images at 1, 2, 4); empty "
        "when not measured (then batch 1 is `generation_s`).",
    )
    measured_at: float = Field(default_factory=time.time)
    versions: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


class ProfileStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    CACHED = "cached"  # reused from the profiles directory, unchanged files
    FAILED = "failed"
    SKIPPED = "skipped"


class ModelStatus(Contract):
    id: ModelId
    kind: ModelKind
    format: ModelFormat
    architecture: str
    level: Level
    state: ModelState
    target_level: Level
    progress: float = Field(ge=0.0, le=1.0, description="Of the transition under way.")
    progress_detail: str = ""
    failed_reason: str | None = None
    in_flight: NonNegInt = 0
    queued: NonNegInt = 0
    memory_bytes: int = Field(0, ge=0, description="Device memory this model holds now.")
    batch_cache_bytes: int = Field(
        0,
        ge=0,
        description="Device memory its running batch's KV cache takes next to its weights "
        "once loaded (in `memory_bytes` while loaded); the placement counts it.",
    )
    host_ram_bytes: int = Field(0, ge=0, description="Host RAM this model's cached copy holds now.")
    storage_bytes: NonNegInt = 0
    pool_hits: NonNegInt = 0
    pool_misses: NonNegInt = 0
    pool_wait_s: float = Field(
        0.0, ge=0, description="Seconds this model's requests waited for the swap pool, in all."
    )
    pool_max_wait_s: float = Field(0.0, ge=0, description="The longest of those waits.")
    requests_total: NonNegInt = 0
    last_used: float | None = None
    profile_status: ProfileStatus = ProfileStatus.PENDING
    profile_progress: float = Field(0.0, ge=0.0, le=1.0, description="Of a profile under way.")
    profile_detail: str = ""
    profile: ModelProfile | None = None
    origin: ModelOrigin = ModelOrigin.USER
    placed: bool = Field(
        default=False,
        description="The last level command set a level here (not `absent`); an agent "
        "restart clears it until the orchestrator commands the model again.",
    )
    evictable: bool = Field(
        default=False,
        description="The agent may delete this model's files to make room for a fetch "
        "(fetched by the agent, or a setting allows it; not pinned, not in use).",
    )
    pinned_level: TargetLevel | None = Field(
        default=None, description="The operator's minimum level here; never evicted below."
    )
    priority: Priority = Priority.NORMAL
    fetch: FetchProgress | None = None


class ModelStatusList(Contract):
    object: Literal["list"] = "list"
    data: list[ModelStatus]
    bad_folders: list[BadModelFolder] = Field(default_factory=list)


class SetLevelRequest(Contract):
    model_config = ConfigDict(extra="forbid")

    level: Literal["absent", "stored", "cached", "resident"] = Field(
        description="`absent`: the decision no longer places the model here: it goes down to "
        "`stored` and its files may be reclaimed when a fetch needs the disk space (a fetch "
        "under way is cancelled, its partial files kept for a later resume)."
    )
    wait: bool = Field(
        default=False, description="Answer only when the transition has finished (or failed)."
    )


class HostFacts(Contract):
    host_id: str = Field(min_length=1, max_length=128)
    role: Literal["edge", "cloud"] = "edge"
    hostname: str
    fingerprint: str
    description: str
    device: str = Field(description="`cuda:0` or `cpu`.")
    gpu_name: str | None = None
    gpu_total_bytes: NonNegInt | None = None
    gpu_free_bytes: NonNegInt | None = None
    gpu_used_bytes: NonNegInt | None = None
    nvml: bool = False
    device_budget_bytes: int = Field(ge=0, description="Memory the agent may use on its device.")
    device_used_bytes: int = Field(ge=0, description="Resident models plus the swap pool.")
    pool_model: str | None = None
    pool_bytes: NonNegInt = 0
    ram_total_bytes: NonNegInt
    ram_available_bytes: NonNegInt
    cache_budget_bytes: int = Field(ge=0, description="Host RAM the cached level may use.")
    cache_used_bytes: NonNegInt
    disk_total_bytes: NonNegInt
    disk_free_bytes: NonNegInt
    disk_read_GBps: float | None = Field(default=None, ge=0)
    h2d_GBps: float | None = Field(default=None, ge=0, description="Host->device copy bandwidth.")
    bandwidth_measured: bool = False
    versions: dict[str, str] = Field(default_factory=dict)
    repository_url: str | None = Field(
        default=None,
        description="The model repository this agent fetches absent models from; None: it "
        "cannot fetch, so models it lacks are not placed on it.",
    )
    fetch_Bps: float | None = Field(
        default=None, ge=0, description="Measured fetch bandwidth from the repository, bytes/s."
    )


class RepositoryFile(Contract):
    """One file of a model offered by a model repository (`GET /v1/repository/{id}/manifest`)."""

    path: str = Field(min_length=1, max_length=1024, description="Relative, `/`-separated.")
    size: NonNegInt
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class RepositoryModel(Contract):
    """A model a repository offers, as its list shows it (no checksums: they cost a read)."""

    model_id: ModelId
    kind: ModelKind
    format: ModelFormat
    architecture: str
    total_bytes: NonNegInt


class RepositoryList(Contract):
    object: Literal["list"] = "list"
    data: list[RepositoryModel]


class RepositoryManifest(RepositoryModel):
    """Every file of one offered model with its size and sha256: what a fetch verifies."""

    files: list[RepositoryFile] = Field(max_length=100_000)


class Health(Contract):
    status: Literal["ok", "starting", "degraded"]
    detail: str = ""


# --------------------------------------------------------------------------------------
# OpenAI-style generation
# --------------------------------------------------------------------------------------

# Hard ceilings of the contract itself; each server may set tighter limits in its settings.
MAX_PROMPT_CHARS = 1_000_000
MAX_TOKENS_CEILING = 1_000_000


class ChatMessage(Contract):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


_NOT_HONOURED = "is not supported here; refused rather than ignored"
MAX_CHOICES = 8  # `n`: each choice is a request of its own in the model's batch
MAX_STOPS = 4  # as OpenAI
MAX_STOP_CHARS = 256
MAX_TOP_LOGPROBS = 20  # chat's `top_logprobs`, as OpenAI
MAX_COMPLETION_LOGPROBS = 5  # the completions API's `logprobs`, as OpenAI


class StreamOptions(Contract):
    """`stream_options` of a streamed request: `include_usage` adds a last chunk with empty
    `choices` and the request's `usage`, as OpenAI sends it."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = None
    include_obfuscation: bool | None = Field(
        default=None, description="Accepted when false: this server never pads chunks."
    )

    @field_validator("include_obfuscation")
    @classmethod
    def _no_obfuscation(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError(f"include_obfuscation {_NOT_HONOURED}")
        return v


class _TextParams(Contract):
    """OpenAI's text parameters. Honoured: `max_tokens` (and `max_completion_tokens`, its
    newer name, which LangChain sends), `temperature`, `top_p`, `seed`, `n` (up to
    `MAX_CHOICES`), `stop` (up to 4 strings), `presence_penalty` / `frequency_penalty` (-2..2,
    applied as OpenAI defines them), logprobs, `stream` and `stream_options.include_usage`;
    `user` is accepted and has no effect on the output. A field this server does not honour
    is refused (422 naming it) when it asks for something (`logit_bias`, a `response_format`
    other than text, tools or a forced `tool_choice`), never silently ignored; an unknown
    field is refused too."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CEILING)
    max_completion_tokens: int | None = Field(
        default=None, ge=1, le=MAX_TOKENS_CEILING, description="Honoured as `max_tokens`."
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: Seed | None = Field(
        default=None, description="Reproducible sampling; choice i of `n` uses seed + i."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(
        default=1,
        ge=1,
        le=MAX_CHOICES,
        description="Choices to generate; each is its own request in the model's batch.",
    )
    user: str | None = Field(default=None, max_length=256, description="Accepted, not used.")
    stop: str | list[str] | None = Field(
        default=None,
        description="Up to 4 strings; the text ends before the first of them "
        "(finish_reason `stop`).",
    )
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _max_completion_tokens(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_completion_tokens") is not None:
            given = data.get("max_tokens")
            if given is not None and given != data["max_completion_tokens"]:
                raise ValueError("max_tokens and max_completion_tokens differ: give one")
            data = {**data, "max_tokens": data["max_completion_tokens"]}
        return data

    @field_validator("stream_options")
    @classmethod
    def _usage_only_when_streaming(
        cls, v: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if v is not None and v.include_usage and not info.data.get("stream"):
            raise ValueError("include_usage is only allowed when stream is true")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        for s in stops:
            if not s:
                raise ValueError("a stop string must not be empty")
            if len(s) > MAX_STOP_CHARS:
                raise ValueError(f"a stop string has at most {MAX_STOP_CHARS} characters")
        return v

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        """Accepted only when it asks for nothing (absent or empty)."""
        if v:
            raise ValueError(_NOT_HONOURED)
        return v

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if v:
            raise ValueError(
                f"tool calling {_NOT_HONOURED}: this server has no constrained decoding to "
                "guarantee a well-formed call"
            )
        return v

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and v.get("type", "text") != "text":
            raise ValueError(
                f"type {v.get('type')!r} {_NOT_HONOURED} (only text): this server has no "
                "constrained decoding to guarantee JSON"
            )
        return v

    @field_validator("tool_choice")
    @classmethod
    def _no_forced_tool(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if v not in (None, "none", "auto"):
            raise ValueError(f"a forced tool call {_NOT_HONOURED} (only none or auto)")
        return v


class ChatCompletionRequest(_TextParams):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = Field(
        default=None, description="Each generated token's log-probability (choices[].logprobs)."
    )
    top_logprobs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="With logprobs: the likeliest tokens at each position, and theirs.",
    )

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs set to true")
        return v

    def logprobs_k(self) -> int | None:
        """None: no logprobs; else how many alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_TextParams):
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    logprobs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_COMPLETION_LOGPROBS,
        description="The completions API's form: each token's log-probability and the "
        "likeliest `logprobs` tokens at each position.",
    )

    def logprobs_k(self) -> int | None:
        return self.logprobs


class Usage(Contract):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(Contract):
    token: str
    logprob: float = Field(description="Natural log; -9999.0 for a token the model rules out.")
    bytes: list[int] | None = Field(default=None, description="The token's text as UTF-8.")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(Contract):
    """Chat's `choices[i].logprobs`: the model's log-probabilities (after the penalties,
    before temperature and top_p) of each generated token and its likeliest alternatives."""

    content: list[TokenLogprob] | None = None


class CompletionLogprobs(Contract):
    """The completions API's `choices[i].logprobs` (the same numbers as chat's)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int] = Field(default_factory=list)


class ChatChoice(Contract):
    index: int = 0
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatCompletionResponse(Contract):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(Contract):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class CompletionResponse(Contract):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatDelta(Contract):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(Contract):
    index: int = 0
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(Contract):
    """One server-sent event of a streamed chat completion. With `n` > 1 the choices'
    chunks interleave, each naming its `index`; with `stream_options.include_usage` the last
    chunk has no choices and carries `usage`. Logprobs, when asked, come with each choice's
    last chunk (the one with its `finish_reason`)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChunk(Contract):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ImageGenerationRequest(Contract):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    n: int = Field(default=1, ge=1, le=64)
    size: str | None = Field(default=None, description="`WIDTHxHEIGHT`, e.g. `512x512`.")
    steps: int | None = Field(default=None, ge=1, le=1000, description="Denoising steps.")
    guidance_scale: float | None = Field(default=None, ge=0.0, le=50.0)
    seed: Seed | None = None
    response_format: Literal["b64_json"] = "b64_json"

    @field_validator("size")
    @classmethod
    def _size_shape(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = v.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and 0 < int(p) <= 8192 for p in parts):
            raise ValueError("size must look like 512x512 (positive integers up to 8192)")
        return v

    def dimensions(self) -> tuple[int, int] | None:
        if self.size is None:
            return None
        w, h = self.size.lower().split("x")
        return int(w), int(h)


class ImageData(Contract):
    b64_json: str
    revised_prompt: str | None = None


class ImageGenerationResponse(Contract):
    created: int
    data: list[ImageData]


class OpenAIModel(Contract):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "genedge"
    kind: ModelKind
    level: Level | None = None
    served_by: str | None = None


class OpenAIModelList(Contract):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


# --------------------------------------------------------------------------------------
# Orchestrator: registration, heartbeats, arrivals, placement
# --------------------------------------------------------------------------------------


class PoolCounts(Contract):
    hits: int = Field(0, ge=0, le=MAX_COUNT_PER_BATCH)
    misses: int = Field(0, ge=0, le=MAX_COUNT_PER_BATCH)


class AgentRegistration(Contract):
    """An agent introduces itself (and re-registers after an orchestrator restart)."""

    agent_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")
    url: str = Field(
        max_length=2048,
        description="Base URL where the orchestrator and gateway reach the agent: http(s), "
        "a host, no credentials, query or fragment.",
    )
    role: Literal["edge", "cloud"] = "edge"
    facts: HostFacts
    models: list[ModelStatus] = Field(default_factory=list, max_length=MAX_MODELS_PER_MESSAGE)

    @field_validator("url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        try:
            u = urlsplit(v)
            port = u.port  # raises on a bad port
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if u.username is not None or u.password is not None:
            raise ValueError("must not carry credentials")
        if u.query or u.fragment:
            raise ValueError("must not have a query or fragment")
        if port == 0:
            raise ValueError("port 0 is not reachable")
        return v


class RegistrationAck(Contract):
    agent_id: str
    heartbeat_interval_s: float
    server_time: float
    pins: dict[ModelId, TargetLevel] = Field(
        default_factory=dict, description="As in a heartbeat's ack."
    )
    priorities: dict[ModelId, Priority] = Field(default_factory=dict)


class Heartbeat(Contract):
    facts: HostFacts | None = None
    models: list[ModelStatus] = Field(default_factory=list, max_length=MAX_MODELS_PER_MESSAGE)
    arrivals: dict[ModelId, Count] = Field(
        default_factory=dict, description="Requests per model since the last heartbeat."
    )
    pool: dict[ModelId, PoolCounts] = Field(
        default_factory=dict, description="Swap-pool hits/misses per model since the last one."
    )

    @field_validator("arrivals", "pool")
    @classmethod
    def _few_models(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _bounded_keys(v)


class HeartbeatAck(Contract):
    ok: bool = True
    known: bool = Field(True, description="False: the orchestrator lost us; register again.")
    pins: dict[ModelId, TargetLevel] = Field(
        default_factory=dict,
        description="The operator's pins on this host (model -> minimum level), complete: a "
        "model not listed is not pinned by the orchestrator.",
    )
    priorities: dict[ModelId, Priority] = Field(
        default_factory=dict,
        description="Priority classes the operator set, complete (unlisted: `normal`).",
    )


class AgentInfo(Contract):
    id: str
    url: str
    role: str
    status: Literal["up", "down"]
    registered_at: float
    last_heartbeat: float | None
    facts: HostFacts
    models: list[ModelStatus] = Field(default_factory=list)


class AgentList(Contract):
    object: Literal["list"] = "list"
    data: list[AgentInfo]


class ArrivalBatch(Contract):
    """Requests per model counted by a gateway since its last batch. Arrivals are data: the
    orchestrator's own clock decides the slot they fall in (there is no time field), each
    count is bounded, and a model no agent holds is counted in one `_other` bucket, never
    stored or exported under its name."""

    model_config = ConfigDict(extra="forbid")

    counts: dict[ModelId, Count] = Field(description="Requests per model in this batch.")
    source: str = Field(default="gateway", min_length=1, max_length=64, pattern=ID_PATTERN)
    id: str | None = Field(
        default=None,
        min_length=8,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The sender's id for this batch: a batch sent again with the same id "
        "(a retry after a lost acknowledgement) is counted once.",
    )

    @field_validator("counts")
    @classmethod
    def _few_models(cls, v: dict[str, int]) -> dict[str, int]:
        return _bounded_keys(v)


class CostTerms(Contract):
    delay: float
    resource: float
    cloud: float
    transition: float
    wait: float = Field(default=0.0, description="Expected queueing at the hosts (seconds).")
    total: float


class Share(Contract):
    """One part of a model's traffic in a decision: the cloud (`host` None) or a level on a
    host, the fraction of the model's requests it serves and what that means in requests/s."""

    host: str | None = Field(description="None: the cloud.")
    level: str | None
    fraction: float = Field(ge=0, le=1, description="Share of the requests it serves.")
    rate_rps: float = Field(ge=0)
    expected_wait_s: float = Field(
        default=0.0, ge=0, description="Expected queueing per request on the host (0: cloud)."
    )
    weight: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of the requests the gateway sends it: above `fraction` on a host "
        "that passes the requests its queue would delay past the cloud on to the cloud; "
        "None: `fraction`.",
    )


class PlacementEntry(Contract):
    model: str
    kind: str | None = None
    rate_rps: float
    target_host: str | None = Field(description="The heaviest share's host; None: the cloud.")
    target_level: str | None
    split: list[Share] = Field(
        default_factory=list,
        description="Every option that serves part of the traffic, heaviest first (sums to 1).",
    )
    levels: dict[str, str] = Field(
        default_factory=dict,
        description="Level the decision keeps on each host (host -> level), serving or not.",
    )
    actual: dict[str, str] = Field(
        default_factory=dict, description="Level on each live host now (host -> level)."
    )
    cost: CostTerms
    why: str = ""
    priority: Priority = Field(
        default=Priority.NORMAL, description="The model's priority class in this decision."
    )
    pins: dict[str, TargetLevel] = Field(
        default_factory=dict,
        description="The operator's pins the decision held (host -> minimum level).",
    )


class Placement(Contract):
    algorithm: str
    computed_at: float | None
    seconds: float = 0.0
    optimal: bool | None = None
    cost: CostTerms | None
    entries: list[PlacementEntry] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    trigger: str = ""
    pending_commands: int = 0
    notes: list[str] = Field(
        default_factory=list,
        description="What the algorithm says of its decision (time limits, repairs, pins held "
        "or not held).",
    )


class PinRequest(Contract):
    """`PUT /v1/pins/{host}/{model}`: the operator's minimum level of a model on a host."""

    model_config = ConfigDict(extra="forbid")

    level: TargetLevel


class PriorityRequest(Contract):
    """`PUT /v1/priorities/{model}`: a model's priority class."""

    model_config = ConfigDict(extra="forbid")

    priority: Priority


class Pin(Contract):
    host: str
    model: str
    level: TargetLevel
    source: Literal["settings", "operator"] = Field(
        description="`settings` (ORCH_PINS: removed only by changing the settings) or "
        "`operator` (set over REST, kept in the registry)."
    )


class Controls(Contract):
    """The operator's controls in force: pins and priority classes (unlisted: `normal`)."""

    pins: list[Pin] = Field(default_factory=list)
    priorities: dict[str, Priority] = Field(default_factory=dict)


class PlanRequest(Contract):
    model_config = ConfigDict(extra="forbid")

    rates: dict[ModelId, Annotated[float, Field(ge=0, le=1e9)]] | None = Field(
        default=None, description="Requests/s per model; default: the current estimates."
    )
    algorithm: str | None = Field(default=None, min_length=1, max_length=64)

    @field_validator("rates")
    @classmethod
    def _few_models(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        return None if v is None else _bounded_keys(v)


class OptionCostDoc(Contract):
    host: str | None
    level: str | None
    cost: CostTerms
    feasible: bool
    chosen: bool = False
    fraction: float = Field(default=0.0, description="Share of the traffic the decision sends.")
    note: str = ""


class Explanation(Contract):
    model: str
    rate_rps: float
    options: list[OptionCostDoc]


# --------------------------------------------------------------------------------------
# Routing table: what the gateway needs from the orchestrator to route one request
# --------------------------------------------------------------------------------------


class RouteHost(Contract):
    """One live edge host holding a model, as last reported by its agent."""

    host: str
    url: str
    level: str = Field(description="Settled level on the host: stored, cached or resident.")
    state: str = Field(description="`ready`, `loading`, ... (`ModelState`).")
    in_pool: bool = Field(default=False, description="The model occupies the host's swap pool now.")
    planned: bool = Field(default=False, description="The current decision serves the model here.")
    fraction: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of the model's requests the decision sends here.",
    )
    preload_s: float | None = Field(
        default=None, description="Measured preload when not in GPU memory (RAM tier if cached)."
    )
    infer_s: float | None = Field(
        default=None, description="Measured time of one default generation."
    )
    queued: int = Field(default=0, description="In flight plus queued at the agent, last reported.")
    on_demand: bool = Field(
        default=False,
        description="The decision sends the model nowhere on this host, but the host may serve "
        "it on demand: its files are here and the host's planned swap pool is big enough.",
    )


class RouteModel(Contract):
    model: str
    kind: str
    target_host: str | None = Field(
        default=None, description="The decision's host; None: the cloud."
    )
    target_level: str | None = None
    hosts: list[RouteHost] = Field(default_factory=list)
    cloud_fraction: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share the decision sends to the cloud; None: no decision yet (route by "
        "level and queue alone).",
    )
    cloud_infer_s: float | None = Field(default=None, description="Measured on the cloud agent.")


class CloudRoute(Contract):
    """A live agent in role `cloud`."""

    id: str
    url: str
    models: list[str] = Field(default_factory=list)


class RoutingTable(Contract):
    generated_at: float = Field(description="When the orchestrator built this table (unix s).")
    planned_at: float | None = Field(
        default=None, description="When the decision behind it was made."
    )
    algorithm: str | None = None
    wan_rtt_s: float = Field(description="Round trip to the cloud backend, from the settings.")
    models: list[RouteModel] = Field(default_factory=list)
    cloud: list[CloudRoute] = Field(default_factory=list)
