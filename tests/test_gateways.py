"""Several gateways against one orchestrator: every gateway's arrivals are summed, and a
batch retried after a lost acknowledgement is counted once (issue 16, item 2)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
from starlette.types import Message, Receive, Scope, Send

from orchestrator.app import create_app as create_orchestrator
from tests.conftest import AGENT_TOKEN, GATEWAY_TOKEN, OPERATOR_TOKEN, bearer, serving
from tests.gateway_fakes import ScriptedBackend
from tests.test_gateway import backend, gateway, gw_settings
from tests.test_orchestrator_system import orch_settings, until

MODELS = ["m-a", "m-b", "m-c"]


async def _cloud_agent_holding(o: httpx.AsyncClient, url: str) -> None:
    """A cloud-role agent registered over the real protocol, so the models are known."""
    facts = dict(
        host_id="cloud-x",
        hostname="h",
        fingerprint="f",
        description="d",
        device="cpu",
        device_budget_bytes=10**9,
        device_used_bytes=0,
        ram_total_bytes=10**9,
        ram_available_bytes=10**9,
        cache_budget_bytes=10**8,
        cache_used_bytes=0,
        disk_total_bytes=10**10,
        disk_free_bytes=10**10,
    )
    models = [
        dict(
            id=m,
            kind="text",
            format="transformers",
            architecture="LlamaForCausalLM",
            level="stored",
            state="ready",
            target_level="stored",
            progress=1.0,
        )
        for m in MODELS
    ]
    reg = {"agent_id": "cloud-x", "url": url, "role": "cloud", "facts": facts, "models": models}
    r = await o.post("/v1/agents/register", json=reg, headers=bearer(AGENT_TOKEN))
    assert r.status_code == 200, r.text


class LosesFirstAck:
    """Passes requests to the real orchestrator app, but answers the first arrivals batch
    with a 503 after the orchestrator has counted it: an acknowledgement lost on the way."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lost = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/arrivals" or self.lost:
            await self.app(scope, receive, send)
            return
        self.lost += 1
        inner: list[Message] = []

        async def swallow(msg: Message) -> None:
            inner.append(msg)

        await self.app(scope, receive, swallow)
        assert inner[0]["status"] == 202  # counted
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def test_two_gateways_under_load_are_summed_and_retries_count_once(
    tmp_path: Path,
) -> None:
    app = create_orchestrator(orch_settings(tmp_path))
    wrapper = LosesFirstAck(app)
    async with AsyncExitStack() as stack:
        o = await stack.enter_async_context(serving(wrapper, headers=bearer(OPERATOR_TOKEN)))
        orch = app.state.orchestrator
        cloud_url = await stack.enter_async_context(backend(ScriptedBackend("the-cloud")))
        await _cloud_agent_holding(o, cloud_url)
        gws = [
            await stack.enter_async_context(
                gateway(
                    gw_settings(
                        tmp_path / f"gw{i}",
                        orchestrator_url=str(o.base_url),
                        orchestrator_token=GATEWAY_TOKEN,
                        cloud_url=cloud_url,
                    )
                )
            )
            for i in range(2)
        ]

        async def tables() -> bool:
            for gw in gws:
                data = (await gw.get("/v1/models")).json()["data"]
                if {m["id"] for m in data} != set(MODELS):
                    return False
            return True

        await until(tables)
        sent: Counter[str] = Counter()
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            model = MODELS[i % 3] if i % 5 else MODELS[0]
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            async with sem:
                r = await gws[i % 2].post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            sent[model] += 1

        await asyncio.gather(*(one(i) for i in range(300)))

        async def all_counted() -> bool:
            return dict(orch.arrivals_counted) == dict(sent)

        await until(all_counted, timeout=20)
        assert wrapper.lost == 1  # one acknowledgement was lost, and the retry was not counted
        assert orch.duplicate_batches >= 1
        await asyncio.sleep(0.3)  # several more report intervals: still exactly what was sent
        assert dict(orch.arrivals_counted) == dict(sent)
        metrics = (await o.get("/metrics")).text
        for m, n in sent.items():
            assert f'genedge_orch_arrivals_total{{model="{m}"}} {float(n)}' in metrics


async def test_a_batch_sent_twice_is_counted_once(tmp_path: Path) -> None:
    app = create_orchestrator(orch_settings(tmp_path))
    async with serving(app, headers=bearer(GATEWAY_TOKEN)) as o:
        await _cloud_agent_holding(o, "http://127.0.0.1:9")
        batch = {"counts": {"m-a": 4}, "id": "batch-0001"}
        first = (await o.post("/v1/arrivals", json=batch)).json()
        again = (await o.post("/v1/arrivals", json=batch)).json()
        assert first == {"accepted": 4, "counted": 4, "other": 0, "duplicate": False}
        assert again == {"accepted": 4, "counted": 0, "other": 0, "duplicate": True}
        other = (await o.post("/v1/arrivals", json={**batch, "id": "batch-0002"})).json()
        assert other["counted"] == 4
        assert app.state.orchestrator.arrivals_counted["m-a"] == 8
        bad = await o.post("/v1/arrivals", json={**batch, "id": "has space"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "id"
        assert json.loads((await o.post("/v1/arrivals", json={"counts": {}})).text)["counted"] == 0
