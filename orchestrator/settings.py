"""Settings of the orchestrator; the only module of it that reads the environment (`ORCH_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from genedge.auth import Credentials, check_distinct, check_token_setting, read_credential
from genedge.contract import ModelId, Priority, TargetLevel
from genedge.limits import ServerLimits
from orchestrator.core.rates import DEFAULT_HALF_LIVES_S, DEFAULT_SURGE_ALPHA


class OrchestratorSettings(ServerLimits):
    model_config = SettingsConfigDict(env_prefix="ORCH_", extra="ignore")

    db_path: Path = Field(default=Path("state/orchestrator.sqlite"), description="SQLite file.")
    # Credentials (genedge.auth; docs/deploy.md, "Credentials"). No token at all: the
    # orchestrator runs open (tests, a laptop) and says so when it listens beyond loopback.
    # Once any is set, a role without its token is refused.
    agent_token: str = Field(
        default="",
        description="The fleet's agent token: agents present it to register and heartbeat, "
        "and the orchestrator sends it with its commands to agents.",
    )
    gateway_token: str = Field(
        default="", description="The gateway's token: arrivals and the routing table."
    )
    operator_token: str = Field(
        default="", description="Operators' token: reads of the fleet and what-if plans."
    )
    credentials_dir: Path | None = Field(
        default=None,
        description="A folder of credential files (`genedge credentials DIR`): each token "
        "not set above is read from its file (`agent_token`, `gateway_token`, "
        "`operator_token`).",
    )

    # Bounds on what clients may send
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="413 past it.")

    # Liveness
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    missed_heartbeats: int = Field(default=3, ge=1, description="Then the host is down.")

    # Rates
    slot_s: float = Field(default=60.0, gt=0, description="Planning slot τ.")
    rate_half_life_s: float = Field(
        default=300.0, gt=0, description="EWMA half-life of rates (the tie-break candidate)."
    )
    rate_half_lives_s: list[Annotated[float, Field(gt=0, le=86400)]] = Field(
        default_factory=lambda: list(DEFAULT_HALF_LIVES_S),
        max_length=8,
        description="Candidate EWMA half-lives; per model the one that has predicted its "
        "recent slots best gives its rate (JSON list; [] for the one fixed half-life).",
    )
    surge_factor: float = Field(default=3.0, gt=1, description="Observed/estimate ratio = surge.")
    surge_min_count: int = Field(default=5, ge=1)
    surge_alpha: float = Field(
        default=DEFAULT_SURGE_ALPHA,
        gt=0,
        le=1,
        description="A surge must be less likely than this at the current estimate (Poisson tail).",
    )

    # Decisions
    algorithm: str = "mlds"
    exact_time_limit_s: float = Field(default=10.0, gt=0)
    wan_rtt_s: float = Field(default=0.08, ge=0, description="Round trip to the cloud backend.")
    backhaul_Bps: float = Field(default=1.25e9, gt=0, description="Fetch bandwidth to hosts.")
    rho_max: float = Field(default=0.9, gt=0, le=1, description="Compute utilisation cap.")
    # The operator's controls (orchestrator.controls); more can be set over REST
    pins: dict[str, dict[ModelId, TargetLevel]] = Field(
        default_factory=dict,
        description="Pins in force whatever is set over REST, host -> model -> minimum level, "
        'e.g. ORCH_PINS=\'{"edge-1": {"llama-3-8b": "resident"}}\'.',
    )
    priorities: dict[ModelId, Priority] = Field(
        default_factory=dict,
        description="Priority classes (low, normal, high), e.g. "
        'ORCH_PRIORITIES=\'{"sdxl": "high"}\'; REST may change them.',
    )
    # Prices of the cost model; None keeps the documented default of
    # `orchestrator.core.placement.Prices` (one place for the numbers and their reasons).
    delay_weight: float | None = None
    disk_per_GB: float | None = None
    ram_per_GB: float | None = None
    vram_per_GB: float | None = None
    cloud_per_request: float | None = None
    fetch_weight: float | None = None
    load_weight: float | None = None

    # Reconciler
    command_retries: int = Field(default=5, ge=0)
    command_backoff_s: float = Field(default=0.5, gt=0)
    command_timeout_s: float = Field(default=600.0, gt=0)

    # Server
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"

    @field_validator("agent_token", "gateway_token", "operator_token")
    @classmethod
    def _token(cls, v: str, info: object) -> str:
        return check_token_setting(v, f"ORCH_{getattr(info, 'field_name', 'token').upper()}")

    @model_validator(mode="after")
    def _distinct(self) -> OrchestratorSettings:
        d = self.credentials_dir
        self.agent_token = self.agent_token or read_credential(d, "agent_token")
        self.gateway_token = self.gateway_token or read_credential(d, "gateway_token")
        self.operator_token = self.operator_token or read_credential(d, "operator_token")
        check_distinct(
            {
                "ORCH_AGENT_TOKEN": self.agent_token,
                "ORCH_GATEWAY_TOKEN": self.gateway_token,
                "ORCH_OPERATOR_TOKEN": self.operator_token,
            }
        )
        return self

    def credentials(self) -> Credentials:
        return Credentials.of(
            agent=self.agent_token, gateway=self.gateway_token, operator=self.operator_token
        )
