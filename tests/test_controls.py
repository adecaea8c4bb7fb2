"""The operator's controls over REST on a real orchestrator: pins and priority classes are
validated, kept across a restart, planned with, shown in the placement and sent to each agent
in its acknowledgements."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import httpx

from genedge.contract import AgentRegistration, Heartbeat
from orchestrator.planner import SURGE_TRIGGER
from tests.conftest import AGENT_TOKEN, GATEWAY_TOKEN, bearer
from tests.test_orchestrator_system import orch_settings, serve_orchestrator
from tests.test_registry import facts, model_doc, profile

GB = 1 << 30


async def register(o: httpx.AsyncClient, host: str, *models: str, **fact_kw: object) -> None:
    reg = AgentRegistration(
        agent_id=host,
        url=f"http://127.0.0.1:9/{host}",  # nothing listens: commands fail, plans do not
        role="edge",
        facts=facts(host, **fact_kw),
        models=[
            model_doc(m, storage_bytes=2 * GB, profile=profile(m, storage_bytes=2 * GB))
            for m in models
        ],
    )
    r = await o.post(
        "/v1/agents/register", json=reg.model_dump(mode="json"), headers=bearer(AGENT_TOKEN)
    )
    assert r.status_code == 200, r.text


async def beat(o: httpx.AsyncClient, host: str, *models: str) -> dict:
    hb = Heartbeat(facts=facts(host), models=[model_doc(m, storage_bytes=2 * GB) for m in models])
    r = await o.post(
        f"/v1/agents/{host}/heartbeat",
        json=hb.model_dump(mode="json"),
        headers=bearer(AGENT_TOKEN),
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_pins_and_priorities_over_rest(tmp_path: Path) -> None:
    settings = orch_settings(
        tmp_path,
        command_retries=0,
        pins={"e2": {"m3": "cached"}},
        priorities={"m3": "low"},
    )
    async with AsyncExitStack() as stack:
        o, orch, _ = await serve_orchestrator(stack, settings)
        await register(o, "e1", "m1", "m2")
        await register(o, "e2", "m3")

        r = await o.put("/v1/pins/e1/m1", json={"level": "resident"})
        assert r.status_code == 200, r.text
        r = await o.put("/v1/priorities/m2", json={"priority": "high"})
        assert r.status_code == 200, r.text
        got = (await o.get("/v1/controls")).json()
        assert {(p["host"], p["model"], p["level"], p["source"]) for p in got["pins"]} == {
            ("e1", "m1", "resident", "operator"),
            ("e2", "m3", "cached", "settings"),
        }
        assert got["priorities"] == {"m2": "high", "m3": "low"}

        # every agent hears its own pins and everyone's priorities
        ack1, ack2 = await beat(o, "e1", "m1", "m2"), await beat(o, "e2", "m3")
        assert ack1["pins"] == {"m1": "resident"} and ack2["pins"] == {"m3": "cached"}
        assert ack1["priorities"] == {"m2": "high", "m3": "low"}

        # the decision holds the pins and the view says so, with the priorities
        await orch.plan_now("test")
        entries = {e["model"]: e for e in (await o.get("/v1/placement")).json()["entries"]}
        assert entries["m1"]["pins"] == {"e1": "resident"}
        assert entries["m1"]["levels"]["e1"] == "resident"  # no traffic, held all the same
        assert entries["m3"]["levels"]["e2"] in ("cached", "resident")
        assert entries["m2"]["priority"] == "high" and entries["m3"]["priority"] == "low"
        notes = (await o.get("/v1/placement")).json()["notes"]
        assert any("pinned:" in n for n in notes)

        # clear refusals
        bad = {
            ("/v1/pins/nowhere/m1", "resident"): 404,
            ("/v1/pins/e1/no-such-model", "resident"): 404,
            ("/v1/pins/e1/m1", "pooled"): 422,
        }
        for (path, level), status in bad.items():
            r = await o.put(path, json={"level": level})
            assert r.status_code == status, (path, r.text)
            assert r.json()["error"]["message"]
        r = await o.put("/v1/priorities/m1", json={"priority": "urgent"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "priority"
        r = await o.put("/v1/pins/e1/m1", headers=bearer(GATEWAY_TOKEN), json={"level": "stored"})
        assert r.status_code == 403

        # a settings pin stays; an operator pin goes
        r = await o.delete("/v1/pins/e2/m3")
        assert r.status_code == 404 and "ORCH_PINS" in r.json()["error"]["message"]
        assert (await o.delete("/v1/pins/e1/m1")).status_code == 200
        assert (await o.delete("/v1/pins/e1/m1")).status_code == 404
        assert (await beat(o, "e1", "m1", "m2"))["pins"] == {}
        await o.put("/v1/pins/e1/m2", json={"level": "stored"})

    # kept across a restart (the same registry file)
    async with AsyncExitStack() as stack:
        o, _, _ = await serve_orchestrator(stack, settings)
        got = (await o.get("/v1/controls")).json()
        assert ("e1", "m2", "stored") in {(p["host"], p["model"], p["level"]) for p in got["pins"]}
        assert got["priorities"] == {"m2": "high", "m3": "low"}
        assert (await o.delete("/v1/priorities/m2")).status_code == 200
        assert (await o.get("/v1/controls")).json()["priorities"] == {"m3": "low"}


async def test_a_pin_larger_than_its_host_is_refused(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        o, _, _ = await serve_orchestrator(stack, orch_settings(tmp_path, command_retries=0))
        await register(o, "small", "m1", device_budget_bytes=GB, cache_budget_bytes=GB)
        for level, what in (("resident", "device memory"), ("cached", "host RAM")):
            r = await o.put("/v1/pins/small/m1", json={"level": level})
            assert r.status_code == 409, r.text
            assert r.json()["error"]["type"] == "does_not_fit"
            assert what in r.json()["error"]["message"]
        assert (await o.put("/v1/pins/small/m1", json={"level": "stored"})).status_code == 200


async def test_a_surge_plan_keeps_every_level_of_the_last_decision(tmp_path: Path) -> None:
    # Only this test's plans: heartbeats far apart (the host, which does not beat here, must
    # not go down) and the background planner stopped (a control change requests a plan,
    # which could otherwise become the "last decision" between the two compared here).
    settings = orch_settings(tmp_path, command_retries=0, heartbeat_interval_s=30.0)
    async with AsyncExitStack() as stack:
        o, orch, _ = await serve_orchestrator(stack, settings)
        background = next(t for t in orch._tasks if t.get_name() == "planner")
        background.cancel()
        await register(o, "e1", "m1", "m2")
        assert (await o.put("/v1/pins/e1/m1", json={"level": "resident"})).status_code == 200
        first = await orch.plan_now("test")
        assert first.decision.levels[("m1", "e1")] == "resident"
        # the pin goes: a slot plan at zero rates drops m1, a surge plan holds every level
        # the last decision held
        assert (await o.delete("/v1/pins/e1/m1")).status_code == 200
        surge = await orch.plan_now(f"{SURGE_TRIGGER} m2")
        for pair, level in first.decision.levels.items():
            assert surge.instance.pins[pair] == level
            assert surge.decision.levels[pair] == level
        slot = await orch.plan_now("slot")
        assert not slot.instance.pins
        assert ("m1", "e1") not in slot.decision.levels
