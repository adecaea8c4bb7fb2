"""`ServerLimits`: the settings every service shares for slow, idle and many clients
(applied by `genedge.serving` and `genedge.http_errors.BodySizeLimit`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class ServerLimits(BaseSettings):
    """How long and how many clients a service waits for (each service's prefix)."""

    head_timeout_s: float = Field(
        default=10.0, gt=0, description="A request's head must arrive within this; else closed."
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="A request's body must arrive within this; else 408."
    )
    keep_alive_s: float = Field(default=5.0, gt=0, description="Idle kept-alive connections.")
    max_connections: int = Field(
        default=1000, ge=1, description="Connections and requests at once; 503 past it."
    )
