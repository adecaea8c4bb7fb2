"""Errors of the edge agent, mapped to HTTP by `genedge.http_errors` (one place for all).

Hierarchy::

    AgentError                      500 internal_error
    ├── InvalidRequest              422 invalid_request   (a field out of the agent's limits)
    ├── UnknownModel                404 model_not_found
    ├── WrongModelKind              400 wrong_model_kind  (image request to a text model...)
    ├── Overloaded                  429 overloaded        (model queue full; Retry-After)
    ├── ModelUnavailable            503 model_unavailable (model failed to load / is broken)
    │   └── FetchFailed             503 fetch_failed (repository unreachable, checksum, no disk)
    ├── DoesNotFit                  409 does_not_fit      (not enough device memory or RAM)
    ├── TransitionConflict          409 transition_conflict
    ├── ClientDisconnected          499 client_disconnected (the client left; work stopped)
    └── ModelFolderError            (never reaches HTTP: a bad folder in the store)
        ├── BadModelFolder          folder layout / config problem
        └── CorruptWeights          safetensors file truncated or unreadable
"""

from __future__ import annotations

from genedge.errors import ServiceError


class AgentError(ServiceError):
    pass


class InvalidRequest(AgentError):
    status = 422
    type = "invalid_request"


class UnknownModel(AgentError):
    status = 404
    type = "model_not_found"


class WrongModelKind(AgentError):
    status = 400
    type = "wrong_model_kind"


class Overloaded(AgentError):
    status = 429
    type = "overloaded"

    def __init__(self, message: str, *, model: str | None = None, retry_after_s: float = 1.0):
        super().__init__(message, model=model, retry_after_s=retry_after_s)


class ModelUnavailable(AgentError):
    status = 503
    type = "model_unavailable"


class FetchFailed(ModelUnavailable):
    """Fetching a model from a model repository failed; the message names the file or the
    shortfall. The model stays `absent` (state `failed`); setting its level again resumes."""

    type = "fetch_failed"


class DoesNotFit(AgentError):
    status = 409
    type = "does_not_fit"


class TransitionConflict(AgentError):
    status = 409
    type = "transition_conflict"


class ClientDisconnected(AgentError):
    """The client closed its connection, so the generation was stopped early. No one reads
    the answer; the status (nginx's 499) only labels the request in metrics and logs."""

    status = 499
    type = "client_disconnected"


class ModelFolderError(AgentError):
    """A model folder that cannot be served; the reason is reported, the agent goes on."""


class BadModelFolder(ModelFolderError):
    type = "bad_model_folder"


class CorruptWeights(ModelFolderError):
    type = "corrupt_weights"
