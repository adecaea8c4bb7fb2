"""App factory of the edge agent: `create_app(settings)`.

Everything the agent owns lives on `app.state.agent` (an `AgentRuntime`) and is built in the
lifespan, so several agents can run in one process (tests) and nothing leaks between them.
Tests inject a fake `loader` (and no profiler) to exercise the HTTP layer without torch work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil
from fastapi import FastAPI

from edge_agent.api.repository import router as repository_router
from edge_agent.api.routes import router
from edge_agent.api.wan import AddedDelay
from edge_agent.core.ports import ModelLoader
from edge_agent.runtime import AgentRuntime, HostInfo, ProfilerLike
from edge_agent.settings import AgentSettings
from genedge.auth import OPEN_PATHS, BearerAuth, Credentials, Role, Roles, warn_if_open
from genedge.http_errors import BodySizeLimit, install_common_handlers

if TYPE_CHECKING:
    from edge_agent.adapters.store_roots import StoreRoot

log = logging.getLogger("edge_agent")


_AGENT_ONLY: Roles = frozenset({Role.AGENT})


def access_policy(method: str, path: str) -> Roles | None:
    """Everything but health, metrics and docs needs the agent token: level changes,
    profiles, host facts and generation alike (the gateway's calls carry it too)."""
    return None if path in OPEN_PATHS else _AGENT_ONLY


def _budgets(settings: AgentSettings, device: str) -> tuple[int, int]:
    avail = psutil.virtual_memory().available
    if settings.device_budget_bytes is not None:
        device_budget = settings.device_budget_bytes
    elif device.startswith("cuda"):
        from edge_agent.adapters.device import device_total_free

        total, _ = device_total_free(device)
        device_budget = max(0, total - settings.device_reserve_bytes)
    else:
        device_budget = avail // 2
    cache_budget = (
        settings.cache_budget_bytes if settings.cache_budget_bytes is not None else avail // 4
    )
    return device_budget, cache_budget


def store_roots(settings: AgentSettings) -> list[StoreRoot]:
    """The roots the agent serves, in the order that decides a duplicate id (first wins):
    the store folder, the extra folders, then the Hugging Face caches."""
    from edge_agent.adapters.store_roots import StoreRoot

    roots = [StoreRoot(Path(p)) for p in (settings.store_dir, *settings.extra_store_dirs)]
    roots += [StoreRoot(Path(p), "hf_cache", settings.hf_revisions) for p in settings.hf_cache]
    return roots


def build_runtime(
    settings: AgentSettings,
    *,
    loader: ModelLoader | None = None,
    profiler: ProfilerLike | None = None,
    clock: Callable[[], float] = time.time,
) -> AgentRuntime:
    """Scan the store and wire the real adapters (torch, NVML) unless a loader is given."""
    from edge_agent.adapters import host as hostmod
    from edge_agent.adapters.profile_store import ProfileStore
    from edge_agent.adapters.store_roots import scan_roots

    Path(settings.store_dir).mkdir(parents=True, exist_ok=True)
    manifests, bad = scan_roots(store_roots(settings))
    for b in bad:
        log.warning("skipping model folder %s: %s", b.path, b.reason)
    nvml = hostmod.Nvml()
    versions = hostmod.library_versions()
    if loader is None:
        from edge_agent.adapters.device import resolve_device
        from edge_agent.adapters.profiler import Profiler
        from edge_agent.adapters.throughput import ThroughputBounds
        from edge_agent.adapters.torch_models import TorchModelLoader

        device = resolve_device(settings.device)
        torch_loader = TorchModelLoader(
            device, dtype=settings.dtype, reader=settings.weights_reader
        )
        loader = torch_loader
    else:
        device = loader.device
        torch_loader = None
    gpu = None
    if device.startswith("cuda"):
        gpu = nvml.gpu(int(device.split(":")[1]) if ":" in device else 0)
    fingerprint = hostmod.host_fingerprint(device, gpu)
    description = hostmod.host_description(device, gpu)
    if torch_loader is not None and profiler is None:
        profiler = Profiler(
            torch_loader,
            fingerprint=fingerprint,
            description=description,
            versions=versions,
            text_tokens=settings.profile_text_tokens,
            nvml=nvml,
            throughput=ThroughputBounds(settings.batch_limits(), settings.profile_throughput_max_s)
            if settings.profile_throughput
            else None,
        )
    device_budget, cache_budget = _budgets(settings, device)
    log.info(
        "agent %s: %d model(s), %d bad folder(s), device %s (budget %.2f GB), cache %.2f GB",
        settings.host_id,
        len(manifests),
        len(bad),
        device,
        device_budget / 1e9,
        cache_budget / 1e9,
    )
    return AgentRuntime(
        settings,
        manifests,
        bad,
        loader,
        HostInfo(
            device=device, fingerprint=fingerprint, description=description, versions=versions
        ),
        device_budget_bytes=device_budget,
        cache_budget_bytes=cache_budget,
        profiler=profiler,
        profile_store=ProfileStore(Path(settings.profiles_dir), fingerprint),
        nvml=nvml,
        clock=clock,
    )


def create_app(
    settings: AgentSettings,
    *,
    http_client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] | None = None,
    loader: ModelLoader | None = None,
    profiler: ProfilerLike | None = None,
    fetch_client: httpx.AsyncClient | None = None,
) -> FastAPI:
    """Build the agent's ASGI app. `http_client` talks to the orchestrator (tests inject one
    wired to an in-process orchestrator); `fetch_client` to the model repository."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_runtime(
            settings, loader=loader, profiler=profiler, clock=clock or time.time
        )
        app.state.agent = runtime
        client = http_client or httpx.AsyncClient(timeout=10.0)
        app.state.http = client
        await runtime.start(client, fetch_client=fetch_client)
        try:
            yield
        finally:
            await runtime.stop()
            if http_client is None:
                await client.aclose()

    app = FastAPI(
        title="genedge edge agent",
        version="0.1.0",
        lifespan=lifespan,
        description="Measures, loads, evicts and serves generative models on one host.",
    )
    install_common_handlers(app, logging.getLogger("edge_agent.api"))
    app.include_router(router)
    app.include_router(repository_router)
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    if settings.wan_delay_ms > 0:
        app.add_middleware(AddedDelay, delay_ms=settings.wan_delay_ms)
    credentials = Credentials.of(agent=settings.agent_token)
    app.add_middleware(BearerAuth, credentials=credentials, policy=access_policy, service="agent")
    if credentials.open:
        warn_if_open(
            log, f"agent {settings.host_id}", settings.host, ["levels, profiles, generation"]
        )
    return app
