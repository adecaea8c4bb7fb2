"""App factory of the orchestrator: `create_app(settings, *, http_client=None, clock=None)`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI

from genedge.auth import BearerAuth, warn_if_open
from genedge.http_errors import BodySizeLimit, install_common_handlers
from orchestrator.adapters.registry import Registry
from orchestrator.api import access
from orchestrator.api.routes import router
from orchestrator.api.ui import router as ui_router
from orchestrator.metrics import OrchestratorMetrics
from orchestrator.service import Orchestrator
from orchestrator.settings import OrchestratorSettings

log = logging.getLogger("orchestrator")


def create_app(
    settings: OrchestratorSettings,
    *,
    http_client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if str(settings.db_path) != ":memory:":
            Path(settings.db_path).parent.mkdir(parents=True, exist_ok=True)
        registry = Registry(settings.db_path)
        client = http_client or httpx.AsyncClient(timeout=30.0)
        orch = Orchestrator(settings, registry, client, clock=clock or time.time)
        app.state.orchestrator = orch
        app.state.metrics = OrchestratorMetrics(orch)
        await orch.start()
        try:
            yield
        finally:
            await orch.stop()
            registry.close()
            if http_client is None:
                await client.aclose()

    app = FastAPI(title="genedge orchestrator", version="0.1.0", lifespan=lifespan)
    install_common_handlers(app, logging.getLogger("orchestrator.api"))
    app.include_router(router)
    app.include_router(ui_router)
    credentials = settings.credentials()
    # Outermost last: credentials are checked before any body is read.
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    app.add_middleware(
        BearerAuth, credentials=credentials, policy=access.policy, service="orchestrator"
    )
    if credentials.open:
        warn_if_open(log, "the orchestrator", settings.host, ["agents, arrivals, fleet reads"])
    return app
