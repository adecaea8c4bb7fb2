"""The one place where errors become HTTP responses: `{"error": {"type", "message", ...}}`.

Nothing here ever returns a stack trace; unexpected exceptions are logged with theirs and
answered with a 500 whose message names only the exception class.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_agent.errors import AgentError, Overloaded
from genedge.contract import ErrorBody
from genedge.http_errors import error_response, install_common_handlers

log = logging.getLogger("edge_agent.api")


def install_error_handlers(app: FastAPI) -> None:
    install_common_handlers(app, log)

    @app.exception_handler(AgentError)
    async def _agent_error(_: Request, exc: AgentError) -> JSONResponse:
        headers = None
        body = ErrorBody(type=exc.type, message=exc.message, field=exc.field, model=exc.model)
        if isinstance(exc, Overloaded):
            headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
            body.retry_after_s = exc.retry_after_s
        return error_response(exc.status, body, headers)


class BodySizeLimit:
    """Pure ASGI middleware: 413 for bodies over `max_bytes`, by header or by counting."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = ErrorBody(
            type="request_too_large", message=f"request body over {self.max_bytes} bytes"
        )
        await error_response(413, body)(scope, receive, send)


class _TooLarge(Exception):
    pass
