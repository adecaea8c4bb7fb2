"""Errors of the gateway, mapped to HTTP in `api/routes.py` (one place).

    GatewayError
    ├── Unauthorized      401  missing or unknown API key
    ├── WrongKind         400  a text model on the image endpoint or the reverse
    ├── UnknownModel      404  not in the catalogue (edge hosts and cloud)
    ├── RateLimited       429  the key's request rate is over its limit (`Retry-After`)
    └── NoBackend         503  every candidate failed before its first byte, or none exists

Validation (422, naming the field) and body size (413) come from the shared handlers.
"""

from __future__ import annotations


class GatewayError(Exception):
    status = 500
    type = "gateway_error"

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        retry_after_s: float | None = None,
        details: list[dict[str, object]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.model = model
        self.retry_after_s = retry_after_s
        self.details = details


class Unauthorized(GatewayError):
    status = 401
    type = "unauthorized"


class WrongKind(GatewayError):
    status = 400
    type = "wrong_model_kind"


class UnknownModel(GatewayError):
    status = 404
    type = "model_not_found"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limited"


class NoBackend(GatewayError):
    status = 503
    type = "no_backend"
