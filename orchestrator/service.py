"""The orchestrator: one facade over its parts, for the API routes, the metrics and the app.

- `Fleet` (fleet.py): agents register (shared token) and heartbeat with their facts, model
  statuses and profiles, kept typed in the registry (SQLite) and in memory.
- `Liveness` (liveness.py): after `missed_heartbeats` silent intervals a host is down.
- `Demand` (demand.py): per-model arrivals (gateway batches; agents' own counters while no
  gateway reports) feed an EWMA estimator with a fast surge reaction; swap-pool hits.
- `Planner` (planner.py) runs every slot and on events (host joins or goes down, rate
  surge): it builds an `Instance` from the live hosts' measured profiles and runs the
  configured algorithm; this facade stores the decision and hands it to
- `Reconciler` (reconciler.py), which sends `PUT level` commands (free before load),
  retried with backoff.
- `views` (views.py): the placement, explanation, history and routing table in the
  contract's shapes.
- `ControlsStore` (controls.py): the operator's pins and priority classes, planned with and
  sent to the agents in every acknowledgement.

Everything needed to resume is in SQLite: agents, profiles, rates, decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from genedge.contract import (
    AgentInfo,
    AgentRegistration,
    ArrivalBatch,
    Controls,
    Explanation,
    Heartbeat,
    HeartbeatAck,
    HostFacts,
    Placement,
    Priority,
    RoutingTable,
    TargetLevel,
)
from orchestrator import views
from orchestrator.adapters.agent_commands import AgentCommands
from orchestrator.adapters.registry import Registry
from orchestrator.controls import ControlsStore
from orchestrator.core.hysteresis import settle
from orchestrator.core.placement import Instance, Option, keeping
from orchestrator.core.rates import RateEstimator
from orchestrator.core.reconcile import Command
from orchestrator.demand import ArrivalResult, Demand
from orchestrator.errors import DoesNotFit, NotFound
from orchestrator.fleet import Fleet
from orchestrator.liveness import Liveness
from orchestrator.planner import (
    SURGE_TRIGGER,
    Plan,
    Planner,
    build_instance,
    solve,
    summary,
)
from orchestrator.reconciler import Reconciler
from orchestrator.settings import OrchestratorSettings

__all__ = ["ArrivalResult", "Orchestrator", "Plan"]

log = logging.getLogger("orchestrator")


class Orchestrator:
    """The parts wired together (see the module docstring); the routes, the metrics and
    the app factory use only this. Planning, storing the decision and starting its
    commands happen here, one plan at a time."""

    def __init__(
        self,
        settings: OrchestratorSettings,
        registry: Registry,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.fleet = Fleet(registry)
        self.demand = Demand(settings, registry, clock)
        self.liveness = Liveness(settings, self.fleet, clock)
        self.planner = Planner(settings)
        self.reconciler = Reconciler(self.fleet, AgentCommands(http, settings))
        self.controls = ControlsStore(settings, registry)
        self.entries = views.EntriesCache()
        self.last: Plan | None = None
        self._regret = 0.0  # what keeping the last levels has cost more so far (`settle`)
        saved = registry.last_decision()
        self.restored: Placement | None = None if saved is None else saved.placement
        self.routing_served_at: float | None = None  # a gateway last fetched the table
        self._tasks: list[asyncio.Task[None]] = []
        self._plan_lock = asyncio.Lock()

    # The demand's numbers, read by the metrics and the tests.
    @property
    def rates(self) -> RateEstimator:
        return self.demand.rates

    @property
    def arrivals_counted(self) -> Counter[str]:
        return self.demand.arrivals_counted

    @property
    def unknown_arrivals(self) -> int:
        return self.demand.unknown_arrivals

    @property
    def duplicate_batches(self) -> int:
        return self.demand.duplicate_batches

    @property
    def pending(self) -> list[Command]:
        return self.reconciler.pending

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start planning and watching liveness; known agents' windows start now."""
        self.liveness.start_window()
        self._tasks = [
            asyncio.create_task(self.planner.run(self.plan_now), name="planner"),
            asyncio.create_task(
                self.liveness.run(lambda a: self.request_replan(f"host {a} down")),
                name="liveness",
            ),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.reconciler.stop()
        self.demand.persist()

    def request_replan(self, trigger: str) -> None:
        self.planner.request(trigger)

    # ------------------------------------------------------------------ agents, arrivals
    def register(self, reg: AgentRegistration) -> None:
        known = self.fleet.register(reg, self.clock())
        log.info(
            "agent %s %sregistered at %s (%s, %d models)",
            reg.agent_id,
            "re-" if known else "",
            reg.url,
            reg.role,
            len(reg.models),
        )
        self.request_replan(f"host {reg.agent_id} joined")

    def heartbeat(self, agent_id: str, hb: Heartbeat) -> bool:
        """False when the agent is unknown or was marked down: it must register again."""
        now = self.clock()
        agent = self.fleet.heartbeat(agent_id, hb, now)
        if agent is None:
            return False
        self.demand.observe_heartbeat(agent, hb, now)
        self._check_surges()
        return True

    def arrivals(self, batch: ArrivalBatch) -> ArrivalResult:
        """Count a gateway's batch at the orchestrator's own clock, once per batch id. Names
        no agent holds go to one `_other` tally (never stored, never a metric label)."""
        result = self.demand.arrivals(batch, self.fleet.known_models(), self.clock())
        if not result.duplicate:
            self._check_surges()
        return result

    def acknowledge(self, agent_id: str, known: bool = True) -> HeartbeatAck:
        """A heartbeat's answer: whether the agent is known, its pins and all priorities."""
        return HeartbeatAck(
            ok=known,
            known=known,
            pins=self.controls.pins_of_host(agent_id) if known else {},
            priorities=self.controls.priorities() if known else {},
        )

    # ------------------------------------------------------------------ operator controls
    def set_pin(self, host: str, model: str, level: TargetLevel) -> Controls:
        """Pin `model` on `host` at least at `level`: the host must be a registered edge
        agent, the model one the fleet knows, and the pin must fit the host on its own."""
        agent = self.fleet.agent(host)
        if agent is None or agent.role != "edge":
            raise NotFound(f"no edge agent {host!r} is registered", field="host")
        if model not in self.fleet.known_models():
            raise NotFound(f"model {model!r} is on no registered agent", model=model)
        self._check_pin_fits(host, agent.facts, model, level)
        self.controls.set_pin(host, model, level)
        self.request_replan(f"pin {model}@{host}")
        return self.controls.view()

    def _check_pin_fits(self, host: str, facts: HostFacts, model: str, level: TargetLevel) -> None:
        statuses = [m for a in self.fleet.agents() for m in self.fleet.models_of(a.id)]
        size = max((m.storage_bytes for m in statuses if m.id == model), default=0)
        held = sum(m.storage_bytes for m in self.fleet.models_of(host))
        room = {
            "disk": (size, facts.disk_free_bytes + held),
            "host RAM (cached tier)": (size if level == "cached" else 0, facts.cache_budget_bytes),
            "device memory": (size if level == "resident" else 0, facts.device_budget_bytes),
        }
        for what, (need, have) in room.items():
            if need > have:
                raise DoesNotFit(
                    f"pinning {model!r} {level} on {host!r} needs {need} bytes of "
                    f"{what}; the host has {have}",
                    model=model,
                )

    def remove_pin(self, host: str, model: str) -> Controls:
        if not self.controls.remove_pin(host, model):
            where = ""
            if self.controls.set_by_settings(host, model):
                where = " (it is set in ORCH_PINS)"
            raise NotFound(f"no operator pin of {model!r} on {host!r}{where}", model=model)
        self.request_replan(f"unpin {model}@{host}")
        return self.controls.view()

    def set_priority(self, model: str, priority: Priority) -> Controls:
        if model not in self.fleet.known_models():
            raise NotFound(f"model {model!r} is on no registered agent", model=model)
        self.controls.set_priority(model, priority)
        self.request_replan(f"priority of {model}")
        return self.controls.view()

    def reset_priority(self, model: str) -> Controls:
        if not self.controls.reset_priority(model):
            raise NotFound(f"no priority of {model!r} was set over the API", model=model)
        self.request_replan(f"priority of {model}")
        return self.controls.view()

    def _check_surges(self) -> None:
        surged = self.demand.surges()
        if surged:
            self.request_replan(f"{SURGE_TRIGGER} {', '.join(surged)}")

    def known_models(self) -> set[str]:
        """Every model some registered agent (up or down) holds: the only names whose rates
        are kept, planned and exported."""
        return self.fleet.known_models()

    def agents(self) -> list[AgentInfo]:
        """Every registered agent with its facts and model statuses; built from typed data,
        so not validated again."""
        return [
            AgentInfo.model_construct(
                id=a.id,
                url=a.url,
                role=a.role,
                status=a.status,
                registered_at=a.registered_at,
                last_heartbeat=a.last_heartbeat,
                facts=a.facts,
                models=self.fleet.models_of(a.id),
            )
            for a in self.fleet.agents()
        ]

    # ------------------------------------------------------------------ planning
    def build_instance(
        self, rates: Mapping[str, float] | None = None
    ) -> tuple[Instance, dict[str, str]]:
        """The decision problem for the next slot (at the estimated rates unless given)."""
        rates = self.demand.rates.rates() if rates is None else rates
        return build_instance(self.settings, self.fleet, rates, self.demand.pool, self.controls)

    async def _plan(
        self,
        trigger: str,
        rates: Mapping[str, float] | None,
        algorithm: str | None,
        keep: Mapping[tuple[str, str], str] | None = None,
    ) -> Plan:
        # off the event loop (heartbeats keep being answered): the estimator, the pool
        # statistics and the registry are thread-safe, the fleet's statuses are replaced
        # whole per agent
        instance, kinds = await asyncio.to_thread(self.build_instance, rates)
        if keep:  # a mid-slot surge: add to the last decision, take nothing away
            instance = keeping(instance, keep)
        decision = await asyncio.to_thread(solve, self.settings, instance, algorithm)
        return Plan(decision, instance, self.clock(), trigger, kinds)

    async def plan_now(self, trigger: str) -> Plan:
        """Plan, store the decision (with the view's costs and whys) and start moving the
        fleet to it."""
        async with self._plan_lock:
            self.demand.roll(slot=trigger == "slot")
            keep = None
            last = self.last
            if trigger.startswith(SURGE_TRIGGER) and last is not None:
                keep = dict(last.decision.levels)
            plan = await self._plan(trigger, None, None, keep)
            if last is not None:  # switch only when it pays for the way there and back
                plan.decision, self._regret = settle(
                    plan.instance, plan.decision, last.decision.levels, self._regret
                )
            self.last = plan
            # the view's costs and whys take a while on a large fleet: off the event loop
            stored = await asyncio.to_thread(self.placement)
            self.registry.save_decision(stored, plan.computed_at)
            self.demand.persist()
            d = plan.decision
            log.info(
                "planned (%s) with %s in %.3f s: cost %.2f, %s",
                trigger,
                d.algorithm,
                d.seconds,
                d.cost.total,
                summary(d),
            )
            # every replica, serving or kept
            self.reconciler.start(dict(d.levels), self.fleet.actual_levels())
            return plan

    async def what_if(self, rates: dict[str, float] | None, algorithm: str | None) -> Placement:
        """The decision for the given rates and/or algorithm, with no side effects."""
        plan = await self._plan("what-if", rates, algorithm)
        return await asyncio.to_thread(self._placement_of, plan, keep=False)

    # ------------------------------------------------------------------ views
    def _placement_of(self, plan: Plan, *, keep: bool = True) -> Placement:
        entries = self.entries.of(plan, keep=keep)
        actual = self.fleet.actual_levels()
        return views.placement_view(plan, entries, actual, len(self.reconciler.pending))

    def placement(self) -> Placement:
        if self.last is not None:
            return self._placement_of(self.last)
        if self.restored is not None:
            return self.restored
        return Placement(algorithm=self.settings.algorithm, computed_at=None, cost=None)

    def history(self, window_s: float = 3600.0) -> dict[str, Any]:
        """The decisions of the last `window_s` seconds, oldest first (when, why, the cost by
        term, each model's rate), and when the gateways were last heard of."""
        now = self.clock()
        rows = []
        for stored in self.registry.decisions():
            if stored.at < now - window_s:
                break
            rows.append(views.history_row(stored))
        return {
            "now": now,
            "data": rows[::-1],
            "routing_served_at": self.routing_served_at,
            "gateway_arrivals_at": self.demand.gateway_seen_at,
        }

    def explain(self, model_id: str) -> Explanation:
        fractions: Mapping[Option, float] = {}
        assignment: Mapping[str, Option] = {}
        if self.last is None:
            instance, _ = self.build_instance()
        else:
            instance, assignment = self.last.instance, self.last.decision.assignment
            fractions = self.last.decision.split.get(model_id, {})
        if model_id not in {m.id for m in instance.models}:
            raise NotFound(f"model {model_id!r} is on no live host")
        return views.explanation(instance, model_id, assignment, fractions)

    def routing_table(self) -> RoutingTable:
        """Everything the gateway needs to route a request: per model the live hosts holding
        it (level, state, swap-pool occupancy, measured preload and inference, queue), the
        decision's target, and the live cloud agents."""
        self.routing_served_at = self.clock()
        targets: dict[str, views.ModelRoute] = {}
        planned_at: float | None = None
        algorithm: str | None = None
        if self.last is not None:
            # from the decision's entries (built once per decision), not its split anew:
            # the gateways fetch the table every second
            targets = views.routes_of_entries(self.entries.of(self.last))
            planned_at, algorithm = self.last.computed_at, self.last.decision.algorithm
        elif self.restored is not None:
            targets = views.routes_of_entries(self.restored.entries)
            planned_at, algorithm = self.restored.computed_at, self.restored.algorithm
        return RoutingTable(
            generated_at=self.clock(),
            planned_at=planned_at,
            algorithm=algorithm,
            wan_rtt_s=self.settings.wan_rtt_s,
            models=views.route_models(self.fleet, targets),
            cloud=views.cloud_routes(self.fleet),
        )
