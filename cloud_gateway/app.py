"""App factory of the gateway: `create_app(settings, *, http_client=None, clock=None)`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from cloud_gateway.api.routes import generation, install_error_handlers, router
from cloud_gateway.service import Gateway
from cloud_gateway.settings import GatewaySettings
from genedge.http_errors import BodySizeLimit


def upstream_client(settings: GatewaySettings) -> httpx.AsyncClient:
    """One pooled client for every backend: keep-alive connections, a short connect
    timeout (a dead host is skipped quickly) and a long one for the answer itself."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.upstream_timeout_s, connect=settings.connect_timeout_s),
        limits=httpx.Limits(
            max_connections=settings.max_upstream_connections,
            max_keepalive_connections=settings.max_upstream_connections,
        ),
    )


def create_app(
    settings: GatewaySettings,
    *,
    http_client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = http_client or upstream_client(settings)
        gw = Gateway(settings, client, clock=clock or time.time)
        app.state.gateway = gw
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()
            if http_client is None:
                await client.aclose()

    app = FastAPI(title="genedge gateway", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(generation)
    app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
