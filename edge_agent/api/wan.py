"""An added network delay for an agent in role `cloud` run next to the others (local runs,
tests, the demo): each generation request pays `delay_ms` as a round trip, half before the
agent sees it and half before its first response byte leaves."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_GENERATION = ("/v1/chat/completions", "/v1/completions", "/v1/images/generations")


class AddedDelay:
    def __init__(self, app: ASGIApp, delay_ms: float) -> None:
        self.app = app
        self.half_s = delay_ms / 2000.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in _GENERATION:
            await self.app(scope, receive, send)
            return
        await asyncio.sleep(self.half_s)

        async def delayed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                await asyncio.sleep(self.half_s)
            await send(message)

        await self.app(scope, receive, delayed_send)
