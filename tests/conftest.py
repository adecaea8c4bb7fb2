"""Shared fixtures: tiny real models built once per session, and agents wired in-process."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from edge_agent.app import create_app
from edge_agent.settings import AgentSettings
from tests.fixtures_models import (  # noqa: F401 - registered here once for every module
    gpt2_manifest,
    llama_manifest,
    manifest_of,
    sd_manifest,
    tiny_zoo,
)

# Credentials of the tests (each role its own, long enough for the settings' check).
AGENT_TOKEN = "test-agent-token-0123456789"
GATEWAY_TOKEN = "test-gateway-token-0123456789"
OPERATOR_TOKEN = "test-operator-token-0123456789"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_zoo(tiny_zoo: Path) -> Path:  # noqa: F811 - the fixture, by name
    """Pristine tiny models (never modified by tests; copy them into a store). The same
    session-wide build as `tiny_zoo`, so every test module shares one set."""
    return tiny_zoo


@pytest.fixture
def store(model_zoo: Path, tmp_path: Path) -> Path:
    """A fresh store per test with the three tiny models (copied: tests may break files)."""
    root = tmp_path / "store"
    shutil.copytree(model_zoo, root)
    return root


def agent_settings(store: Path, tmp: Path, **kw: object) -> AgentSettings:
    base: dict[str, object] = dict(
        host_id="edge-test",
        store_dir=store,
        profiles_dir=tmp / "profiles",
        device="cpu",
        device_budget_bytes=2 * 1024**3,
        cache_budget_bytes=1024**3,
        profile_on_start=False,
        measure_bandwidth=False,
    )
    base.update(kw)
    return AgentSettings(**base)  # type: ignore[arg-type]


async def poll_status(
    client: httpx.AsyncClient, model: str, cond: Callable[[dict], bool], timeout: float = 10.0
) -> dict:
    """Poll a model's status until `cond` holds (no fixed sleeps: CI machines are slow)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        st = (await client.get(f"/v1/models/{model}/status")).json()
        if cond(st):
            return st
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"status of {model} never matched: {st}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serving(
    app: Any,
    port: int = 0,
    headers: dict[str, str] | None = None,
    options: dict[str, Any] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """Serve `app` with a real uvicorn server on a loopback port, in the test's own event
    loop (so tests may also look at `client.app.state`). httpx's ASGI transport would buffer
    whole responses, which hides what streaming really does."""
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **(options or {})
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=60, headers=headers
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            client.server = server  # type: ignore[attr-defined]
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@asynccontextmanager
async def running_agent(
    settings: AgentSettings, **app_kw: object
) -> AsyncIterator[httpx.AsyncClient]:
    """An agent app served on a real loopback port (`settings.port`, 0 for any); the client
    carries the agent's token when it has one."""
    app = create_app(settings, **app_kw)  # type: ignore[arg-type]
    headers = bearer(settings.agent_token) if settings.agent_token else None
    async with serving(app, settings.port if settings.port != 8100 else 0, headers) as client:
        yield client
