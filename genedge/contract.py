"""The shared contract: pydantic schemas used by every server route *and* every httpx client.

Nothing here imports FastAPI, torch or any service package, so the orchestrator, the gateway,
the edge agent and the tests all speak exactly these shapes. Generation endpoints follow the
OpenAI API closely enough that OpenAI clients work; everything else is versioned under /v1.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# --------------------------------------------------------------------------------------
# Errors: one JSON shape for every service, `{"error": {"type", "message", ...}}`.
# --------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    type: str = Field(description="Machine-readable error class, e.g. `invalid_request`.")
    message: str = Field(description="What went wrong, for a human.")
    field: str | None = Field(default=None, description="The request field at fault, if any.")
    model: str | None = Field(default=None, description="The model concerned, if any.")
    retry_after_s: float | None = None
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
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


class ModelState(StrEnum):
    READY = "ready"  # at its level, nothing moving
    LOADING = "loading"  # moving up (disk or RAM -> device, disk -> RAM)
    DRAINING = "draining"  # waiting for in-flight requests before going down
    EVICTING = "evicting"  # freeing memory
    FAILED = "failed"  # last transition failed; `failed_reason` says why


class TextDefaults(BaseModel):
    max_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0


class ImageDefaults(BaseModel):
    width: int = 512
    height: int = 512
    steps: int = 20
    guidance_scale: float = 7.5


class ModelManifest(BaseModel):
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
    storage_bytes: int = 0
    file_digest: str = ""


class BadModelFolder(BaseModel):
    path: str
    reason: str


class LoaderTiming(BaseModel):
    """Preload seconds of one loader from each tier (None: not measured)."""

    cold_s: float | None = None
    warm_s: float | None = None
    ram_s: float | None = None


class ModelProfile(BaseModel):
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


class ModelStatus(BaseModel):
    id: str
    kind: ModelKind
    format: ModelFormat
    architecture: str
    level: Level
    state: ModelState
    target_level: Level
    progress: float = Field(ge=0.0, le=1.0, description="Of the transition under way.")
    progress_detail: str = ""
    failed_reason: str | None = None
    in_flight: int = 0
    queued: int = 0
    memory_bytes: int = Field(0, description="Device memory this model holds now.")
    host_ram_bytes: int = Field(0, description="Host RAM this model's cached copy holds now.")
    storage_bytes: int = 0
    pool_hits: int = 0
    pool_misses: int = 0
    requests_total: int = 0
    last_used: float | None = None
    profile_status: ProfileStatus = ProfileStatus.PENDING
    profile_progress: float = Field(0.0, ge=0.0, le=1.0, description="Of a profile under way.")
    profile_detail: str = ""
    profile: ModelProfile | None = None


class ModelStatusList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelStatus]
    bad_folders: list[BadModelFolder] = Field(default_factory=list)


class SetLevelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["stored", "cached", "resident"]
    wait: bool = Field(
        default=False, description="Answer only when the transition has finished (or failed)."
    )


class HostFacts(BaseModel):
    host_id: str
    role: Literal["edge", "cloud"] = "edge"
    hostname: str
    fingerprint: str
    description: str
    device: str = Field(description="`cuda:0` or `cpu`.")
    gpu_name: str | None = None
    gpu_total_bytes: int | None = None
    gpu_free_bytes: int | None = None
    gpu_used_bytes: int | None = None
    nvml: bool = False
    device_budget_bytes: int = Field(description="Memory the agent may use on its device.")
    device_used_bytes: int = Field(description="Resident models plus the swap pool.")
    pool_model: str | None = None
    pool_bytes: int = 0
    ram_total_bytes: int
    ram_available_bytes: int
    cache_budget_bytes: int = Field(description="Host RAM the cached level may use.")
    cache_used_bytes: int
    disk_total_bytes: int
    disk_free_bytes: int
    disk_read_GBps: float | None = None
    h2d_GBps: float | None = Field(default=None, description="Host->device copy bandwidth.")
    bandwidth_measured: bool = False
    versions: dict[str, str] = Field(default_factory=dict)


class Health(BaseModel):
    status: Literal["ok", "starting", "degraded"]
    detail: str = ""


# --------------------------------------------------------------------------------------
# OpenAI-style generation
# --------------------------------------------------------------------------------------

# Hard ceilings of the contract itself; each server may set tighter limits in its settings.
MAX_PROMPT_CHARS = 1_000_000
MAX_TOKENS_CEILING = 1_000_000


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


class _TextParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CEILING)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request.")


class ChatCompletionRequest(_TextParams):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_TextParams):
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessage
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    n: int = Field(default=1, ge=1, le=64)
    size: str | None = Field(default=None, description="`WIDTHxHEIGHT`, e.g. `512x512`.")
    steps: int | None = Field(default=None, ge=1, le=1000, description="Denoising steps.")
    guidance_scale: float | None = Field(default=None, ge=0.0, le=50.0)
    seed: int | None = None
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


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImageGenerationResponse(BaseModel):
    created: int
    data: list[ImageData]


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "genedge"
    kind: ModelKind
    level: Level | None = None
    served_by: str | None = None


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


# --------------------------------------------------------------------------------------
# Orchestrator: registration, heartbeats, arrivals, placement
# --------------------------------------------------------------------------------------


class PoolCounts(BaseModel):
    hits: int = Field(0, ge=0)
    misses: int = Field(0, ge=0)


class AgentRegistration(BaseModel):
    """An agent introduces itself (and re-registers after an orchestrator restart)."""

    agent_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")
    url: str = Field(description="Base URL where the orchestrator and gateway reach the agent.")
    role: Literal["edge", "cloud"] = "edge"
    facts: HostFacts
    models: list[ModelStatus] = Field(default_factory=list)


class RegistrationAck(BaseModel):
    agent_id: str
    heartbeat_interval_s: float
    server_time: float


class Heartbeat(BaseModel):
    facts: HostFacts | None = None
    models: list[ModelStatus] = Field(default_factory=list)
    arrivals: dict[str, int] = Field(
        default_factory=dict, description="Requests per model since the last heartbeat."
    )
    pool: dict[str, PoolCounts] = Field(
        default_factory=dict, description="Swap-pool hits/misses per model since the last one."
    )


class HeartbeatAck(BaseModel):
    ok: bool = True
    known: bool = Field(True, description="False: the orchestrator lost us; register again.")


class AgentInfo(BaseModel):
    id: str
    url: str
    role: str
    status: Literal["up", "down"]
    registered_at: float
    last_heartbeat: float | None
    facts: dict[str, Any]
    models: list[dict[str, Any]] = Field(default_factory=list)


class AgentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AgentInfo]


class ArrivalBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    counts: dict[str, int] = Field(description="Requests per model in this batch.")
    at: float | None = Field(default=None, description="When (unix s); default: on receipt.")
    source: str = "gateway"

    @field_validator("counts")
    @classmethod
    def _non_negative(cls, v: dict[str, int]) -> dict[str, int]:
        if any(c < 0 for c in v.values()):
            raise ValueError("counts must be non-negative")
        if len(v) > 10_000:
            raise ValueError("at most 10000 models per batch")
        return v


class CostTerms(BaseModel):
    delay: float
    resource: float
    cloud: float
    transition: float
    total: float


class PlacementEntry(BaseModel):
    model: str
    kind: str | None = None
    rate_rps: float
    target_host: str | None = Field(description="None: the cloud.")
    target_level: str | None
    actual: dict[str, str] = Field(
        default_factory=dict, description="Level on each live host now (host -> level)."
    )
    cost: CostTerms
    why: str = ""


class Placement(BaseModel):
    algorithm: str
    computed_at: float | None
    seconds: float = 0.0
    optimal: bool | None = None
    cost: CostTerms | None
    entries: list[PlacementEntry] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    trigger: str = ""
    pending_commands: int = 0


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rates: dict[str, float] | None = Field(
        default=None, description="Requests/s per model; default: the current estimates."
    )
    algorithm: str | None = None


class OptionCostDoc(BaseModel):
    host: str | None
    level: str | None
    cost: CostTerms
    feasible: bool
    chosen: bool = False
    note: str = ""


class Explanation(BaseModel):
    model: str
    rate_rps: float
    options: list[OptionCostDoc]


# --------------------------------------------------------------------------------------
# Routing table: what the gateway needs from the orchestrator to route one request
# --------------------------------------------------------------------------------------


class RouteHost(BaseModel):
    """One live edge host holding a model, as last reported by its agent."""

    host: str
    url: str
    level: str = Field(description="Settled level on the host: stored, cached or resident.")
    state: str = Field(description="`ready`, `loading`, ... (`ModelState`).")
    in_pool: bool = Field(default=False, description="The model occupies the host's swap pool now.")
    planned: bool = Field(default=False, description="The current decision serves the model here.")
    preload_s: float | None = Field(
        default=None, description="Measured preload when not in GPU memory (RAM tier if cached)."
    )
    infer_s: float | None = Field(
        default=None, description="Measured time of one default generation."
    )
    queued: int = Field(default=0, description="In flight plus queued at the agent, last reported.")


class RouteModel(BaseModel):
    model: str
    kind: str
    target_host: str | None = Field(
        default=None, description="The decision's host; None: the cloud."
    )
    target_level: str | None = None
    hosts: list[RouteHost] = Field(default_factory=list)
    cloud_infer_s: float | None = Field(default=None, description="Measured on the cloud agent.")


class CloudRoute(BaseModel):
    """A live agent in role `cloud`."""

    id: str
    url: str
    models: list[str] = Field(default_factory=list)


class RoutingTable(BaseModel):
    generated_at: float = Field(description="When the orchestrator built this table (unix s).")
    planned_at: float | None = Field(
        default=None, description="When the decision behind it was made."
    )
    algorithm: str | None = None
    wan_rtt_s: float = Field(description="Round trip to the cloud backend, from the settings.")
    models: list[RouteModel] = Field(default_factory=list)
    cloud: list[CloudRoute] = Field(default_factory=list)
