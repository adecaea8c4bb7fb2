"""The orchestrator's parts on their own (fleet, demand, liveness, the commands and the
reconciler), on an in-memory registry with a fake clock and a fake command sender."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest

from genedge.contract import ArrivalBatch, Heartbeat, ModelProfile, PoolCounts
from orchestrator.adapters.registry import Registry
from orchestrator.core.reconcile import Command, plan_commands
from orchestrator.demand import ArrivalResult, Demand
from orchestrator.fleet import Fleet
from orchestrator.liveness import Liveness
from orchestrator.reconciler import Reconciler
from orchestrator.settings import OrchestratorSettings
from tests.test_registry import facts, model_doc, profile


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingRegistry(Registry):
    """The real registry, counting the profile writes."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.profile_writes: list[list[str]] = []

    def put_profiles(
        self, agent_id: str, profiles: Sequence[tuple[str, ModelProfile]], now: float
    ) -> None:
        self.profile_writes.append([m for m, _ in profiles])
        super().put_profiles(agent_id, profiles, now)


@pytest.fixture
def reg() -> Iterator[CountingRegistry]:
    r = CountingRegistry()
    yield r
    r.close()


def settings(**kw: object) -> OrchestratorSettings:
    return OrchestratorSettings(db_path=":memory:", **kw)  # type: ignore[arg-type]


def edge(reg: Registry, agent_id: str, *models: str, now: float = 1.0) -> None:
    reg.upsert_agent(agent_id, f"http://{agent_id}", "edge", facts(agent_id), now=now)
    reg.heartbeat(agent_id, None, [model_doc(m) for m in models], now=now)


# ---------------------------------------------------------------------- fleet


def test_the_fleet_reads_typed_statuses_and_stores_only_changed_profiles(
    reg: CountingRegistry,
) -> None:
    fleet = Fleet(reg)
    edge(reg, "e1", "sd", "llm")
    assert [m.id for m in fleet.models_of("e1")] == ["sd", "llm"]  # from the registry
    p = profile("sd")
    hb = Heartbeat(models=[model_doc("sd", "resident", profile=p), model_doc("llm", "pooled")])
    assert fleet.heartbeat("e1", hb, now=2.0) is not None
    assert fleet.heartbeat("e1", hb, now=3.0) is not None  # the same profile again
    assert reg.profile_writes == [["sd"]]
    changed = p.model_copy(update={"generation_s": 0.3})
    fleet.heartbeat("e1", Heartbeat(models=[model_doc("sd", profile=changed)]), now=4.0)
    assert reg.profile_writes == [["sd"], ["sd"]] and reg.profile("e1", "sd") == changed
    # a status that leaves its profile out still has the stored one
    fleet.heartbeat("e1", Heartbeat(models=[model_doc("sd"), model_doc("llm", "pooled")]), 5.0)
    sd, llm = fleet.models_of("e1")
    assert fleet.profile_of("e1", sd) == changed and fleet.profile_of("e1", llm) is None
    assert fleet.actual_levels() == {("sd", "e1"): "stored", ("llm", "e1"): "stored"}
    assert fleet.known_models() == {"sd", "llm"}
    fleet.mark_down("e1")
    assert fleet.heartbeat("e1", hb, now=6.0) is None  # must register again
    assert fleet.actual_levels() == {} and fleet.known_models() == {"sd", "llm"}


# ---------------------------------------------------------------------- demand


def test_demand_counts_a_batch_once_and_keeps_unknown_names_apart(reg: Registry) -> None:
    clock = Clock()
    demand = Demand(settings(slot_s=10.0), reg, clock)
    batch = ArrivalBatch(counts={"sd": 3, "nope": 2}, source="gateway", id="batch-0001")
    assert demand.arrivals(batch, {"sd"}, clock()) == ArrivalResult(3, 2, False)
    assert demand.arrivals(batch, {"sd"}, clock()) == ArrivalResult(0, 0, True)  # a retry
    assert dict(demand.arrivals_counted) == {"sd": 3}
    assert (demand.unknown_arrivals, demand.duplicate_batches) == (2, 1)
    assert demand.rates.counts_in_slot() == {"sd": 3}


def test_an_agents_own_counts_count_only_while_no_gateway_reports(reg: Registry) -> None:
    clock = Clock()
    demand = Demand(settings(slot_s=100.0), reg, clock)
    edge(reg, "e1", "sd")
    e1 = reg.agent("e1")
    assert e1 is not None

    def hb(n: int) -> Heartbeat:
        return Heartbeat(
            models=[model_doc("sd")],
            arrivals={"sd": n, "other": 9},  # a model it does not serve is not counted
            pool={"sd": PoolCounts(hits=1, misses=1)},
        )

    demand.observe_heartbeat(e1, hb(4), clock())
    assert demand.rates.counts_in_slot() == {"sd": 4}
    assert demand.pool.miss_probability("sd", "e1") == 0.5
    demand.arrivals(ArrivalBatch(counts={}, source="gateway"), {"sd"}, clock())
    clock.now += 50.0  # within two slots of the gateway's last batch: the gateway counts
    demand.observe_heartbeat(e1, hb(7), clock())
    assert demand.rates.counts_in_slot() == {"sd": 4}
    clock.now += 151.0  # the gateway went quiet: the agents' counts count again
    demand.observe_heartbeat(e1, hb(5), clock())
    assert demand.rates.counts_in_slot() == {"sd": 5}  # in the slot open now


# ---------------------------------------------------------------------- liveness


def test_liveness_marks_down_only_agents_silent_past_the_window(reg: Registry) -> None:
    clock = Clock(100.0)
    fleet = Fleet(reg)
    edge(reg, "old", now=10.0)  # known from before the start
    edge(reg, "new", now=101.0)
    live = Liveness(settings(heartbeat_interval_s=1.0, missed_heartbeats=3), fleet, clock)
    live.start_window()
    clock.now = 102.9
    assert live.sweep() == []  # "old" has its window from the start
    clock.now = 103.5
    assert live.sweep() == ["old"]
    assert [(a.id, a.status) for a in fleet.agents()] == [("new", "up"), ("old", "down")]
    clock.now = 200.0
    assert live.sweep() == ["new"] and live.sweep() == []  # once


# ---------------------------------------------------------------------- commands


def test_commands_come_in_two_phases_frees_first_smaller_steps_first() -> None:
    actual = {
        ("a", "e2"): "resident",
        ("b", "e1"): "stored",
        ("c", "e1"): "cached",
        ("d", "e1"): "resident",
        ("e", "e2"): "absent",  # not on the host: nothing to command
        ("f", "e2"): "cached",
    }
    target = {
        ("b", "e1"): "resident",
        ("c", "e1"): "resident",
        ("d", "e1"): "resident",
        ("f", "e2"): "cached",
    }
    plan = plan_commands(target, actual)
    assert plan.frees == [Command("e2", "a", "stored", "resident")]  # not in target: stored
    assert plan.takes == [  # same target rank: by host, then model
        Command("e1", "b", "resident", "stored"),
        Command("e1", "c", "resident", "cached"),
    ]
    target[("d", "e1")] = "cached"
    plan = plan_commands(target, actual)
    assert [(c.model, c.level) for c in plan.frees] == [("a", "stored"), ("d", "cached")]
    assert plan.all() == [*plan.frees, *plan.takes] and plan.phases == (plan.frees, plan.takes)


class FakeSender:
    """Records each command; a free on `slow_host` takes a while."""

    def __init__(self, slow_host: str) -> None:
        self.slow_host = slow_host
        self.done: list[tuple[str, Command]] = []

    async def send(self, url: str, c: Command) -> bool:
        await asyncio.sleep(0.05 if c.host == self.slow_host and c.frees else 0)
        self.done.append((url, c))
        return True


async def test_the_reconciler_frees_on_every_host_before_anything_takes(reg: Registry) -> None:
    edge(reg, "e1")
    edge(reg, "e2")
    sender = FakeSender(slow_host="e1")
    rec = Reconciler(Fleet(reg), sender)
    actual = {
        ("a", "e1"): "resident",
        ("b", "e1"): "resident",
        ("c", "e2"): "stored",
        ("d", "e2"): "resident",
        ("x", "ghost"): "resident",  # a host the registry does not know: skipped
    }
    target = {("c", "e2"): "resident", ("b", "e1"): "cached", ("x", "ghost"): "stored"}
    rec.start(target, actual)
    assert len(rec.pending) == 5  # visible at once
    for _ in range(100):
        if len(sender.done) == 4:
            break
        await asyncio.sleep(0.01)
    order = [(c.host, c.model, c.level) for _, c in sender.done]
    assert order[-1] == ("e2", "c", "resident")  # the only take, after the slow frees
    assert sorted(order[:3]) == [
        ("e1", "a", "stored"),
        ("e1", "b", "cached"),
        ("e2", "d", "stored"),
    ]
    assert [m for h, m, _ in order if h == "e1"] == ["a", "b"]  # a host's own order
    assert {url for url, _ in sender.done} == {"http://e1", "http://e2"}
    assert [c.host for c in rec.pending] == ["ghost"]  # never sent
    await rec.stop()


async def test_a_new_decision_replaces_the_commands_under_way(reg: Registry) -> None:
    edge(reg, "e1")
    sender = FakeSender(slow_host="e1")
    rec = Reconciler(Fleet(reg), sender)
    rec.start({}, {("a", "e1"): "resident", ("b", "e1"): "resident"})
    await asyncio.sleep(0.01)  # the first free is under way
    rec.start({("c", "e1"): "cached"}, {("c", "e1"): "stored"})
    assert rec.pending == [Command("e1", "c", "cached", "stored")]
    await asyncio.sleep(0.1)
    assert [c.model for _, c in sender.done] == ["c"] and rec.pending == []
    await rec.stop()
