"""App factory of the gateway: `create_app(settings, *, http_client=None, clock=None)`."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from cloud_gateway.adapters.upstream import session
from cloud_gateway.api.generation import GenerationEndpoints, openapi_paths
from cloud_gateway.api.routes import router
from cloud_gateway.service import Gateway
from cloud_gateway.settings import GatewaySettings
from genedge.http_errors import BodySizeLimit, install_common_handlers


def create_app(
    settings: GatewaySettings,
    *,
    http_client: aiohttp.ClientSession | None = None,
    clock: Callable[[], float] | None = None,
) -> FastAPI:
    """The gateway's ASGI app. `http_client` (aiohttp, see `adapters/upstream.py` for why
    not httpx) reaches the agents, the cloud and the orchestrator; made here when None."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = http_client or session(
            settings.connect_timeout_s,
            settings.upstream_timeout_s,
            settings.max_upstream_connections,
        )
        gw = Gateway(settings, client, clock=clock or time.time)
        app.state.gateway = gw
        await gw.start()
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # GC's generations, whose full passes would otherwise show in the latency tail.
        gc.freeze()
        try:
            yield
        finally:
            await gw.stop()
            if http_client is None:
                await client.close()

    app = FastAPI(title="genedge gateway", version="0.1.0", lifespan=lifespan)
    install_common_handlers(app, logging.getLogger("cloud_gateway.api"))
    app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            paths, schemas = openapi_paths()
            schema.setdefault("paths", {}).update(paths)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Outermost last: the size limit sees every body before the generation endpoints do.
    app.add_middleware(GenerationEndpoints)
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    return app
