"""Errors of the gateway, mapped to HTTP by `genedge.http_errors` (one place for all).

    GatewayError
    ├── Unauthorized      401  missing or unknown API key
    ├── WrongKind         400  a text model on the image endpoint or the reverse
    ├── UnknownModel      404  not in the catalogue (edge hosts and cloud)
    ├── RateLimited       429  the key's request rate is over its limit (`Retry-After`)
    └── NoBackend         503  every candidate failed before its first byte, or none exists

Validation (422, naming the field) and body size (413) come from the shared handlers.
"""

from __future__ import annotations

from genedge.errors import ServiceError


class GatewayError(ServiceError):
    type = "gateway_error"


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
