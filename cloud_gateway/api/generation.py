"""The three generation endpoints, served as a pure ASGI middleware in front of FastAPI's
router: check the key and rate limit, read and validate the raw body once with the
contract, forward those same bytes.

Why not ordinary routes: FastAPI's routing, exception and exit-stack layers cost about
0.15 ms per request on the 2-core reference machine (measured side by side), a sixth of
the gateway's whole budget of 1 ms at the median. Everything else about the endpoints
stays as for a route: the same error shapes (the shared 422 and this package's error
mapping), unexpected errors still reach the app's 500 handler, and the OpenAPI document
describes them (`openapi_paths`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cloud_gateway.errors import GatewayError
from cloud_gateway.service import Gateway
from genedge.contract import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorBody,
    ImageGenerationRequest,
    ImageGenerationResponse,
)
from genedge.http_errors import error_response, service_error_response, validation_error_response

# path -> (request model, response model, model kind, summary)
ENDPOINTS: dict[str, tuple[type[BaseModel], type[BaseModel], str, str]] = {
    "/v1/chat/completions": (
        ChatCompletionRequest,
        ChatCompletionResponse,
        "text",
        'Chat completion; server-sent events with `"stream": true`',
    ),
    "/v1/completions": (
        CompletionRequest,
        CompletionResponse,
        "text",
        'Text completion; server-sent events with `"stream": true`',
    ),
    "/v1/images/generations": (
        ImageGenerationRequest,
        ImageGenerationResponse,
        "image",
        "Images as base64 PNG",
    ),
}
ERROR_STATUSES = (400, 401, 404, 413, 422, 429, 503)


class GenerationEndpoints:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = ENDPOINTS.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":  # the path exists: the method is what is wrong
            refusal = ErrorBody(
                type="method_not_allowed", message=f"{scope['path']} takes POST only"
            )
            await error_response(405, refusal, {"allow": "POST"})(scope, receive, send)
            return
        gw: Gateway = scope["app"].state.gateway
        model_cls, _, kind, _ = endpoint
        try:
            headers = dict(scope["headers"])
            client = scope.get("client")
            auth = headers.get(b"authorization")
            gw.admit(auth.decode("latin-1") if auth else None, client[0] if client else "-")
            raw = await _body(receive)
            try:
                body: Any = model_cls.model_validate_json(raw)
            except ValidationError as exc:
                await validation_error_response(exc.errors())(scope, receive, send)
                return
            stream = bool(getattr(body, "stream", False))
            response = await _unless_gone(
                gw.forward(body.model, kind, scope["path"], raw, stream), receive
            )
        except GatewayError as exc:
            response = service_error_response(exc)
        if response is None:  # the client left: the upstream request was dropped with it
            return
        await response(scope, receive, send)


async def _unless_gone(forward: Awaitable[Response], receive: Receive) -> Response | None:
    """`forward`'s response, or None once the client disconnects first. Dropping the
    upstream request closes its connection, and the agent stops the generation when it
    sees that disconnect (a non-streamed answer would otherwise keep the model busy for a
    client that is gone). Once streaming, Starlette's response notices the disconnect and
    the relay closes the upstream stream the same way."""
    work = asyncio.ensure_future(forward)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
        await asyncio.wait([gone])
    if work.done() and not work.cancelled():
        return work.result()
    await asyncio.wait([work])  # cancelled above: let aiohttp close the connection
    return None


async def _disconnected(receive: Receive) -> None:
    """Returns on the ASGI `http.disconnect` message (the body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def openapi_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAPI path items and component schemas of the generation endpoints."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, (req, resp, _, summary) in ENDPOINTS.items():
        for model in (req, resp):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema

        def ref(model: type[BaseModel]) -> dict[str, Any]:
            return {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            }

        responses: dict[str, Any] = {
            "200": {"description": "Successful Response", "content": ref(resp)}
        }
        for status in ERROR_STATUSES:
            responses[str(status)] = {
                "description": "Error",
                "content": {"application/json": {"schema": error_ref}},
            }
        paths[path] = {
            "post": {
                "summary": summary,
                "operationId": path.strip("/").replace("/", "_"),
                "requestBody": {"required": True, "content": _json_ref(req)},
                "responses": responses,
            }
        }
    return paths, schemas


def _json_ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
