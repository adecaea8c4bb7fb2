"""The one base class of every service's errors, and the one `Retry-After` rule.

Each service's `errors.py` derives its hierarchy (documented there) from `ServiceError`: a
subclass sets `status` and `type`, an instance says what went wrong and, where it helps the
client, the field or model at fault, when to retry, and details. `genedge.http_errors` turns
any of them into the common response shape; this module imports no web framework, so a
service's `core/` may raise them.
"""

from __future__ import annotations

import math
from typing import Any

from genedge.contract import ErrorBody


def retry_after_header(seconds: float) -> dict[str, str]:
    """`Retry-After` in whole seconds, rounded up (a client told to wait 1.2 s that comes back
    after 1 s is refused again), at least 1: the one rule of every service."""
    return {"Retry-After": str(max(1, math.ceil(seconds - 1e-9)))}


class ServiceError(Exception):
    status = 500
    type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        model: str | None = None,
        retry_after_s: float | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.model = model
        self.retry_after_s = retry_after_s
        self.details = details

    def body(self) -> ErrorBody:
        return ErrorBody(
            type=self.type,
            message=self.message,
            field=self.field,
            model=self.model,
            retry_after_s=self.retry_after_s,
            details=self.details,
        )

    def headers(self) -> dict[str, str] | None:
        return None if self.retry_after_s is None else retry_after_header(self.retry_after_s)
