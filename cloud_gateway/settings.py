"""Settings of the cloud gateway; the only module of it that reads the environment (`GW_*`).

Tests build `GatewaySettings(...)` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from genedge.auth import check_token_setting, read_credential
from genedge.limits import ServerLimits

MiB = 1024**2


class GatewaySettings(ServerLimits):
    model_config = SettingsConfigDict(env_prefix="GW_", extra="ignore")

    # Where routes come from
    orchestrator_url: str | None = Field(
        default=None, description="Polled for `GET /v1/routing`; none: cloud only."
    )
    orchestrator_token: str = Field(
        default="",
        description="The gateway's credential at the orchestrator (its ORCH_GATEWAY_TOKEN): "
        "arrivals and the routing table.",
    )
    agent_token: str = Field(
        default="",
        description="The fleet's agent token, sent with every request to an agent (edge or "
        "cloud role); not to a `cloud_url` backend, which gets `cloud_api_key`.",
    )
    credentials_dir: Path | None = Field(
        default=None,
        description="A folder of credential files (`genedge credentials DIR`): tokens not "
        "set here are read from `gateway_token` and `agent_token`, and the client key hash "
        "from `gateway_key.sha256`.",
    )
    table_refresh_s: float = Field(default=1.0, gt=0, description="Poll interval of the table.")
    table_max_age_s: float = Field(
        default=15.0, gt=0, description="Older than this, the table is stale: `/readyz` says so."
    )
    state_dir: Path | None = Field(
        default=Path("state/gateway"),
        description="Keeps the last routing table, so a restart without the orchestrator "
        "still routes. None: memory only.",
    )

    # Cloud backend
    cloud_url: str | None = Field(
        default=None,
        description="Any OpenAI-compatible base URL (e.g. `https://api.example.com`). None: "
        "the cloud agent registered with the orchestrator.",
    )
    cloud_api_key: str = Field(default="", description="Sent as `Authorization: Bearer ...`.")
    cloud_id: str = Field(default="cloud", description="`x-served-by` of cloud-served requests.")

    # Clients
    api_key_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted client API keys as lowercase sha256 hex digests, comma-separated "
        "in the environment. Empty: no authentication.",
    )
    rate_limit_rps: float = Field(
        default=0.0,
        ge=0,
        description="Sustained requests/s per key (per client IP without keys). 0: no limit.",
    )
    rate_limit_burst: int = Field(default=20, ge=1, description="Requests a key may burst.")
    max_body_bytes: int = Field(default=4 * MiB, ge=1024)

    # Upstreams
    connect_timeout_s: float = Field(default=2.0, gt=0)
    upstream_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Until the upstream's response headers (a whole "
        "non-streamed generation, preload included).",
    )
    max_upstream_connections: int = Field(default=512, ge=1)

    # Arrivals reported to the orchestrator
    arrivals_interval_s: float = Field(default=1.0, gt=0)

    # Server (used by `genedge gateway`)
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"

    @model_validator(mode="after")
    def _from_dir(self) -> GatewaySettings:
        d = self.credentials_dir
        self.orchestrator_token = self.orchestrator_token or read_credential(d, "gateway_token")
        self.agent_token = self.agent_token or read_credential(d, "agent_token")
        if not self.api_key_hashes and (digest := read_credential(d, "gateway_key.sha256")):
            self.api_key_hashes = self._hex([digest])
        return self

    @field_validator("orchestrator_token", "agent_token")
    @classmethod
    def _token(cls, v: str, info: object) -> str:
        return check_token_setting(v, f"GW_{getattr(info, 'field_name', 'token').upper()}")

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return [h.strip().lower() for h in v.split(",") if h.strip()]
        return v

    @field_validator("api_key_hashes")
    @classmethod
    def _hex(cls, v: list[str]) -> list[str]:
        for h in v:
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h.lower()):
                raise ValueError(f"not a sha256 hex digest: {h[:12]}...")
        return [h.lower() for h in v]
