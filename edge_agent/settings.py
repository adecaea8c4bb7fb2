"""Settings of the edge agent. The only module of the agent that reads the environment.

Every field can be set as `EDGE_<NAME>` (e.g. `EDGE_STORE_DIR=/models`); tests build
`AgentSettings(...)` directly.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from edge_agent.core.batching import BatchLimits
from genedge.auth import check_token_setting, read_credential
from genedge.limits import ServerLimits

GiB = 1024**3
MiB = 1024**2


class AgentSettings(ServerLimits):
    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore")

    host_id: str = Field(default_factory=socket.gethostname, description="Name in the fleet.")
    role: Literal["edge", "cloud"] = Field(
        default="edge",
        description="`cloud`: the gateway's cloud backend (all models, not placed on).",
    )
    wan_delay_ms: float = Field(
        default=0.0,
        ge=0,
        description="Added round-trip delay on generation requests, to make a local cloud "
        "agent as far away as a real one.",
    )
    store_dir: Path = Path("models")
    extra_store_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="More folders of model folders, read after `store_dir`; in the "
        "environment `:`-separated (like PATH) or a JSON list.",
    )
    hf_cache: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Hugging Face hub caches (e.g. ~/.cache/huggingface/hub) served as store "
        "roots after the folders: one model per cached repo, id `org/name`. `:`-separated or "
        "a JSON list.",
    )
    hf_revisions: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Pinned revisions of hub cache repos (a ref or a commit hash); unpinned "
        "repos serve `refs/main`'s snapshot. `org/a=v1.0,org/b=4f2c1e9` or a JSON object.",
    )
    profiles_dir: Path = Field(
        default=Path("state/profiles"),
        description="Measured profiles, as <host fingerprint>/<model id>.json.",
    )

    # Device and memory
    device: str = Field(
        default="auto", description="`auto` (cuda:0 when present), `cpu`, `cuda:N`."
    )
    dtype: Literal["float16", "bfloat16", "float32"] | None = Field(
        default=None, description="Cast floating weights on load; None keeps the stored dtype."
    )
    weights_reader: Literal["pipelined", "safetensors"] = Field(
        default="pipelined",
        description="How weights are read: `pipelined` (parallel reads into one device block "
        "per model) or `safetensors` (per file and tensor: the previous reader, a fallback).",
    )
    device_budget_bytes: int | None = Field(
        default=None,
        description="Device memory for resident models plus the swap pool. None: on a GPU the "
        "NVML total minus `device_reserve_bytes`; on CPU half the available RAM.",
    )
    device_reserve_bytes: int = Field(default=2 * GiB, description="Kept free for activations.")
    cache_budget_bytes: int | None = Field(
        default=None, description="Host RAM for the cached level. None: a quarter of available RAM."
    )
    initial_levels: dict[str, Literal["stored", "cached", "resident"]] = Field(
        default_factory=dict, description="Levels to reach at start, by model id."
    )

    # Admission
    max_concurrency_per_model: int = Field(
        default=16,
        ge=1,
        description="Requests one model serves at once; with batching they share one running "
        "batch (text: `batch_max_requests` decoded together; images: `image_max_batch` "
        "images per pipeline call), otherwise each runs alone in a thread of its own.",
    )
    text_batching: bool = Field(
        default=True,
        description="Continuous batching of a text model's concurrent requests (transformers' "
        "engine with a paged KV cache). False: each request runs `generate` alone.",
    )
    batch_max_requests: int = Field(
        default=16, ge=1, description="Text requests decoded together in one model's batch."
    )
    batch_max_tokens: int = Field(
        default=8192,
        ge=64,
        description="KV-cache tokens (prompts plus outputs) one model's batch may hold; "
        "requests past it wait. Its memory is on top of the model's weights.",
    )
    batch_step_tokens: int = Field(
        default=2048,
        ge=16,
        description="Tokens per forward pass of a batch (prompts of joining requests plus "
        "one per decoding request): higher admits a burst in fewer steps.",
    )
    image_max_batch: int = Field(
        default=4, ge=1, description="Images of compatible requests per pipeline call."
    )
    pool_max_wait_s: float = Field(
        default=30.0,
        ge=0,
        description="The swap pool's starvation bound: requests for the model the pool holds "
        "go before a switch, but a request that has waited this long goes first whatever the "
        "pool holds. 0: first-in-first-out. 30 s is about three of the slowest preloads "
        "measured on an H200 (10.7 s), so grouping saves switches without holding anyone "
        "back for long.",
    )
    max_queue_per_model: int = Field(default=8, ge=0)
    retry_after_s: float = Field(default=1.0, gt=0)
    drain_timeout_s: float = Field(default=600.0, gt=0)

    # Request limits (422 past them, naming the field)
    max_prompt_chars: int = Field(default=32_000, ge=1)
    max_messages: int = Field(default=256, ge=1)
    max_tokens: int = Field(default=1024, ge=1)
    max_steps: int = Field(default=100, ge=1)
    max_image_side: int = Field(default=2048, ge=8)
    max_images: int = Field(default=4, ge=1)
    max_body_bytes: int = Field(default=4 * MiB, ge=1024)

    # Work bounds: what one request may cost this host, beyond each field's own limit
    max_request_s: float | None = Field(
        default=120.0,
        gt=0,
        description="Estimated seconds one generation may run; 422 (naming size, steps, n or "
        "max_tokens) past it, before the request waits for its model. Fields each within "
        "their limits can multiply into minutes (a 1024x1024 image at 100 steps on CPU), "
        "and a request holds its model, and the swap pool with every pooled model behind "
        "it, while it runs. Estimated from the model's measured profile (its default "
        "generation's time, scaled by pixels x steps x images or by tokens); a model not "
        "profiled yet has only the per-field limits. None: no bound.",
    )
    max_profile_queue: int = Field(
        default=2,
        ge=0,
        description="Profiles (`POST /v1/models/{id}/profile`) that may wait behind the one "
        "running; 429 with Retry-After past it. Each takes seconds of device time and "
        "holds the swap pool, so an unbounded queue lets callers starve requests.",
    )

    # Profiling
    profile_on_start: bool = True
    profile_text_tokens: int = Field(default=16, ge=1)
    profile_throughput: bool = Field(
        default=True,
        description="Profiles also measure throughput at several batch sizes (text 1, 4, 16; "
        "images 1, 2, 4), which the orchestrator plans a batching host's capacity with. "
        "False: batch 1 only (`generation_s`).",
    )
    profile_throughput_max_s: float = Field(
        default=30.0,
        gt=0,
        description="A batch of `b` is measured only when `b` x the batch-1 generation time "
        "fits in this many seconds (so a slow image pipeline on a CPU host stays at batch 1; "
        "the profile's notes say which batches were left out).",
    )
    measure_bandwidth: bool = True
    bandwidth_probe_bytes: int = Field(default=128 * MiB, ge=MiB)

    # Fetching absent models (issue 15; README "Fetching models")
    repository_url: str | None = Field(
        default=None,
        description="A model repository (another agent, typically the cloud agent) that "
        "models this host lacks are fetched from when a level is set on them. None: the "
        "agent serves only what its store holds (an unknown model is a 404).",
    )
    fetch_dir: Path | None = Field(
        default=None,
        description="Where fetched models go (scanned as a store root at start, so they "
        "survive a restart). None: `<store_dir>/.fetched`.",
    )
    fetch_max_bps: float | None = Field(
        default=None, gt=0, description="Bandwidth cap of a fetch, bytes/s. None: no cap."
    )
    fetch_retries: int = Field(
        default=3, ge=0, description="Resumes of a dropped connection within one fetch."
    )
    evict_user_models: bool = Field(
        default=False,
        description="Let a fetch short of disk space delete models the agent did not fetch "
        "(the user's own folders). Off: only fetched models are ever deleted.",
    )
    pins: dict[str, Literal["stored", "cached", "resident"]] = Field(
        default_factory=dict,
        description="Models pinned on this host (id -> minimum level): never evicted from "
        'disk. JSON, e.g. `{"sd15": "stored"}`.',
    )

    # Orchestrator link (none: the agent runs alone)
    orchestrator_url: str | None = None
    agent_token: str = Field(
        default="",
        description="The fleet's agent token (genedge.auth): every call to this agent except "
        "health, metrics and docs must carry it, and the agent presents it to the "
        "orchestrator. Empty: the agent is open (a warning says so beyond loopback).",
    )
    credentials_dir: Path | None = Field(
        default=None,
        description="A folder of credential files (`genedge credentials DIR`): the agent "
        "token is read from its `agent_token` file when not set above.",
    )
    advertise_url: str | None = Field(
        default=None, description="URL the orchestrator reaches us at; default http://host:port."
    )

    # Server (used by `genedge agent`)
    host: str = "127.0.0.1"
    port: int = 8100
    log_level: str = "info"

    def batch_limits(self) -> BatchLimits:
        """The bounds of one model's running batch these settings give."""
        return BatchLimits(
            text=self.text_batching,
            max_requests=self.batch_max_requests,
            max_tokens_in_flight=self.batch_max_tokens,
            step_tokens=self.batch_step_tokens,
            max_images=self.image_max_batch,
        )

    @field_validator("extra_store_dirs", "hf_cache", mode="before")
    @classmethod
    def _path_list(cls, v: object) -> object:
        """`a:b` or `["a", "b"]` from the environment; `~` expands (a hub cache is under home)."""
        if isinstance(v, str):
            text = v.strip()
            v = json.loads(text) if text.startswith("[") else text.split(os.pathsep)
        if isinstance(v, list | tuple):
            return [os.path.expanduser(str(p).strip()) for p in v if str(p).strip()]
        return v

    @field_validator("hf_revisions", mode="before")
    @classmethod
    def _revision_map(cls, v: object) -> object:
        """`org/a=v1.0,org/b=4f2c1e9` or a JSON object from the environment."""
        if not isinstance(v, str):
            return v
        text = v.strip()
        if text.startswith("{"):
            return json.loads(text)
        pins: dict[str, str] = {}
        for item in filter(None, (i.strip() for i in text.split(","))):
            repo, sep, rev = item.partition("=")
            if not sep or not repo.strip() or not rev.strip():
                raise ValueError(f"{item!r} is not REPO=REVISION (e.g. org/name=main)")
            pins[repo.strip()] = rev.strip()
        return pins

    @field_validator("agent_token")
    @classmethod
    def _token(cls, v: str) -> str:
        return check_token_setting(v, "EDGE_AGENT_TOKEN")

    @model_validator(mode="after")
    def _token_from_dir(self) -> AgentSettings:
        if not self.agent_token:
            self.agent_token = read_credential(self.credentials_dir, "agent_token")
        return self
