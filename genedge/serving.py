"""Running a service's app under uvicorn with bounds on slow or idle clients.

Every service's settings inherit `genedge.limits.ServerLimits`. uvicorn bounds an idle kept-alive
connection (`keep_alive_s`) and, with `limit_concurrency`, the connections and requests in
progress (`max_connections`; 503 past it), but it waits as long as a client likes for a
request's head, so a client sending one header byte a second (or nothing at all) holds a
connection for ever. `HeadTimeoutH11Protocol` closes a connection whose request head is not
complete `head_timeout_s` after it opened or after its previous response; the body is
bounded in time by `http_errors.BodySizeLimit` (408 past `body_timeout_s`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from genedge.limits import ServerLimits


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is late."""

    head_timeout_s = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[arg-type]
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()  # the head never came: nothing to answer

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._cancel_head_timer()  # a whole head arrived

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.SEND_BODY:
            # answered before its body was all read (408, 413): nothing more to say
            self.transport.close()
            return
        self._arm_head_timer()  # the next request's head is due in time too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)


def protocol_with(head_timeout_s: float) -> type[HeadTimeoutH11Protocol]:
    """The protocol class with this head timeout (uvicorn instantiates the class)."""
    return type("HeadTimeoutH11", (HeadTimeoutH11Protocol,), {"head_timeout_s": head_timeout_s})


def uvicorn_options(limits: ServerLimits) -> dict[str, Any]:
    """uvicorn.run / uvicorn.Config keyword arguments for these limits."""
    return {
        "http": protocol_with(limits.head_timeout_s),
        "timeout_keep_alive": limits.keep_alive_s,
        "limit_concurrency": limits.max_connections,
    }
