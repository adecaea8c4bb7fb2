"""Settings of the orchestrator; the only module of it that reads the environment (`ORCH_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OrchestratorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCH_", extra="ignore")

    db_path: Path = Field(default=Path("state/orchestrator.sqlite"), description="SQLite file.")
    token: str = Field(
        default="genedge-dev-token",
        description="Shared token agents present as `Authorization: Bearer ...` to register "
        "and heartbeat. Change it in any real deployment.",
    )

    # Liveness
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    missed_heartbeats: int = Field(default=3, ge=1, description="Then the host is down.")

    # Rates
    slot_s: float = Field(default=60.0, gt=0, description="Planning slot τ.")
    rate_half_life_s: float = Field(default=300.0, gt=0, description="EWMA half-life of rates.")
    surge_factor: float = Field(default=3.0, gt=1, description="Observed/estimate ratio = surge.")
    surge_min_count: int = Field(default=5, ge=1)

    # Decisions
    algorithm: str = "mlds"
    exact_time_limit_s: float = Field(default=10.0, gt=0)
    wan_rtt_s: float = Field(default=0.08, ge=0, description="Round trip to the cloud backend.")
    backhaul_Bps: float = Field(default=1.25e9, gt=0, description="Fetch bandwidth to hosts.")
    rho_max: float = Field(default=0.9, gt=0, le=1, description="Compute utilisation cap.")
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
