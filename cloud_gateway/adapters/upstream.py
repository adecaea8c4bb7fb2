"""Sending one request to one backend (edge agent or cloud) up to its first byte: anything
that goes wrong before then is a `Failure` the caller may retry elsewhere.

This is the gateway's hot path, so it uses aiohttp rather than httpx: on the 2-core
reference machine an httpx request to a loopback backend costs 1-2 ms of client time and
aiohttp's 0.2-0.4 ms (measured side by side, see bench/README.md), and the gateway's whole
budget is 1 ms at the median. The orchestrator link uses the same session (its module says why).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from cloud_gateway.core.routing import Target

# Statuses after which another backend may well succeed (for an edge backend): the host is
# overloaded (429), lost the model since the table was built (404), or failed (5xx).
RETRYABLE = frozenset({404, 429, 500, 502, 503, 504})

# Errors of an upstream connection, before or during a response.
UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)


def session(connect_timeout_s: float, read_timeout_s: float, limit: int) -> aiohttp.ClientSession:
    """One pooled session for every backend: keep-alive connections, a short connect
    timeout (a dead host is skipped quickly) and a long one between bytes of the answer."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=60),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_read=read_timeout_s
        ),
        auto_decompress=False,  # pass bytes through as they come
    )


class Failure(Exception):
    """The backend failed before its first byte. `status` is set when it answered with an
    HTTP status (and `opened` holds that answer), None for connection errors and timeouts."""

    def __init__(self, reason: str, opened: Opened | None = None, connect: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.opened = opened
        self.connect = connect


@dataclass
class Opened:
    """A backend's answer: status and headers, and either the whole body (`body`) or the
    first chunk of a stream (`first`) with the rest still to come from `rest()`."""

    target: Target
    response: aiohttp.ClientResponse
    body: bytes | None = None
    first: bytes = b""

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str | None:
        return self.response.headers.get(name)

    async def rest(self) -> AsyncIterator[bytes]:
        """The stream after `first`; the caller releases the response (`close`) however the
        stream ends, also when its client leaves before this is ever iterated."""
        async for chunk in self.response.content.iter_any():
            yield chunk

    def close(self) -> None:
        self.response.release()


async def open_upstream(
    http: aiohttp.ClientSession,
    target: Target,
    path: str,
    body: bytes,
    *,
    stream: bool,
    retry_statuses: frozenset[int] = RETRYABLE,
) -> Opened:
    headers = {"content-type": "application/json"}
    if target.api_key:
        headers["authorization"] = f"Bearer {target.api_key}"
    url = target.url.rstrip("/") + path
    try:
        response = await http.post(url, data=body, headers=headers)
    except aiohttp.ClientConnectorError as exc:
        raise Failure(f"connect: {exc}", connect=True) from exc
    except TimeoutError as exc:
        raise Failure("timeout before the answer", connect=True) from exc
    except UPSTREAM_ERRORS as exc:
        raise Failure(f"{type(exc).__name__}: {exc}") from exc
    opened = Opened(target, response)
    try:
        if response.status != 200 or not stream:
            opened.body = await response.read()
            response.release()
        else:
            opened.first = await response.content.readany()
    except UPSTREAM_ERRORS as exc:
        response.close()
        raise Failure(f"before the first byte: {type(exc).__name__}: {exc}") from exc
    if response.status in retry_statuses:
        raise Failure(f"HTTP {response.status}", opened=opened)
    return opened
