"""The HTTP error shape shared by every service: `{"error": {"type", "message", ...}}`.

`install_common_handlers` maps every service's own errors (all `genedge.errors.ServiceError`:
its status, its body, its `Retry-After`), request-validation errors
(422, naming the field), Starlette's HTTP errors (404 path, 405 method, ...) and any unexpected
exception (500, logged with its stack trace, answered without it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genedge.contract import ErrorBody, ErrorResponse
from genedge.errors import ServiceError

HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    503: "unavailable",
}


def error_response(
    status: int, body: ErrorBody, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        ErrorResponse(error=body).model_dump(exclude_none=True), status_code=status, headers=headers
    )


def service_error_response(exc: ServiceError) -> JSONResponse:
    """The one place a service's own error becomes HTTP."""
    return error_response(exc.status, exc.body(), exc.headers())


def field_of(loc: Any) -> str:
    """`("body", "messages", 0, "role")` -> `messages.0.role`."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def validation_error_response(errors: Sequence[Any]) -> JSONResponse:
    """422 naming the first field at fault (pydantic errors, `loc` from the body down)."""
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = field_of(first.get("loc", ()))
    details = [{"field": field_of(e.get("loc", ())), "message": e.get("msg", "")} for e in errors]
    msg = f"{field}: {first.get('msg', 'invalid')}"
    return error_response(
        422, ErrorBody(type="invalid_request", message=msg, field=field, details=details)
    )


def install_common_handlers(app: FastAPI, log: logging.Logger) -> None:
    """Every service's error handlers: its own errors (all `ServiceError`s), validation, HTTP
    errors of the framework and the unexpected."""

    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = HTTP_TYPES.get(exc.status_code, "http_error")
        return error_response(
            exc.status_code,
            ErrorBody(type=kind, message=str(exc.detail)),
            dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(
            500, ErrorBody(type="internal_error", message=f"internal error ({type(exc).__name__})")
        )


class BodySizeLimit:
    """Pure ASGI middleware: 413 for bodies over `max_bytes` (by header or by counting), and
    408 for a body that has not all arrived `timeout_s` after the app first asked for it
    (a client sending a byte a second holds nothing for long)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(scope, receive, send)
                return
        seen = 0
        done = False
        deadline: float | None = None
        loop = asyncio.get_running_loop()

        async def counting_receive() -> Message:
            nonlocal seen, done, deadline
            if done or self.timeout_s is None:
                message = await receive()
            else:
                if deadline is None:
                    deadline = loop.time() + self.timeout_s
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise _TooSlow(self.timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
                done = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._reject(scope, receive, send)
        except _TooSlow as exc:  # outside any handler (a middleware read the body)
            body = ErrorBody(type="request_timeout", message=str(exc.detail))
            await error_response(408, body)(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = ErrorBody(
            type="request_too_large", message=f"request body over {self.max_bytes} bytes"
        )
        await error_response(413, body)(scope, receive, send)


class _TooSlow(StarletteHTTPException):
    """Raised from `receive` inside the app: an HTTP error, so FastAPI's body parsing lets
    it through and the app's handler answers 408 in the common error shape."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"request body not received within {timeout_s:g} s")


class _TooLarge(Exception):
    pass
