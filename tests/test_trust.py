"""Issue 11, trust boundaries: every route that changes or reads the fleet refuses a missing,
unknown or wrong-role credential (the routes are read from the apps' own OpenAPI, so a new
route cannot be forgotten); arrivals are data; the contract's numbers are finite and in
range. Each defect of the issue has a test here (or in test_agent_safety.py,
test_registry_damage.py, test_cli_errors.py, test_slow_clients.py)."""

from __future__ import annotations

import json
import logging
import math
import re
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cloud_gateway.app import create_app as create_gateway
from cloud_gateway.settings import GatewaySettings
from edge_agent.app import create_app as create_agent
from genedge import contract as c
from genedge.auth import Credentials, Role, warn_if_open
from genedge.auth import bearer as parse_bearer
from orchestrator.app import create_app as create_orchestrator
from orchestrator.settings import OrchestratorSettings
from tests.conftest import (
    AGENT_TOKEN,
    GATEWAY_TOKEN,
    OPERATOR_TOKEN,
    agent_settings,
    bearer,
    serving,
)
from tests.gateway_fakes import ScriptedBackend

OPEN = {"/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json"}
GW_KEY = "a-client-key-of-the-gateway-0123"
NO_AUTH = {"authorization": ""}


def orch_settings(tmp: Path, **kw: Any) -> OrchestratorSettings:
    return OrchestratorSettings(
        db_path=tmp / "orch.sqlite",
        agent_token=AGENT_TOKEN,
        gateway_token=GATEWAY_TOKEN,
        operator_token=OPERATOR_TOKEN,
        heartbeat_interval_s=0.2,
        **kw,
    )


def operations(app: Any) -> list[tuple[str, str]]:
    """(method, concrete path) of every operation the app documents, open ones left out."""
    out = []
    for path, ops in app.openapi()["paths"].items():
        if path in OPEN:
            continue
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        out += [(m.upper(), concrete) for m in ops if m in ("get", "post", "put", "delete")]
    assert out, "no operations found"
    return out


async def refuses(client: httpx.AsyncClient, method: str, path: str, headers: dict) -> int:
    r = await client.request(method, path, headers=headers, json={})
    assert r.headers["content-type"].startswith("application/json")
    assert set(r.json()) == {"error"}, r.text
    return r.status_code


# ---------------------------------------------------------------------- the sweep


async def test_every_orchestrator_route_needs_the_right_role(tmp_path: Path) -> None:
    app = create_orchestrator(orch_settings(tmp_path))
    roles = {Role.AGENT: AGENT_TOKEN, Role.GATEWAY: GATEWAY_TOKEN, Role.OPERATOR: OPERATOR_TOKEN}
    from orchestrator.api.access import policy

    async with serving(app) as o:
        ops = operations(app)
        for method, path in ops:
            allowed = policy(method, path)
            assert allowed, f"{method} {path} is open"
            assert await refuses(o, method, path, NO_AUTH) == 401, (method, path)
            assert await refuses(o, method, path, bearer("x" * 32)) == 401, (method, path)
            for role, token in roles.items():
                r = await o.request(method, path, headers=bearer(token), json={})
                if role in allowed:
                    assert r.status_code not in (401, 403), (method, path, role, r.text)
                else:
                    assert r.status_code == 403, (method, path, role, r.text)
        # The roles the issue names: an agent token neither reads the fleet nor injects
        # arrivals; a gateway token does not register agents.
        assert policy("GET", "/v1/agents") == {Role.OPERATOR, Role.GATEWAY}
        assert policy("POST", "/v1/arrivals") == {Role.GATEWAY}
        assert policy("POST", "/v1/agents/register") == {Role.AGENT}
        assert policy("POST", "/v1/placement/plan") == {Role.OPERATOR}
        for path in OPEN - {"/redoc"}:
            assert (await o.get(path, headers=NO_AUTH)).status_code == 200, path


async def test_every_agent_route_needs_the_agent_token(store: Path, tmp_path: Path) -> None:
    settings = agent_settings(store, tmp_path, agent_token=AGENT_TOKEN)
    app = create_agent(settings)
    async with serving(app) as a:
        for method, path in operations(app):
            for headers in (NO_AUTH, bearer(GATEWAY_TOKEN), bearer("x" * 40)):
                assert await refuses(a, method, path, headers) == 401, (method, path)
        # With the token, the same calls go through (a real model, a real level change).
        ok = bearer(AGENT_TOKEN)
        r = await a.put("/v1/models/tiny-gpt2/level", json={"level": "cached"}, headers=ok)
        assert r.status_code in (200, 202), r.text
        assert (await a.get("/v1/host", headers=ok)).status_code == 200
        assert (await a.get("/healthz", headers=NO_AUTH)).status_code == 200
        assert (await a.get("/metrics", headers=NO_AUTH)).status_code == 200


async def test_every_gateway_route_needs_a_client_key(tmp_path: Path) -> None:
    import hashlib

    settings = GatewaySettings(
        state_dir=None, api_key_hashes=[hashlib.sha256(GW_KEY.encode()).hexdigest()]
    )
    app = create_gateway(settings)
    async with serving(app) as g:
        for method, path in operations(app):
            for headers in (NO_AUTH, bearer("not-a-key-0123456789")):
                assert await refuses(g, method, path, headers) == 401, (method, path)
        assert (await g.get("/v1/models", headers=bearer(GW_KEY))).status_code == 200


async def test_an_open_orchestrator_warns_beyond_loopback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("test.open")
    with caplog.at_level(logging.WARNING, "test.open"):
        warn_if_open(log, "svc", "127.0.0.1", ["reads"])
        warn_if_open(log, "svc", "::1", ["reads"])
        assert not caplog.records
        warn_if_open(log, "svc", "0.0.0.0", ["reads"])
        assert "no credentials" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, "orchestrator"):
        create_orchestrator(OrchestratorSettings(db_path=tmp_path / "o.sqlite", host="0.0.0.0"))
        assert any("no credentials" in r.getMessage() for r in caplog.records)


def test_tokens_are_long_distinct_and_compared_whole() -> None:
    with pytest.raises(ValidationError, match="at least 16"):
        OrchestratorSettings(agent_token="short")
    with pytest.raises(ValidationError, match="its own token"):
        OrchestratorSettings(agent_token=AGENT_TOKEN, operator_token=AGENT_TOKEN)
    creds = Credentials.of(agent=AGENT_TOKEN, operator=OPERATOR_TOKEN)
    assert creds.role_of(AGENT_TOKEN) is Role.AGENT
    assert creds.role_of(AGENT_TOKEN[:-1]) is None and creds.role_of(AGENT_TOKEN + "x") is None
    assert parse_bearer([(b"authorization", b"Basic abc")]) is None
    assert parse_bearer([(b"authorization", b"bearer  tok ")]) == "tok"


# ---------------------------------------------------------------------- arrivals are data


async def _registered(o: httpx.AsyncClient, agent_id: str = "edge-x") -> None:
    facts = dict(
        host_id=agent_id,
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
    model = dict(
        id="tiny-llama",
        kind="text",
        format="transformers",
        architecture="LlamaForCausalLM",
        level="stored",
        state="ready",
        target_level="stored",
        progress=1.0,
    )
    reg = {"agent_id": agent_id, "url": "http://127.0.0.1:9", "facts": facts, "models": [model]}
    r = await o.post("/v1/agents/register", json=reg, headers=bearer(AGENT_TOKEN))
    assert r.status_code == 200, r.text


async def test_arrivals_are_data_not_commands(tmp_path: Path) -> None:
    app = create_orchestrator(orch_settings(tmp_path))
    gw = bearer(GATEWAY_TOKEN)
    async with serving(app, headers=bearer(OPERATOR_TOKEN)) as o:
        orch = app.state.orchestrator
        await _registered(o)
        # Without the gateway's token nobody moves a rate (the operator's, an agent's).
        for h in (NO_AUTH, bearer(AGENT_TOKEN), bearer(OPERATOR_TOKEN)):
            r = await o.post("/v1/arrivals", json={"counts": {"tiny-llama": 400}}, headers=h)
            assert r.status_code in (401, 403)
        assert orch.rates.rate("tiny-llama") == 0.0
        # A client's time stamp is refused: the orchestrator's clock decides the slot.
        r = await o.post(
            "/v1/arrivals", json={"counts": {"tiny-llama": 1}, "at": 1e300}, headers=gw
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "at"
        slot_before = orch.rates.slot_start
        r = await o.post("/v1/arrivals", json={"counts": {"tiny-llama": 3}}, headers=gw)
        assert r.status_code == 202 and r.json() == {
            "accepted": 3,
            "counted": 3,
            "other": 0,
            "duplicate": False,
        }
        assert orch.rates.slot_start == slot_before and orch.rates.counts_in_slot() == {
            "tiny-llama": 3
        }
        # Bounded counts, bounded names.
        r = await o.post("/v1/arrivals", json={"counts": {"tiny-llama": 10**7}}, headers=gw)
        assert r.status_code == 422 and r.json()["error"]["field"] == "counts.tiny-llama"
        r = await o.post("/v1/arrivals", json={"counts": {"x" * 300: 1}}, headers=gw)
        assert r.status_code == 422 and r.json()["error"]["field"].startswith("counts")
        # Names no agent holds: one bucket, never a rate, never a metric label.
        names = {f"junk-{i}": 1 for i in range(500)}
        r = await o.post("/v1/arrivals", json={"counts": names}, headers=gw)
        assert r.status_code == 202 and r.json()["other"] == 500
        assert set(orch.rates.rates()) == {"tiny-llama"}
        metrics = (await o.get("/metrics")).text
        assert "junk-" not in metrics
        assert "genedge_orch_arrivals_other_total 500.0" in metrics
        assert metrics.count("genedge_orch_rate_rps{") == 1


async def test_a_huge_body_is_413_and_leaves_nothing_behind(tmp_path: Path) -> None:
    app = create_orchestrator(orch_settings(tmp_path, max_body_bytes=64 * 1024))
    async with serving(app) as o:
        name = "m" * (1024 * 1024)
        r = await o.post("/v1/arrivals", json={"counts": {name: 1}}, headers=bearer(GATEWAY_TOKEN))
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
    db = tmp_path / "orch.sqlite"
    assert sum(p.stat().st_size for p in tmp_path.glob("orch.sqlite*")) < 1024 * 1024, db


async def test_heartbeat_arrivals_count_only_the_agents_own_models(tmp_path: Path) -> None:
    app = create_orchestrator(orch_settings(tmp_path))
    async with serving(app, headers=bearer(AGENT_TOKEN)) as o:
        await _registered(o)
        models = (await o.get("/v1/agents", headers=bearer(OPERATOR_TOKEN))).json()["data"][0]
        hb = {"models": models["models"], "arrivals": {"tiny-llama": 2, "not-mine": 50}}
        r = await o.post("/v1/agents/edge-x/heartbeat", json=hb)
        assert r.status_code == 200 and r.json()["known"]
        assert app.state.orchestrator.rates.counts_in_slot() == {"tiny-llama": 2}


# ---------------------------------------------------------------------- clean 422s


async def test_unchecked_numbers_are_422_naming_the_field(tmp_path: Path) -> None:
    app = create_orchestrator(orch_settings(tmp_path))
    async with serving(app, headers=bearer(OPERATOR_TOKEN)) as o:
        for rate, field in (("NaN", "rates.m"), ("Infinity", "rates.m"), ("-1", "rates.m")):
            r = await o.post(
                "/v1/placement/plan",
                content=f'{{"rates": {{"m": {rate}}}}}',
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
        agent = bearer(AGENT_TOKEN)
        await _registered(o)
        base = (await o.get("/v1/agents")).json()["data"][0]
        facts = {**base["facts"], "device_budget_bytes": -5}
        r = await o.post("/v1/agents/edge-x/heartbeat", json={"facts": facts}, headers=agent)
        assert r.status_code == 422 and r.json()["error"]["field"] == "facts.device_budget_bytes"
        model = {**base["models"][0], "id": ""}
        r = await o.post("/v1/agents/edge-x/heartbeat", json={"models": [model]}, headers=agent)
        assert r.status_code == 422 and r.json()["error"]["field"] == "models.0.id"
        # Nothing of it was recorded: the plan still works on the agent's last good report.
        assert (await o.get("/v1/agents")).json()["data"][0]["facts"]["device_budget_bytes"] > 0
        r = await o.post("/v1/placement/plan", json={"rates": {"tiny-llama": 0.5}})
        assert r.status_code in (200, 503), r.text  # 503: no measured profile, not a 500
        for url in ("file:///etc/passwd", "http://user:pw@127.0.0.1:9", "http://:80", "ftp://a"):
            reg = {"agent_id": "evil", "url": url, "facts": base["facts"]}
            r = await o.post("/v1/agents/register", json=reg, headers=agent)
            assert r.status_code == 422 and r.json()["error"]["field"] == "url", url


async def test_a_seed_past_int64_is_422_and_never_retried_on_the_cloud(tmp_path: Path) -> None:
    cloud = ScriptedBackend("cloud")
    async with AsyncExitStack() as stack:
        cl = await stack.enter_async_context(serving(cloud))
        gws = GatewaySettings(state_dir=None, cloud_url=str(cl.base_url))
        g = await stack.enter_async_context(serving(create_gateway(gws)))
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 2**63}
        r = await g.post("/v1/chat/completions", json=body)
        assert r.status_code == 422 and r.json()["error"]["field"] == "seed"
        img = {"model": "m", "prompt": "p", "seed": -1}
        r = await g.post("/v1/images/generations", json=img)
        assert r.status_code == 422 and r.json()["error"]["field"] == "seed"
        assert cloud.seen == 0
        r = await g.post("/v1/chat/completions", json={**body, "seed": 2**63 - 1})
        assert r.status_code == 200 and cloud.seen == 1


# ---------------------------------------------------------------------- properties


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.one_of(finite, st.just(math.nan), st.just(math.inf), st.just(-math.inf)),
    name=st.text(max_size=300),
)
def test_plan_rates_are_finite_non_negative_and_named(rate: float, name: str) -> None:
    ok_name = bool(re.fullmatch(c.ID_PATTERN, name)) and len(name) <= c.MAX_ID_CHARS
    ok_rate = math.isfinite(rate) and 0 <= rate <= 1e9
    try:
        req = c.PlanRequest(rates={name: rate})
    except ValidationError:
        assert not (ok_name and ok_rate)
    else:
        assert ok_name and ok_rate and req.rates == {name: rate}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(min_value=-(2**70), max_value=2**70), count=st.integers(-5, 2 * 10**6))
def test_seeds_and_counts_stay_in_range(seed: int, count: int) -> None:
    try:
        c.CompletionRequest(model="m", prompt="p", seed=seed)
    except ValidationError:
        assert not 0 <= seed <= c.MAX_SEED
    else:
        assert 0 <= seed <= c.MAX_SEED
    try:
        c.ArrivalBatch(counts={"m": count})
    except ValidationError:
        assert not 0 <= count <= c.MAX_COUNT_PER_BATCH
    else:
        assert 0 <= count <= c.MAX_COUNT_PER_BATCH


@settings(max_examples=40, deadline=None)
@given(budget=st.integers(-(2**40), 2**40), gbps=st.one_of(finite, st.just(math.nan)))
def test_host_facts_are_non_negative_and_finite(budget: int, gbps: float) -> None:
    doc = dict(
        host_id="h",
        hostname="h",
        fingerprint="f",
        description="d",
        device="cpu",
        device_budget_bytes=budget,
        device_used_bytes=0,
        ram_total_bytes=1,
        ram_available_bytes=1,
        cache_budget_bytes=1,
        cache_used_bytes=0,
        disk_total_bytes=1,
        disk_free_bytes=1,
        disk_read_GBps=gbps,
    )
    try:
        c.HostFacts.model_validate_json(json.dumps(doc))
    except ValidationError:
        assert budget < 0 or not (math.isfinite(gbps) and gbps >= 0)
    else:
        assert budget >= 0 and math.isfinite(gbps) and gbps >= 0


async def test_slow_and_silent_clients_are_cut_off(tmp_path: Path) -> None:
    # The service's own limits (`genedge.limits.ServerLimits`), as `genedge orchestrator`
    # applies them: a head that is late closes the connection, a late body gets a 408.
    import asyncio

    from genedge.serving import uvicorn_options
    from orchestrator.settings import OrchestratorSettings
    from tests.conftest import serving

    s = OrchestratorSettings(
        db_path=tmp_path / "o.sqlite",
        operator_token="op-token-1234567890",
        head_timeout_s=0.4,
        body_timeout_s=0.4,
    )
    async with serving(create_orchestrator(s), options=uvicorn_options(s)) as client:
        port = client.server.servers[0].sockets[0].getsockname()[1]  # type: ignore[attr-defined]

        async def closed_after(first: bytes, trickle: bytes) -> tuple[float, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            writer.write(first)
            await writer.drain()

            async def drip() -> None:
                for b in trickle:
                    await asyncio.sleep(0.1)
                    writer.write(bytes([b]))
                    await writer.drain()

            dripping = asyncio.create_task(drip())
            try:
                data = await asyncio.wait_for(reader.read(), 5.0)
            finally:
                dripping.cancel()
                writer.close()
            return loop.time() - t0, data

        # silent: nothing sent at all
        took, data = await closed_after(b"", b"")
        assert data == b"" and took < 2.0
        # a head sent a byte every 0.1 s never completes in time
        took, data = await closed_after(b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n" * 4)
        assert data == b"" and took < 2.0
        # a body promised but sent a byte every 0.1 s: 408 with the reason
        head = (
            b"POST /v1/placement/plan HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer op-token-1234567890\r\nContent-Length: 200\r\n\r\n"
        )
        took, data = await closed_after(head, b"{" * 50)
        assert data.startswith(b"HTTP/1.1 408") and b"request_timeout" in data and took < 2.0
        # a normal client is served, twice on one connection
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200


def test_retry_after_is_whole_seconds_rounded_up_everywhere() -> None:
    from genedge.errors import retry_after_header

    assert [retry_after_header(s)["Retry-After"] for s in (0.0, 0.4, 1.0, 1.2, 2.5, 3.0)] == [
        "1",
        "1",
        "1",
        "2",
        "3",
        "3",
    ]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),  # at most 4
        ({"presence_penalty": 5}, "presence_penalty"),  # outside -2..2
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs
        ({"n": 9}, "n"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"no_such_field": 1}, "no_such_field"),
    ],
)
def test_openai_fields_not_honoured_are_refused_not_ignored(
    extra: dict[str, Any], field: str
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(ValidationError) as info:
        c.ChatCompletionRequest.model_validate(body)
    assert any(field in map(str, e["loc"]) for e in info.value.errors()), info.value


def test_openai_fields_that_ask_nothing_or_are_honoured_pass() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    ok = c.ChatCompletionRequest.model_validate(
        {
            **base,
            "max_completion_tokens": 12,  # what LangChain sends for max_tokens
            "user": "u-1",
            "stop": None,
            "presence_penalty": 0,
            "logprobs": False,
            "logit_bias": {},
            "response_format": {"type": "text"},
            "stream_options": {"include_usage": False},
            "tool_choice": "none",
        }
    )
    assert ok.max_tokens == 12
    honoured = c.ChatCompletionRequest.model_validate(
        {
            **base,
            "stop": ["\n", "END"],
            "n": 3,
            "presence_penalty": 1.0,
            "frequency_penalty": -0.5,
            "logprobs": True,
            "top_logprobs": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert honoured.stop_strings() == ("\n", "END") and honoured.logprobs_k() == 5
    with pytest.raises(ValidationError, match="differ"):
        c.ChatCompletionRequest.model_validate(
            {**base, "max_tokens": 5, "max_completion_tokens": 6}
        )
