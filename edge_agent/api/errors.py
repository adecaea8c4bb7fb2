"""The one place where errors become HTTP responses: `{"error": {"type", "message", ...}}`.

Nothing here ever returns a stack trace; unexpected exceptions are logged with theirs and
answered with a 500 whose message names only the exception class.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from edge_agent.errors import AgentError, Overloaded
from genedge.contract import ErrorBody
from genedge.http_errors import error_response, install_common_handlers, retry_after_header

log = logging.getLogger("edge_agent.api")


def install_error_handlers(app: FastAPI) -> None:
    install_common_handlers(app, log)

    @app.exception_handler(AgentError)
    async def _agent_error(_: Request, exc: AgentError) -> JSONResponse:
        headers = None
        body = ErrorBody(type=exc.type, message=exc.message, field=exc.field, model=exc.model)
        if isinstance(exc, Overloaded):
            headers = retry_after_header(exc.retry_after_s)
            body.retry_after_s = exc.retry_after_s
        return error_response(exc.status, body, headers)
