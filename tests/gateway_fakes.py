"""Hand-written fakes for the gateway's tests: an orchestrator whose routing table the test
sets (and which records arrival batches), and a scriptable OpenAI-style backend for faults
the real agent never makes on purpose (5xx, dropped connections, broken streams)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.types import Receive, Scope, Send

from genedge.contract import CloudRoute, RouteHost, RouteModel, RoutingTable


@dataclass
class FakeOrchestrator:
    table: RoutingTable | None = None
    down: bool = False
    batches: list[dict[str, Any]] = field(default_factory=list)
    polls: int = 0

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/routing")
        async def routing() -> Response:
            self.polls += 1
            if self.down or self.table is None:
                return Response(status_code=503)
            return Response(self.table.model_dump_json(), media_type="application/json")

        @app.post("/v1/arrivals", status_code=202)
        async def arrivals(request: Request) -> Response:
            if self.down:
                return Response(status_code=503)
            self.batches.append(json.loads(await request.body()))
            return Response(status_code=202)

        return app

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.batches:
            for m, n in b["counts"].items():
                out[m] = out.get(m, 0) + n
        return out


def table(
    models: list[RouteModel], cloud: list[CloudRoute] | None = None, wan_rtt_s: float = 0.05
) -> RoutingTable:
    return RoutingTable(
        generated_at=0.0, wan_rtt_s=wan_rtt_s, models=models, cloud=cloud or [], algorithm="test"
    )


def host(
    name: str,
    url: str,
    level: str,
    *,
    planned: bool = True,
    in_pool: bool = False,
    preload_s: float | None = 0.01,
    infer_s: float | None = 0.01,
    queued: int = 0,
    state: str = "ready",
) -> RouteHost:
    return RouteHost(
        host=name,
        url=url,
        level=level,
        state=state,
        in_pool=in_pool,
        planned=planned,
        preload_s=preload_s,
        infer_s=infer_s,
        queued=queued,
    )


@dataclass
class ScriptedBackend:
    """An OpenAI-style backend answering by `mode`:

    - `ok`: a chat completion JSON (or `chunks` as SSE events when the request streams,
      `gap_s` apart);
    - `status`: an error JSON with `status`;
    - `drop`: fails inside the app (uvicorn answers 500);
    - `break`: streams the first chunk, then drops the connection.
    """

    name: str
    mode: str = "ok"
    status: int = 500
    chunks: int = 3
    gap_s: float = 0.0
    seen: int = 0
    bodies: list[bytes] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.seen += 1
        self.bodies.append(body)
        headers = dict(scope["headers"])
        self.auth.append(headers.get(b"authorization", b"").decode() or None)
        if self.mode == "drop":
            raise ConnectionResetError("scripted drop")
        if self.mode == "status":
            err = json.dumps({"error": {"type": "scripted", "message": self.name}}).encode()
            await _start(send, self.status, b"application/json", self.name)
            await send({"type": "http.response.body", "body": err})
            return
        stream = json.loads(body or b"{}").get("stream", False)
        if not stream:
            answer = {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.name},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            await _start(send, 200, b"application/json", self.name)
            await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
            return
        await _start(send, 200, b"text/event-stream", self.name)
        for i in range(self.chunks):
            if i and self.gap_s:
                await asyncio.sleep(self.gap_s)
            event = {"choices": [{"index": 0, "delta": {"content": f"tok{i} "}}]}
            data = f"data: {json.dumps(event)}\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": True})
            if self.mode == "break":
                await asyncio.sleep(0.05)
                raise ConnectionResetError("scripted break mid-stream")
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _start(send: Send, status: int, ctype: bytes, name: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"x-served-by", name.encode())],
        }
    )


@asynccontextmanager
async def dropping_server() -> AsyncIterator[str]:
    """A TCP server that reads a request and closes the connection without answering (an
    ASGI app cannot do that: uvicorn answers 500 for it)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()
