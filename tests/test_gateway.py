"""The cloud gateway: routing by placement to real agents, faults before and after the first
byte, the orchestrator going away, every bad input, keys and rate limits, arrivals."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_gateway.app import create_app
from cloud_gateway.core.limits import ArrivalCounter, RateLimiter
from cloud_gateway.core.routing import CloudBackend, Router
from cloud_gateway.settings import GatewaySettings
from genedge.contract import CloudRoute, RouteModel
from tests.conftest import (
    AGENT_TOKEN,
    GATEWAY_TOKEN,
    OPERATOR_TOKEN,
    agent_settings,
    bearer,
    free_port,
    running_agent,
    serving,
)
from tests.gateway_fakes import FakeOrchestrator, ScriptedBackend, dropping_server, host, table
from tests.test_orchestrator_system import orch_settings, until

CHAT = {"model": "tiny-gpt2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def chat(model: str = "tiny-gpt2", **kw: Any) -> dict[str, Any]:
    return {**CHAT, "model": model, **kw}


def gw_settings(tmp: Path, **kw: Any) -> GatewaySettings:
    base: dict[str, Any] = dict(
        table_refresh_s=0.05, arrivals_interval_s=0.05, state_dir=tmp / "gw", connect_timeout_s=1
    )
    base.update(kw)
    return GatewaySettings(**base)


@asynccontextmanager
async def gateway(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(settings)) as c:
        yield c


@asynccontextmanager
async def backend(b: Any) -> AsyncIterator[str]:
    async with serving(b) as c:
        yield str(c.base_url)


# ---------------------------------------------------------------------- routing policy


def test_router_prefers_resident_then_pooled_then_cloud() -> None:
    r = Router(cloud=None)
    entry = RouteModel(
        model="m",
        kind="text",
        target_host="b",
        target_level="stored",
        hosts=[
            host("a", "http://a", "resident", planned=False, queued=3),
            host("c", "http://c", "resident", planned=False, queued=0),
            host("b", "http://b", "stored", preload_s=0.02, infer_s=0.01),
            host("d", "http://d", "stored", planned=False),  # not planned, not in pool: never
        ],
    )
    r.update(table([entry], cloud=[CloudRoute(id="cl", url="http://cl", models=["m"])]), 0.0)
    got = [(t.backend, t.route) for t in r.candidates("m", {}, now=0.0)]
    assert got == [("c", "resident"), ("a", "resident"), ("b", "pooled"), ("cl", "cloud")]
    # The gateway's own in-flight count makes c the busier one.
    got = [t.backend for t in r.candidates("m", {"c": 5}, now=0.0)]
    assert got[:2] == ["a", "c"]


def test_router_pooled_only_when_it_beats_the_cloud() -> None:
    def route(preload: float, in_pool: bool = False, queued: int = 0) -> list[str]:
        r = Router(cloud=CloudBackend("cloud", "http://cloud"))
        h = host("e", "http://e", "cached", preload_s=preload, infer_s=0.1, in_pool=in_pool)
        h.queued = queued
        r.update(table([RouteModel(model="m", kind="text", hosts=[h])], wan_rtt_s=0.2), 0.0)
        return [t.route for t in r.candidates("m", {}, now=0.0)]

    assert route(preload=0.05) == ["pooled", "cloud"]  # 0.15 s < 0.2 + 0.1
    assert route(preload=2.0) == ["cloud"]  # a slow preload loses to the cloud
    assert route(preload=2.0, in_pool=True) == ["pooled", "cloud"]  # already loaded
    assert route(preload=0.05, queued=3) == ["cloud"]  # 0.05 + 0.1 x 4 > 0.3


def test_router_sends_past_a_long_resident_queue_to_the_cloud() -> None:
    r = Router(cloud=CloudBackend("cloud", "http://cloud"))
    h = host("e", "http://e", "resident", infer_s=0.1)
    r.update(table([RouteModel(model="m", kind="text", hosts=[h])], wan_rtt_s=0.2), 0.0)
    assert [t.backend for t in r.candidates("m", {"e": 1}, now=0.0)] == ["e", "cloud"]
    # 0.1 s x 4 requests ahead > 0.2 + 0.1 in the cloud: the cloud first, e as fallback.
    assert [t.backend for t in r.candidates("m", {"e": 3}, now=0.0)] == ["cloud", "e"]


def test_router_puts_failed_hosts_last_for_a_while() -> None:
    r = Router(cloud=CloudBackend("cloud", "http://cloud"), suspect_s=5.0)
    entry = RouteModel(model="m", kind="text", hosts=[host("e", "http://e", "resident")])
    r.update(table([entry]), 0.0)
    r.mark_failed("e", now=100.0)
    assert [t.backend for t in r.candidates("m", {}, now=101.0)] == ["cloud", "e"]
    assert [t.backend for t in r.candidates("m", {}, now=106.0)] == ["e", "cloud"]


def test_router_unknown_models() -> None:
    r = Router(cloud=None)
    assert r.candidates("x", {}, now=0.0) == []  # no table, no cloud
    r.update(table([], cloud=[CloudRoute(id="cl", url="http://cl", models=["m"])]), 0.0)
    assert r.candidates("x", {}, now=0.0) == []  # the cloud agent does not have it
    assert [t.backend for t in r.candidates("m", {}, now=0.0)] == ["cl"]
    ext = Router(cloud=CloudBackend("cloud", "http://c", "k"))
    assert [(t.backend, t.api_key) for t in ext.candidates("x", {}, now=0.0)] == [("cloud", "k")]


def test_rate_limiter_and_arrival_counter() -> None:
    lim = RateLimiter(rate=2.0, burst=2)
    assert lim.admit("k", 0.0) == 0 and lim.admit("k", 0.0) == 0
    wait = lim.admit("k", 0.0)
    assert wait == pytest.approx(0.5)
    assert lim.admit("other", 0.0) == 0  # per key
    assert lim.admit("k", 0.5) == 0  # a token came back
    assert RateLimiter(rate=0, burst=1).admit("k", 0.0) == 0  # 0: no limit

    c = ArrivalCounter(max_models=2)
    c.add("a")
    c.add("a")
    c.add("b")
    c.add("c")  # over the bound: dropped and counted as such
    batch = c.take()
    assert batch == {"a": 2, "b": 1} and c.pending() == 0 and c.dropped == 1
    c.add("a")
    assert c.take() == {"a": 1}


def test_settings_parse_key_hashes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    h1, h2 = hashlib.sha256(b"one").hexdigest(), hashlib.sha256(b"two").hexdigest()
    monkeypatch.setenv("GW_API_KEY_HASHES", f"{h1}, {h2.upper()}")
    assert GatewaySettings().api_key_hashes == [h1, h2]
    monkeypatch.setenv("GW_API_KEY_HASHES", "sk-plaintext-key")
    with pytest.raises(ValueError, match="sha256"):
        GatewaySettings()


# ---------------------------------------------------------------------- real agents


@pytest.fixture
def two_stores(model_zoo: Path, tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "store-edge", tmp_path / "store-cloud"
    shutil.copytree(model_zoo, a)
    shutil.copytree(model_zoo, b)
    return a, b


async def test_routes_by_placement_to_real_agents(
    two_stores: tuple[Path, Path], tmp_path: Path
) -> None:
    """Resident on the edge, pooled on the edge (paying a preload), and the cloud agent, each
    a real agent serving real tiny models; streams pass through; arrivals reach the
    orchestrator."""
    fake = FakeOrchestrator()
    async with AsyncExitStack() as stack:
        edge = await stack.enter_async_context(
            running_agent(agent_settings(two_stores[0], tmp_path / "e", host_id="edge-1"))
        )
        cloud = await stack.enter_async_context(
            running_agent(
                agent_settings(
                    two_stores[1], tmp_path / "c", host_id="cloud-1", role="cloud", wan_delay_ms=20
                )
            )
        )
        r = await edge.put("/v1/models/tiny-gpt2/level", json={"level": "resident", "wait": True})
        assert r.status_code == 200
        eu, cu = str(edge.base_url), str(cloud.base_url)
        fake.table = table(
            [
                RouteModel(
                    model="tiny-gpt2",
                    kind="text",
                    target_host="edge-1",
                    target_level="resident",
                    hosts=[host("edge-1", eu, "resident")],
                ),
                RouteModel(
                    model="tiny-llama",
                    kind="text",
                    target_host="edge-1",
                    target_level="stored",
                    hosts=[host("edge-1", eu, "stored")],
                ),
                RouteModel(
                    model="tiny-sd",
                    kind="image",
                    hosts=[host("edge-1", eu, "stored", planned=False)],
                ),
            ],
            cloud=[CloudRoute(id="cloud-1", url=cu, models=["tiny-gpt2", "tiny-llama", "tiny-sd"])],
        )
        orch = await stack.enter_async_context(serving(fake.app()))
        gw = await stack.enter_async_context(
            gateway(gw_settings(tmp_path, orchestrator_url=str(orch.base_url)))
        )

        r = await gw.post("/v1/chat/completions", json=chat())
        assert r.status_code == 200, r.text
        assert r.headers["x-served-by"] == "edge-1" and r.headers["x-route"] == "resident"
        assert r.headers["x-served-level"] == "resident"
        assert r.json()["choices"][0]["message"]["role"] == "assistant"

        r = await gw.post(
            "/v1/completions", json={"model": "tiny-llama", "prompt": "a", "max_tokens": 2}
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-route"] == "pooled" and r.headers["x-served-level"] == "pooled"
        assert float(r.headers["x-preload-ms"]) > 0  # it paid the load into the swap pool

        r = await gw.post(
            "/v1/images/generations",
            json={"model": "tiny-sd", "prompt": "a cat", "size": "32x32", "steps": 2},
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-served-by"] == "cloud" and r.headers["x-route"] == "cloud"
        assert r.json()["data"][0]["b64_json"]

        events = []
        async with gw.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as s:
            assert s.status_code == 200 and s.headers["x-served-by"] == "edge-1"
            assert s.headers["content-type"].startswith("text/event-stream")
            async for line in s.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        assert events[-1] == "[DONE]"
        assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"

        models = {m["id"]: m for m in (await gw.get("/v1/models")).json()["data"]}
        assert models["tiny-gpt2"]["served_by"] == "edge-1"
        assert models["tiny-gpt2"]["level"] == "resident"
        assert models["tiny-llama"]["level"] == "pooled"
        assert models["tiny-sd"]["served_by"] == "cloud"
        one = (await gw.get("/v1/models/tiny-gpt2")).json()
        assert one == models["tiny-gpt2"] and one["object"] == "model" and "owned_by" in one
        r = await gw.get("/v1/models/no-such-model")
        assert r.status_code == 404 and r.json()["error"]["type"] == "model_not_found"
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/images/generations"):
            r = await gw.get(path)  # a GET on a POST route: 405 with Allow, not 404
            assert r.status_code == 405 and r.headers["allow"] == "POST", path
            assert r.json()["error"]["type"] == "method_not_allowed"

        async def reported() -> bool:
            return fake.counts() == {"tiny-gpt2": 2, "tiny-llama": 1, "tiny-sd": 1}

        await until(reported)
        assert all(b["source"] == "gateway" for b in fake.batches)

        metrics = (await gw.get("/metrics")).text
        assert (
            'genedge_gw_requests_total{model="tiny-gpt2",route="resident",status="200"} 2.0'
            in metrics
        )
        assert 'route="cloud"' in metrics and "genedge_gw_upstream_seconds_bucket" in metrics
        assert (await gw.get("/readyz")).json()["status"] == "ok"


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize("failure", ["dead", "500", "429", "drop"])
async def test_edge_failure_before_first_byte_goes_to_the_cloud(
    tmp_path: Path, failure: str
) -> None:
    cloud = ScriptedBackend("the-cloud")
    edge = ScriptedBackend("edge-a", mode="status")
    edge.status = int(failure) if failure.isdigit() else 500
    fake = FakeOrchestrator()
    async with AsyncExitStack() as stack:
        cu = await stack.enter_async_context(backend(cloud))
        eu = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        if failure == "drop":
            eu = await stack.enter_async_context(dropping_server())
        elif failure != "dead":
            eu = await stack.enter_async_context(backend(edge))
        entry = RouteModel(model="m", kind="text", hosts=[host("edge-a", eu, "resident")])
        fake.table = table([entry])
        orch = await stack.enter_async_context(serving(fake.app()))
        settings = gw_settings(
            tmp_path, orchestrator_url=str(orch.base_url), cloud_url=cu, cloud_api_key="sk-cloud"
        )
        gw = await stack.enter_async_context(gateway(settings))
        for stream in (False, True):
            r = await gw.post("/v1/chat/completions", json=chat("m", stream=stream))
            assert r.status_code == 200, r.text
            assert r.headers["x-served-by"] == "cloud" and r.headers["x-route"] == "cloud"
        assert cloud.seen == 2 and cloud.auth == ["Bearer sk-cloud"] * 2
        m = (await gw.get("/metrics")).text
        assert "genedge_gw_fallbacks_total" in m and 'from_route="resident"' in m


async def test_dead_edge_is_skipped_after_its_first_failure(tmp_path: Path) -> None:
    cloud = ScriptedBackend("the-cloud")
    async with AsyncExitStack() as stack:
        cu = await stack.enter_async_context(backend(cloud))
        dead = f"http://127.0.0.1:{free_port()}"
        fake = FakeOrchestrator(
            table([RouteModel(model="m", kind="text", hosts=[host("e", dead, "resident")])])
        )
        orch = await stack.enter_async_context(serving(fake.app()))
        gw = await stack.enter_async_context(
            gateway(gw_settings(tmp_path, orchestrator_url=str(orch.base_url), cloud_url=cu))
        )
        first = await gw.post("/v1/chat/completions", json=chat("m"))
        second = await gw.post("/v1/chat/completions", json=chat("m"))
        assert first.headers["x-fallbacks"] == "1"
        assert second.status_code == 200 and "x-fallbacks" not in second.headers


async def test_every_backend_failing_is_a_clean_503(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        eu = await stack.enter_async_context(dropping_server())
        fake = FakeOrchestrator(
            table([RouteModel(model="m", kind="text", hosts=[host("edge-a", eu, "resident")])])
        )
        orch = await stack.enter_async_context(serving(fake.app()))
        gw = await stack.enter_async_context(
            gateway(gw_settings(tmp_path, orchestrator_url=str(orch.base_url)))
        )
        r = await gw.post("/v1/chat/completions", json=chat("m"))
        assert r.status_code == 503
        err = r.json()["error"]
        assert err["type"] == "no_backend" and err["details"][0]["backend"] == "edge-a"


async def test_streams_pass_chunks_as_they_come_and_breaks_are_clean(tmp_path: Path) -> None:
    slow = ScriptedBackend("edge-a", chunks=3, gap_s=0.4)
    broken = ScriptedBackend("edge-b", mode="break")
    cloud = ScriptedBackend("the-cloud")
    async with AsyncExitStack() as stack:
        au = await stack.enter_async_context(backend(slow))
        bu = await stack.enter_async_context(backend(broken))
        cu = await stack.enter_async_context(backend(cloud))
        fake = FakeOrchestrator(
            table(
                [
                    RouteModel(model="a", kind="text", hosts=[host("edge-a", au, "resident")]),
                    RouteModel(model="b", kind="text", hosts=[host("edge-b", bu, "resident")]),
                ]
            )
        )
        orch = await stack.enter_async_context(serving(fake.app()))
        gw = await stack.enter_async_context(
            gateway(gw_settings(tmp_path, orchestrator_url=str(orch.base_url), cloud_url=cu))
        )
        t0 = time.monotonic()
        arrivals: list[float] = []
        async with gw.stream("POST", "/v1/chat/completions", json=chat("a", stream=True)) as s:
            async for line in s.aiter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic() - t0)
        assert len(arrivals) == 4  # three tokens and [DONE]
        # Not buffered: the first token arrived well before the backend produced the last.
        assert arrivals[2] - arrivals[0] > 0.3  # produced 0.8 s apart; buffered would be ~0

        events = []
        async with gw.stream("POST", "/v1/chat/completions", json=chat("b", stream=True)) as s:
            assert s.status_code == 200
            async for line in s.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        assert json.loads(events[0])["choices"][0]["delta"]["content"] == "tok0 "
        assert json.loads(events[1])["error"]["type"] == "upstream_stream_broken"
        assert events[-1] == "[DONE]"
        assert cloud.seen == 0  # no silent retry after bytes went out
        assert "genedge_gw_stream_errors_total 1.0" in (await gw.get("/metrics")).text


async def test_orchestrator_down_keeps_the_last_table(tmp_path: Path) -> None:
    edge = ScriptedBackend("edge-a")
    async with AsyncExitStack() as stack:
        eu = await stack.enter_async_context(backend(edge))
        fake = FakeOrchestrator(
            table([RouteModel(model="m", kind="text", hosts=[host("edge-a", eu, "resident")])])
        )
        orch = await stack.enter_async_context(serving(fake.app()))
        settings = gw_settings(tmp_path, orchestrator_url=str(orch.base_url), table_max_age_s=0.3)
        async with gateway(settings) as gw:
            assert (await gw.post("/v1/chat/completions", json=chat("m"))).status_code == 200
            fake.down = True
            await asyncio.sleep(0.5)
            r = await gw.post("/v1/chat/completions", json=chat("m"))
            assert r.status_code == 200 and r.headers["x-served-by"] == "edge-a"
            ready = (await gw.get("/readyz")).json()
            assert ready["status"] == "degraded" and "old" in ready["detail"]
            assert (await gw.get("/v1/routing")).status_code == 200
            fake.down = False

            async def delivered() -> bool:  # counted while the orchestrator was away
                return fake.counts().get("m") == 2

            await until(delivered)
            fake.down = True
        # A restart while the orchestrator is still away routes on the table kept on disk.
        async with gateway(settings) as gw:
            r = await gw.post("/v1/chat/completions", json=chat("m"))
            assert r.status_code == 200 and r.headers["x-served-by"] == "edge-a"
            assert (await gw.get("/readyz")).json()["status"] == "degraded"


async def test_no_table_goes_to_the_cloud_or_says_why(tmp_path: Path) -> None:
    cloud = ScriptedBackend("the-cloud")
    dead = f"http://127.0.0.1:{free_port()}"
    async with (
        backend(cloud) as cu,
        gateway(gw_settings(tmp_path, orchestrator_url=dead, cloud_url=cu)) as gw,
    ):
        r = await gw.post("/v1/chat/completions", json=chat("anything"))
        assert r.status_code == 200 and r.headers["x-served-by"] == "cloud"
        assert (await gw.get("/readyz")).json()["status"] == "degraded"
        assert (await gw.get("/v1/routing")).status_code == 503
    async with gateway(gw_settings(tmp_path / "b", orchestrator_url=dead)) as gw:
        r = await gw.post("/v1/chat/completions", json=chat("anything"))
        assert r.status_code == 503 and r.json()["error"]["type"] == "no_backend"
        assert (await gw.get("/readyz")).status_code == 503


# ---------------------------------------------------------------------- access and input


async def test_bad_input_and_keys(tmp_path: Path) -> None:
    key_hash = hashlib.sha256(b"sk-good").hexdigest()
    cloud = ScriptedBackend("the-cloud")
    async with AsyncExitStack() as stack:
        cu = await stack.enter_async_context(backend(cloud))
        fake = FakeOrchestrator(
            table(
                [
                    RouteModel(model="txt", kind="text"),
                    RouteModel(model="img", kind="image"),
                ],
                cloud=[CloudRoute(id="cl", url=cu, models=["txt", "img"])],
            )
        )
        orch = await stack.enter_async_context(serving(fake.app()))
        settings = gw_settings(
            tmp_path,
            orchestrator_url=str(orch.base_url),
            api_key_hashes=[key_hash],
            max_body_bytes=2048,
        )
        gw = await stack.enter_async_context(gateway(settings))
        good = {"authorization": "Bearer sk-good"}

        async def post(body: Any, headers: dict[str, str] | None = good, path: str = "chat"):
            url = "/v1/chat/completions" if path == "chat" else "/v1/images/generations"
            if isinstance(body, bytes):
                return await gw.post(url, content=body, headers=headers)
            return await gw.post(url, json=body, headers=headers)

        r = await post(chat("txt"), headers=None)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        r = await post(chat("txt"), headers={"authorization": "Bearer sk-bad"})
        assert r.status_code == 401
        r = await post(chat("txt"), headers={"authorization": "Basic sk-good"})
        assert r.status_code == 401
        assert (await post(chat("txt"))).status_code == 200

        big = chat("txt", messages=[{"role": "user", "content": "x" * 5000}])
        r = await post(big)
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
        r = await post(chat("txt", temperature=5))
        assert r.status_code == 422 and r.json()["error"]["field"] == "temperature"
        r = await post({"model": "txt"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "messages"
        r = await post(b"{not json")
        assert r.status_code == 422
        r = await post(chat("nope"))
        assert r.status_code == 404 and r.json()["error"]["type"] == "model_not_found"
        r = await post(chat("img"))
        assert r.status_code == 400 and "images" in r.json()["error"]["message"]
        r = await post({"model": "img", "prompt": "p", "size": "abc"}, path="images")
        assert r.status_code == 422 and r.json()["error"]["field"] == "size"
        r = await post({"model": "txt", "prompt": "p"}, path="images")
        assert r.status_code == 400
        assert cloud.seen == 1  # only the valid request reached a backend
        assert (await gw.get("/healthz")).status_code == 200  # health needs no key
        assert (await gw.get("/v1/models")).status_code == 401  # the catalogue does
        assert (await gw.get("/v1/routing")).status_code == 401
        assert (await gw.get("/v1/models", headers=good)).status_code == 200
        spec = (await gw.get("/openapi.json")).json()
        body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
        ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert "messages" in spec["components"]["schemas"][ref]["properties"]


async def test_per_key_rate_limit(tmp_path: Path) -> None:
    keys = {k: hashlib.sha256(k.encode()).hexdigest() for k in ("sk-a", "sk-b")}
    cloud = ScriptedBackend("the-cloud")
    async with backend(cloud) as cu:
        settings = gw_settings(
            tmp_path,
            cloud_url=cu,
            api_key_hashes=list(keys.values()),
            rate_limit_rps=0.5,
            rate_limit_burst=2,
        )
        async with gateway(settings) as gw:
            a, b = {"authorization": "Bearer sk-a"}, {"authorization": "Bearer sk-b"}
            codes = [
                (await gw.post("/v1/chat/completions", json=chat("m"), headers=a)).status_code
                for _ in range(3)
            ]
            assert codes == [200, 200, 429]
            r = await gw.post("/v1/chat/completions", json=chat("m"), headers=a)
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "rate_limited"
            r = await gw.post("/v1/chat/completions", json=chat("m"), headers=b)
            assert r.status_code == 200  # the other key has its own bucket


# ---------------------------------------------------------------------- whole control loop


async def test_placement_follows_demand_through_the_gateway(
    two_stores: tuple[Path, Path], tmp_path: Path
) -> None:
    """Real orchestrator, edge agent, cloud agent and gateway: demand for a model arrives at
    the gateway, which serves it from the cloud and reports it; the orchestrator places the
    model on the edge; the gateway's next requests go there."""
    from orchestrator.app import create_app as create_orchestrator

    # Many missed heartbeats before "down": every server shares this test's event loop.
    # One 1-s EWMA (no slow candidate half-lives), so the rate follows within the test.
    osettings = orch_settings(
        tmp_path, slot_s=1.0, rate_half_life_s=1.0, rate_half_lives_s=[], missed_heartbeats=20
    )
    oport = free_port()
    ourl = f"http://127.0.0.1:{oport}"
    async with AsyncExitStack() as stack:
        o = await stack.enter_async_context(
            serving(create_orchestrator(osettings), oport, bearer(OPERATOR_TOKEN))
        )
        orch = o.app.state.orchestrator  # type: ignore[attr-defined]
        for store, name, role in (
            (two_stores[0], "edge-1", "edge"),
            (two_stores[1], "cloud-1", "cloud"),
        ):
            port = free_port()
            s = agent_settings(
                store,
                tmp_path / name,
                host_id=name,
                role=role,
                port=port,
                wan_delay_ms=20 if role == "cloud" else 0,
                orchestrator_url=ourl,
                agent_token=AGENT_TOKEN,
                advertise_url=f"http://127.0.0.1:{port}",
                profile_on_start=True,  # placement plans with measured times
                profile_text_tokens=2,
            )
            await stack.enter_async_context(running_agent(s))
        gw = await stack.enter_async_context(
            gateway(
                gw_settings(
                    tmp_path,
                    orchestrator_url=ourl,
                    orchestrator_token=GATEWAY_TOKEN,
                    agent_token=AGENT_TOKEN,
                )
            )
        )

        async def both_known() -> bool:
            t = (
                (await gw.get("/v1/routing")).json()
                if (await gw.get("/readyz")).status_code == 200
                else {}
            )
            return bool(t.get("cloud")) and any(m["hosts"] for m in t.get("models", []))

        await until(both_known)

        async def profiled() -> bool:
            return len((await o.get("/v1/profiles")).json()["data"]) == 6

        await until(profiled, timeout=120)
        first = await gw.post("/v1/chat/completions", json=chat())
        assert first.status_code == 200 and first.headers["x-served-by"] == "cloud"
        for _ in range(5):
            assert (await gw.post("/v1/chat/completions", json=chat())).status_code == 200

        async def rate_seen() -> bool:
            return orch.rates.rate("tiny-gpt2") > 0

        await until(rate_seen)

        async def placed_on_edge() -> bool:
            # Replan until the estimate fits the edge's compute cap (a slow CI machine
            # measures slow inference; the surge estimate then decays within a few slots).
            await orch.plan_now("test: demand at the gateway")
            entries = (await o.get("/v1/placement")).json()["entries"]
            return {e["model"]: e for e in entries}["tiny-gpt2"]["target_host"] == "edge-1"

        await until(placed_on_edge, timeout=30)

        async def served_at_edge() -> bool:
            r = await gw.post("/v1/chat/completions", json=chat())
            assert r.status_code == 200, r.text
            return r.headers["x-served-by"] == "edge-1"

        await until(served_at_edge, timeout=30)


def test_router_remembers_through_a_table_that_briefly_knows_less() -> None:
    r = Router(cloud=None, remember_s=60.0)
    entry = RouteModel(model="m", kind="text", hosts=[host("e", "http://e", "resident")])
    r.update(table([entry], cloud=[CloudRoute(id="cl", url="http://cl", models=["m"])]), 0.0)
    r.update(table([]), 10.0)  # e.g. an orchestrator that has just restarted
    assert r.entry("m") is None and r.remembered("m", now=10.0) is not None
    assert [t.backend for t in r.candidates("m", {}, now=10.0)] == ["cl"]
    r.update(table([]), 100.0)  # long gone: unknown now
    assert r.remembered("m", now=100.0) is None and r.candidates("m", {}, now=100.0) == []
