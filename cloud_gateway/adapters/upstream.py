"""Sending one request to one backend (edge agent or cloud) with httpx, up to its first
byte: anything that goes wrong before then is a `Failure` the caller may retry elsewhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from cloud_gateway.core.routing import Target

# Statuses after which another backend may well succeed (for an edge backend): the host is
# overloaded (429), lost the model since the table was built (404), or failed (5xx).
RETRYABLE = frozenset({404, 429, 500, 502, 503, 504})


class Failure(Exception):
    """The backend failed before its first byte. `response` is set when it answered with
    a status (its body read), None for connection errors and timeouts."""

    def __init__(self, reason: str, response: Opened | None = None, connect: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.response = response
        self.connect = connect


@dataclass
class Opened:
    """A backend's answer: status and headers, and either the whole body (`body`) or the
    first chunk of a stream (`first`) with the rest still to come from `rest()`."""

    target: Target
    response: httpx.Response
    body: bytes | None = None
    first: bytes = b""
    _chunks: AsyncIterator[bytes] | None = None

    async def rest(self) -> AsyncIterator[bytes]:
        assert self._chunks is not None
        try:
            async for chunk in self._chunks:
                yield chunk
        finally:
            await self.response.aclose()

    async def aclose(self) -> None:
        await self.response.aclose()


async def open_upstream(
    http: httpx.AsyncClient,
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
    request = http.build_request("POST", url, content=body, headers=headers)
    try:
        response = await http.send(request, stream=True)
    except httpx.ConnectError as exc:
        raise Failure(f"connect: {exc}", connect=True) from exc
    except httpx.TimeoutException as exc:
        raise Failure(f"timeout: {type(exc).__name__}", connect=True) from exc
    except httpx.HTTPError as exc:
        raise Failure(f"{type(exc).__name__}: {exc}") from exc
    opened = Opened(target, response)
    try:
        if response.status_code != 200 or not stream:
            opened.body = await response.aread()
            await response.aclose()
        else:
            chunks = response.aiter_raw()
            try:
                opened.first = await anext(chunks)
            except StopAsyncIteration:
                opened.first = b""
            opened._chunks = chunks
    except httpx.HTTPError as exc:
        await response.aclose()
        raise Failure(f"before the first byte: {type(exc).__name__}: {exc}") from exc
    if response.status_code in retry_statuses:
        raise Failure(f"HTTP {response.status_code}", response=opened)
    return opened
