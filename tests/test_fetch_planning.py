"""The orchestrator plans fetches (issue 15 item 4): which (model, host) pairs a host that
can fetch is offered, with what Perf and backhaul; the commands that fetch and unplace; the
agent client that starts a fetch and follows its status; routes only to a host that holds
the model. On an in-memory registry, fake senders and a mock transport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from cloud_gateway.core.routing import Router
from genedge.contract import Heartbeat, ModelStatus, RoutingTable
from orchestrator.adapters.agent_commands import AgentCommands
from orchestrator.adapters.registry import Registry
from orchestrator.core import algorithms, placement
from orchestrator.core.rates import PoolStats
from orchestrator.core.reconcile import Command, plan_commands
from orchestrator.fleet import Fleet
from orchestrator.planner import build_instance
from orchestrator.reconciler import Reconciler
from orchestrator.settings import OrchestratorSettings
from orchestrator.views import ModelRoute, route_models
from tests.test_registry import facts, model_doc, profile

GB = 10**9
CLOUD_URL = "http://cloud:8100"


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    reg = Registry(":memory:")
    yield Fleet(reg)
    reg.close()


def settings(**kw: object) -> OrchestratorSettings:
    return OrchestratorSettings(db_path=":memory:", **kw)  # type: ignore[arg-type]


def agent(
    fleet: Fleet,
    agent_id: str,
    *models: ModelStatus,
    role: str = "edge",
    url: str | None = None,
    **fact_kw: object,
) -> None:
    """Register an agent and report its models (profiles in them are stored)."""
    f = facts(agent_id, role=role, **fact_kw)
    fleet.registry.upsert_agent(agent_id, url or f"http://{agent_id}:8100", role, f, now=1.0)
    assert fleet.heartbeat(agent_id, Heartbeat(models=list(models)), now=1.0) is not None


def held(model_id: str, level: str = "stored", size: int = 4 * GB, **kw: object) -> ModelStatus:
    return model_doc(model_id, level, storage_bytes=size, **kw)


def cloud(fleet: Fleet, *models: ModelStatus) -> None:
    agent(fleet, "cloud", *models, role="cloud", url=CLOUD_URL)


def instance(fleet: Fleet, **kw: object) -> placement.Instance:
    inst, _ = build_instance(settings(**kw), fleet, {}, PoolStats())
    return inst


# ---------------------------------------------------------------------- build_instance


def test_a_host_with_a_repository_is_offered_what_it_lacks_at_the_price_of_a_fetch(
    fleet: Fleet,
) -> None:
    cloud(fleet, held("big", size=8 * GB), held("small", size=1 * GB))
    # e1 fetches from the cloud agent (spelled with a slash and the host in capitals)
    agent(fleet, "e1", held("small", size=1 * GB), repository_url="http://CLOUD:8100/")
    agent(fleet, "e2", held("small", size=1 * GB))  # no repository: serves what it holds
    inst, kinds = build_instance(settings(), fleet, {"big": 1.0}, PoolStats())
    assert set(inst.perf) == {("small", "e1"), ("small", "e2"), ("big", "e1")}
    assert kinds["big"] == "text" and inst.model("big").storage_bytes == 8 * GB
    assert inst.current == {("small", "e1"): "stored", ("small", "e2"): "stored"}
    # not on e1's disk: a stored copy pays its fetch over the configured backhaul
    cost = placement.holding_cost(inst, "big", "e1", "stored")
    assert cost.transition == pytest.approx(8 * GB / settings().backhaul_Bps)
    assert placement.holding_cost(inst, "small", "e1", "stored").transition == 0.0


def test_the_backhaul_is_the_hosts_measured_fetch_bandwidth_else_the_setting(
    fleet: Fleet,
) -> None:
    cloud(fleet, held("big", size=8 * GB))
    agent(fleet, "e1", repository_url=CLOUD_URL, fetch_Bps=2e8)
    agent(fleet, "e2", repository_url=CLOUD_URL)  # never fetched: no measurement yet
    inst = instance(fleet, backhaul_Bps=1e9)
    assert inst.host("e1").backhaul_Bps == 2e8 and inst.host("e2").backhaul_Bps == 1e9
    cost = placement.holding_cost(inst, "big", "e1", "resident")
    assert cost.transition == pytest.approx(8 * GB / 2e8 + inst.perf[("big", "e1")].load_disk_s)


def test_a_profile_of_the_same_hardware_is_reused_else_the_estimate(fleet: Fleet) -> None:
    measured = profile("big", host_fingerprint="h200", generation_s=0.125, load_cold_s=3.0)
    cloud(fleet, held("big", size=8 * GB), held("other", size=2 * GB))
    agent(fleet, "twin", held("big", size=8 * GB, profile=measured), fingerprint="h200")
    agent(fleet, "e1", repository_url=CLOUD_URL, fingerprint="h200")  # a twin of `twin`
    agent(fleet, "e2", repository_url=CLOUD_URL, fingerprint="l4", disk_read_GBps=2.0)
    # a host that holds the model but has not measured it reuses its twin's profile too
    agent(fleet, "e3", held("big", size=8 * GB), fingerprint="h200")
    inst = instance(fleet)
    reused = inst.perf[("big", "e1")]
    assert reused.infer_s == 0.125 and reused.load_disk_s == 3.0
    assert reused.vram_bytes == max(measured.peak_bytes, measured.resident_bytes)
    assert inst.perf[("big", "e3")] == reused
    estimate = inst.perf[("big", "e2")]  # another kind of host: from size and bandwidths
    assert estimate.infer_s == 1.0 and estimate.load_disk_s == pytest.approx(8 * GB / 2e9)
    assert estimate.vram_bytes == 8 * GB
    assert inst.perf[("other", "e1")].infer_s == 1.0  # nobody measured it anywhere


def test_fetches_under_way_count_no_disk_and_a_failed_fetch_is_not_offered(
    fleet: Fleet,
) -> None:
    cloud(fleet, held("big", size=8 * GB), held("huge", size=30 * GB))
    fetching = held("big", "absent", size=8 * GB, state="fetching", target_level="resident")
    failed = held("huge", "absent", size=30 * GB, state="failed", failed_reason="no space")
    agent(
        fleet,
        "e1",
        held("small", size=1 * GB),
        fetching,
        failed,
        repository_url=CLOUD_URL,
        disk_free_bytes=20 * GB,
    )
    inst = instance(fleet)
    assert inst.host("e1").disk_bytes == 21 * GB  # free + what it holds, not the fetch
    assert ("big", "e1") in inst.perf and ("big", "e1") not in inst.current
    assert ("huge", "e1") not in inst.perf  # retried once the reconciler cleared it


def test_which_repository_offers_what(fleet: Fleet) -> None:
    cloud(fleet, held("c-model"))
    agent(fleet, "peer", held("p-model"))  # an edge agent is a repository too
    agent(fleet, "e1", repository_url="http://peer:8100")
    agent(fleet, "e2", repository_url="http://10.0.0.9:8100")  # the cloud, by another name
    inst = instance(fleet)
    assert ("p-model", "e1") in inst.perf and ("c-model", "e1") not in inst.perf
    assert ("c-model", "e2") in inst.perf and ("p-model", "e2") not in inst.perf
    fleet.mark_down("peer")  # a repository that is down offers nothing
    assert ("p-model", "e1") not in instance(fleet).perf


def test_demand_for_a_model_no_edge_host_holds_places_it_on_a_host_that_can_fetch_it(
    fleet: Fleet,
) -> None:
    cloud(fleet, held("big", size=1 * GB, profile=profile("big", host_fingerprint="cloudy")))
    agent(fleet, "e1", repository_url=CLOUD_URL, fetch_Bps=1e9)
    inst, _ = build_instance(settings(wan_rtt_s=2.0), fleet, {"big": 0.5}, PoolStats())
    d = algorithms.solve("mlds", inst)
    assert d.assignment["big"].host == "e1"
    assert ("big", "e1") in d.levels


# ---------------------------------------------------------------------- commands


def test_commands_fetch_what_a_host_lacks_and_unplace_fetched_models() -> None:
    actual = {
        ("fetched", "e1"): "resident",  # fetched by the agent, no longer placed here
        ("mine", "e1"): "cached",  # the operator's own model, no longer placed here
        ("coming", "e2"): "absent",  # a fetch under way the decision still wants
        ("dropped", "e2"): "absent",  # a fetch under way the decision no longer wants
    }
    target = {("new", "e1"): "resident", ("coming", "e2"): "cached"}
    unplace = {("fetched", "e1"), ("dropped", "e2")}
    plan = plan_commands(target, actual, unplace)
    assert plan.frees == [
        Command("e2", "dropped", "absent", "absent"),  # cancels the fetch
        Command("e1", "fetched", "absent", "resident"),
        Command("e1", "mine", "stored", "cached"),  # never `absent`: not the agent's to reclaim
    ]
    assert plan.takes == [
        Command("e2", "coming", "cached", "absent"),  # the same command again: idempotent
        Command("e1", "new", "resident", "absent"),
    ]
    assert [c.fetches for c in plan.takes] == [True, True]
    assert not any(c.fetches for c in plan.frees)
    # without `unplace`, an `absent` pair is left alone
    assert plan_commands({}, {("x", "e1"): "absent"}).all() == []


def test_the_fleet_unplaces_fetched_models_and_fetches_but_never_user_or_pinned_ones(
    fleet: Fleet,
) -> None:
    agent(
        fleet,
        "e1",
        held("fetched", "resident", origin="fetched", placed=True),
        held("fetched-unplaced", origin="fetched", evictable=True),
        held("fetched-in-use-unplaced", origin="fetched", evictable=False),
        held("fetched-pinned", "cached", origin="fetched", pinned_level="cached", placed=True),
        held("user", "resident"),
        held("coming", "absent", state="fetching"),
    )
    assert fleet.unplaceable() == {("fetched", "e1"), ("coming", "e1")}


class SlowFetches:
    """A sender whose fetches last until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.done: list[Command] = []

    async def send(self, url: str, c: Command) -> bool:
        if c.fetches:
            await self.release.wait()
        self.done.append(c)
        return True


async def test_a_fetch_does_not_hold_up_the_hosts_other_commands(fleet: Fleet) -> None:
    agent(fleet, "e1")
    sender = SlowFetches()
    rec = Reconciler(fleet, sender)
    # the fetch sorts first (a smaller step), yet the load after it goes on meanwhile
    rec.start({("new", "e1"): "stored", ("m", "e1"): "resident"}, {("m", "e1"): "stored"})
    for _ in range(100):
        if sender.done:
            break
        await asyncio.sleep(0.01)
    assert sender.done == [Command("e1", "m", "resident", "stored")]
    assert rec.pending == [Command("e1", "new", "stored", "absent")]  # until it is there
    sender.release.set()
    for _ in range(100):
        if not rec.pending:
            break
        await asyncio.sleep(0.01)
    assert rec.pending == [] and len(sender.done) == 2
    await rec.stop()


# ---------------------------------------------------------------------- the agent client


def agent_transport(states: list[dict[str, object]]) -> tuple[httpx.MockTransport, list[str]]:
    """An agent that accepts a level command and then reports `states` in turn."""
    seen: list[str] = []
    statuses = iter(states)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            seen.append(f"PUT {json.loads(request.content)}")
            return httpx.Response(202, json=held("big", "absent", state="fetching").model_dump())
        seen.append("GET")
        doc = held("big", target_level="resident", **next(statuses))  # type: ignore[arg-type]
        return httpx.Response(200, json=doc.model_dump(mode="json"))

    return httpx.MockTransport(handle), seen


async def test_a_fetch_is_started_without_waiting_and_followed_until_at_its_level() -> None:
    transport, seen = agent_transport(
        [
            {"level": "absent", "state": "fetching"},
            {"level": "stored", "state": "loading"},  # profiling on arrival
            {"level": "resident", "state": "ready"},
        ]
    )
    async with httpx.AsyncClient(transport=transport) as http:
        commands = AgentCommands(http, settings())
        commands.poll_s = 0.0
        ok = await commands.send("http://e1", Command("e1", "big", "resident", "absent"))
    assert ok
    assert seen == ["PUT {'level': 'resident', 'wait': False}", "GET", "GET", "GET"]


async def test_a_failed_fetch_ends_the_command_without_retrying_it() -> None:
    transport, seen = agent_transport(
        [{"level": "absent", "state": "failed", "failed_reason": "repository refused"}]
    )
    async with httpx.AsyncClient(transport=transport) as http:
        commands = AgentCommands(http, settings())
        commands.poll_s = 0.0
        ok = await commands.send("http://e1", Command("e1", "big", "resident", "absent"))
    assert not ok and seen == ["PUT {'level': 'resident', 'wait': False}", "GET"]


# ---------------------------------------------------------------------- routes


def test_the_gateway_gets_no_edge_route_until_the_host_has_the_model_ready(
    fleet: Fleet,
) -> None:
    cloud(fleet, held("big"))
    planned = {"big": ModelRoute("e1", "resident", {"e1": 1.0}, 0.0)}

    def route_of(status: ModelStatus) -> list[str]:
        agent(fleet, "e1", status, repository_url=CLOUD_URL)
        table = RoutingTable(
            generated_at=1.0, wan_rtt_s=0.1, models=route_models(fleet, planned), cloud=[]
        )
        router = Router(cloud=None)
        router.update(table, 1.0)
        return [t.backend for t in router.candidates("big", {}, now=1.0)]

    assert route_of(held("big", "absent", state="fetching", target_level="resident")) == []
    assert route_of(held("big", "stored", state="loading", target_level="resident")) == []
    assert route_of(held("big", "resident", origin="fetched")) == ["e1"]


def test_models_on_disk_outside_the_plan_are_on_demand_where_the_planned_pool_holds_them(
    fleet: Fleet,
) -> None:
    def on_disk(m: str, vram: int, placed: bool) -> ModelStatus:
        return held(m, profile=profile(m, peak_bytes=vram, resident_bytes=vram), placed=placed)

    # e1's decision pools p (6 GB): s (3 GB) fits its pool, b (9 GB) does not; e2 has no pool
    agent(
        fleet,
        "e1",
        on_disk("p", 6 * GB, True),
        on_disk("s", 3 * GB, False),
        on_disk("b", 9 * GB, False),
    )
    agent(fleet, "e2", on_disk("s", 3 * GB, False))
    planned = {"p": ModelRoute("e1", "stored", {"e1": 1.0}, 0.0)}
    got = {(r.model, h.host): h.on_demand for r in route_models(fleet, planned) for h in r.hosts}
    assert got == {("b", "e1"): False, ("p", "e1"): False, ("s", "e1"): True, ("s", "e2"): False}
