"""Errors of the orchestrator, mapped to HTTP by `genedge.http_errors` (one place for all).

Hierarchy::

    OrchestratorError          500 internal_error
    ├── Unauthorized           401 unauthorized      (missing or wrong agent token)
    ├── NotFound               404 not_found         (unknown agent or model)
    ├── InvalidRequest         422 invalid_request   (e.g. unknown algorithm)
    ├── DoesNotFit             409 does_not_fit      (a pin larger than its host)
    └── NoHosts                503 no_hosts          (nothing to plan on)
"""

from __future__ import annotations

from genedge.errors import ServiceError


class OrchestratorError(ServiceError):
    pass


class Unauthorized(OrchestratorError):
    status = 401
    type = "unauthorized"


class NotFound(OrchestratorError):
    status = 404
    type = "not_found"


class InvalidRequest(OrchestratorError):
    status = 422
    type = "invalid_request"


class DoesNotFit(OrchestratorError):
    status = 409
    type = "does_not_fit"


class NoHosts(OrchestratorError):
    status = 503
    type = "no_hosts"
