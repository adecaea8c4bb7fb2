"""The orchestrator's running state: registry, rates, liveness, the planner and the reconciler.

- Agents register (shared token) and heartbeat with their facts, model states, request
  counts and swap-pool hits; after `missed_heartbeats` silent intervals a host is down.
- Rates: per-model arrivals (gateway batches; agents' own counters while no gateway reports)
  feed an EWMA estimator with a fast surge reaction.
- The planner runs every slot and on events (host joins or goes down, rate surge): it builds
  an `Instance` from the live hosts' measured profiles, runs the configured algorithm and
  stores the decision; the reconciler sends `PUT level` commands (free before load), retried
  with backoff. Everything needed to resume is in SQLite: agents, profiles, rates, decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from genedge.contract import (
    AgentInfo,
    AgentRegistration,
    ArrivalBatch,
    CloudRoute,
    Explanation,
    Heartbeat,
    OptionCostDoc,
    Placement,
    PlacementEntry,
    RouteHost,
    RouteModel,
    RoutingTable,
)
from orchestrator import views
from orchestrator.adapters.agent_commands import AgentCommands
from orchestrator.adapters.registry import Registry
from orchestrator.core import algorithms, describe, placement
from orchestrator.core.placement import (
    CloudSpec,
    Decision,
    HostSpec,
    Instance,
    ModelSpec,
    Option,
    Perf,
    Prices,
)
from orchestrator.core.rates import PoolStats, RateEstimator
from orchestrator.core.recent import RecentIds
from orchestrator.core.reconcile import Command, plan_commands, settled_level
from orchestrator.errors import InvalidRequest, NoHosts, NotFound
from orchestrator.settings import OrchestratorSettings

log = logging.getLogger("orchestrator")

_DEFAULT_INFER_S = 1.0


@dataclass(frozen=True)
class ArrivalResult:
    counted: int  # under a model some agent holds
    other: int  # under names no agent holds
    duplicate: bool  # the batch id was counted already: nothing counted now


@dataclass
class LastPlan:
    decision: Decision
    instance: Instance
    computed_at: float
    trigger: str
    kinds: dict[str, str] = field(default_factory=dict)


class Orchestrator:
    def __init__(
        self,
        settings: OrchestratorSettings,
        registry: Registry,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.http = http
        self.clock = clock
        snap = registry.load_state("rates")
        kw = dict(
            slot_s=settings.slot_s,
            half_life_s=settings.rate_half_life_s,
            surge_factor=settings.surge_factor,
            surge_min_count=settings.surge_min_count,
            clock=clock,
        )
        self.rates = RateEstimator.restore(snap, **kw) if snap else RateEstimator(**kw)  # type: ignore[arg-type]
        pool_snap = registry.load_state("pool")
        self.pool = PoolStats.restore(pool_snap) if pool_snap else PoolStats()
        self.last: LastPlan | None = None
        self.restored_decision: dict[str, Any] | None = None
        saved = registry.last_decision()
        if saved is not None:
            self.restored_decision = saved[2]
        self.gateway_seen_at: float | None = None
        self.routing_served_at: float | None = None  # a gateway last fetched the table
        self._profiles_seen: dict[tuple[str, str], dict[str, Any]] = {}  # as stored
        # Each agent's last model statuses as the registry holds them, parsed once (every
        # view and the routing table read them; the registry is what survives a restart).
        self._models_cache: dict[str, list[dict[str, Any]]] = {}
        self._entries_cache: tuple[LastPlan, list[PlacementEntry]] | None = None
        self.unknown_arrivals = 0  # requests for models no agent holds (the `_other` bucket)
        self.batch_ids = RecentIds()  # arrivals batches counted, so a retry counts once
        self.arrivals_counted: Counter[str] = Counter()  # per known model, since start
        self.duplicate_batches = 0
        self.pending: list[Command] = []
        self._replan = asyncio.Event()
        self._trigger = "start"
        self._tasks: list[asyncio.Task[None]] = []
        self._reconcile_task: asyncio.Task[None] | None = None
        self._plan_lock = asyncio.Lock()
        self.started_at = clock()
        self.commands = AgentCommands(http, settings)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        # Agents known from before a restart get a full liveness window from now: they
        # heartbeat a restarted orchestrator within one interval, and marking them all down
        # first would empty the placement and the gateway's routing table meanwhile.
        self.started_at = self.clock()
        self._tasks = [
            asyncio.create_task(self._planner_loop(), name="planner"),
            asyncio.create_task(self._liveness_loop(), name="liveness"),
        ]

    async def stop(self) -> None:
        for t in [*self._tasks, *([self._reconcile_task] if self._reconcile_task else [])]:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._reconcile_task is not None:
            await asyncio.gather(self._reconcile_task, return_exceptions=True)
        self._persist_rates()

    def request_replan(self, trigger: str) -> None:
        self._trigger = trigger
        self._replan.set()

    # ------------------------------------------------------------------ agents
    def register(self, reg: AgentRegistration) -> None:
        now = self.clock()
        known = self.registry.agent(reg.agent_id)
        self.registry.upsert_agent(
            reg.agent_id, reg.url, reg.role, reg.facts.model_dump(mode="json"), now
        )
        docs = [m.model_dump(mode="json") for m in reg.models]
        self.registry.heartbeat(reg.agent_id, reg.facts.model_dump(mode="json"), docs, now)
        self._models_cache[reg.agent_id] = docs
        self._store_profiles(reg.agent_id, reg.models, now)
        log.info(
            "agent %s %sregistered at %s (%s, %d models)",
            reg.agent_id,
            "re-" if known else "",
            reg.url,
            reg.role,
            len(reg.models),
        )
        self.request_replan(f"host {reg.agent_id} joined")

    def _models_of(self, agent_id: str) -> list[dict[str, Any]]:
        """An agent's last reported model statuses (read from the registry once)."""
        docs = self._models_cache.get(agent_id)
        if docs is None:
            docs = self._models_cache[agent_id] = self.registry.agent_models(agent_id)
        return docs

    def _store_profiles(self, agent_id: str, models: list[Any], now: float) -> None:
        """Store the profiles that changed since this agent last sent them (a heartbeat
        repeats every profile: rewriting them all was most of a heartbeat's cost), in one
        transaction."""
        changed = []
        for m in models:
            if m.profile is None:
                continue
            doc = m.profile.model_dump(mode="json")
            if self._profiles_seen.get((agent_id, m.id)) != doc:
                changed.append((m.id, doc))
        if changed:
            self.registry.put_profiles(agent_id, changed, now)
            for mid, doc in changed:
                self._profiles_seen[(agent_id, mid)] = doc

    def heartbeat(self, agent_id: str, hb: Heartbeat) -> bool:
        """False when the agent is unknown or was marked down: it must register again."""
        now = self.clock()
        rec = self.registry.agent(agent_id)
        if rec is None or rec.status == "down":
            return False
        facts = hb.facts.model_dump(mode="json") if hb.facts is not None else None
        docs = [m.model_dump(mode="json") for m in hb.models]
        self.registry.heartbeat(agent_id, facts, docs, now)
        self._models_cache[agent_id] = docs
        self._store_profiles(agent_id, hb.models, now)
        if not self._gateway_active(now):
            own = {m.id for m in hb.models}  # an agent counts only what it serves
            for model, n in hb.arrivals.items():
                if n and model in own:
                    self.rates.observe(model, n, now)
        for model, pc in hb.pool.items():
            if rec.role == "edge" and (pc.hits or pc.misses):
                self.pool.observe(model, agent_id, pc.hits, pc.misses)
        self._check_surges()
        return True

    def _gateway_active(self, now: float) -> bool:
        return (
            self.gateway_seen_at is not None
            and now - self.gateway_seen_at < 2 * self.settings.slot_s
        )

    def known_models(self) -> set[str]:
        """Every model some registered agent (up or down) holds: the only names whose rates
        are kept, planned and exported."""
        return {m["id"] for a in self.registry.agents() for m in self._models_of(a.id)}

    def arrivals(self, batch: ArrivalBatch) -> ArrivalResult:
        """Count a gateway's batch at the orchestrator's own clock, once per batch id. Names
        no agent holds go to one `_other` tally (never stored, never a metric label)."""
        now = self.clock()
        if batch.source == "gateway":
            self.gateway_seen_at = now
        if batch.id is not None and not self.batch_ids.first_time(batch.id, now):
            self.duplicate_batches += 1
            log.debug("arrivals batch %s counted already (a retry)", batch.id)
            return ArrivalResult(counted=0, other=0, duplicate=True)
        known = self.known_models()
        counted = other = 0
        for model, n in batch.counts.items():
            if model not in known:
                other += n
            elif n:
                self.rates.observe(model, n, now)
                self.arrivals_counted[model] += n
                counted += n
        self.unknown_arrivals += other
        self._check_surges()
        return ArrivalResult(counted=counted, other=other, duplicate=False)

    def _check_surges(self) -> None:
        surged = self.rates.check_surges()
        if surged:
            log.info("rate surge: %s", ", ".join(surged))
            self.request_replan(f"rate surge of {', '.join(surged)}")

    def agents(self) -> list[AgentInfo]:
        return [
            AgentInfo(
                id=a.id,
                url=a.url,
                role=a.role,
                status=a.status,  # type: ignore[arg-type]
                registered_at=a.registered_at,
                last_heartbeat=a.last_heartbeat,
                facts=a.facts,
                models=self._models_of(a.id),
            )
            for a in self.registry.agents()
        ]

    async def _liveness_loop(self) -> None:
        interval = self.settings.heartbeat_interval_s
        limit = interval * self.settings.missed_heartbeats
        while True:
            await asyncio.sleep(min(interval, 1.0))
            now = self.clock()
            for a in self.registry.agents():
                seen = max(a.last_heartbeat or a.registered_at, self.started_at)
                if a.status == "up" and seen < now - limit:
                    log.warning(
                        "agent %s missed %d heartbeats: marking it down",
                        a.id,
                        self.settings.missed_heartbeats,
                    )
                    self.registry.set_agent_status(a.id, "down")
                    self.request_replan(f"host {a.id} down")

    # ------------------------------------------------------------------ instance
    def _live(self, role: str) -> list[Any]:
        return [a for a in self.registry.agents() if a.status == "up" and a.role == role]

    def build_instance(
        self, rates: dict[str, float] | None = None
    ) -> tuple[Instance, dict[str, str]]:
        """The decision problem for the next slot, from live hosts and measured profiles."""
        s = self.settings
        hosts: list[HostSpec] = []
        models: dict[str, ModelSpec] = {}
        kinds: dict[str, str] = {}
        perf: dict[tuple[str, str], Perf] = {}
        current: dict[tuple[str, str], str] = {}
        for a in self._live("edge"):
            f = a.facts
            statuses = self._models_of(a.id)
            on_disk = sum(int(m.get("storage_bytes", 0)) for m in statuses)
            hosts.append(
                HostSpec(
                    id=a.id,
                    disk_bytes=int(f.get("disk_free_bytes", 0)) + on_disk,
                    ram_bytes=int(f.get("cache_budget_bytes", 0)),
                    gpu_bytes=int(f.get("device_budget_bytes", 0)),
                    rho_max=s.rho_max,
                    backhaul_Bps=s.backhaul_Bps,
                )
            )
            disk_bw = float(f.get("disk_read_GBps") or 1.0) * 1e9
            h2d_bw = float(f.get("h2d_GBps") or 5.0) * 1e9
            for m in statuses:
                mid, size = m["id"], int(m.get("storage_bytes", 0))
                models.setdefault(
                    mid, ModelSpec(id=mid, kind=m.get("kind", "text"), storage_bytes=size)
                )
                kinds[mid] = m.get("kind", "text")
                p = m.get("profile") or self.registry.profile(a.id, mid)
                if p:
                    perf[(mid, a.id)] = Perf(
                        vram_bytes=int(max(p["peak_bytes"], p["resident_bytes"])),
                        load_disk_s=float(p["load_cold_s"]),
                        load_ram_s=float(p["load_ram_s"]),
                        infer_s=float(p["generation_s"]),
                    )
                else:  # not measured yet: estimate from size and the host's bandwidths
                    perf[(mid, a.id)] = Perf(
                        vram_bytes=size,
                        load_disk_s=size / disk_bw,
                        load_ram_s=size / h2d_bw,
                        infer_s=_DEFAULT_INFER_S,
                    )
                level = settled_level(m.get("level", "stored"), int(m.get("host_ram_bytes", 0)))
                if level in ("stored", "cached", "resident"):
                    current[(mid, a.id)] = level
        if not hosts:
            raise NoHosts("no live edge agents to plan on")
        cloud_infer: dict[str, float] = {}
        for a in self._live("cloud"):
            for m in self._models_of(a.id):
                p = m.get("profile")
                if p:
                    cloud_infer[m["id"]] = float(p["generation_s"])
        rate_map = rates if rates is not None else self.rates.rates()
        instance = Instance(
            hosts=hosts,
            models=sorted(models.values(), key=lambda m: m.id),
            perf=perf,
            rates={m: float(rate_map.get(m, 0.0)) for m in models},
            slot_s=s.slot_s,
            cloud=CloudSpec(wan_rtt_s=s.wan_rtt_s, infer_s=cloud_infer),
            prices=self.prices(),
            # Only pairs of this instance: evidence about hosts now down (or the cloud
            # agent, whose pool is not planned) stays in the statistics but out of the plan.
            pool_miss={k: v for k, v in self.pool.all().items() if k in perf},
            current=current,
        )
        return instance, kinds

    def prices(self) -> Prices:
        fields = (
            "delay_weight",
            "disk_per_GB",
            "ram_per_GB",
            "vram_per_GB",
            "cloud_per_request",
            "fetch_weight",
            "load_weight",
        )
        given = {
            f: getattr(self.settings, f) for f in fields if getattr(self.settings, f) is not None
        }
        return Prices(**given)

    def _solve(self, instance: Instance, algorithm: str | None) -> Decision:
        name = algorithm or self.settings.algorithm
        if name not in algorithms.ALGORITHMS:
            raise InvalidRequest(
                f"unknown algorithm {name!r}; known: {sorted(algorithms.ALGORITHMS)}",
                field="algorithm",
            )
        return algorithms.solve(name, instance, time_limit_s=self.settings.exact_time_limit_s)

    # ------------------------------------------------------------------ planning
    async def plan_now(self, trigger: str) -> LastPlan:
        async with self._plan_lock:
            self.rates.roll()
            if trigger == "slot":
                self.pool.roll()  # age the pool-hit evidence once per slot
            # off the event loop too (heartbeats keep being answered): the estimator, the
            # pool statistics and the registry are thread-safe, the models cache is
            # replaced whole per agent
            instance, kinds = await asyncio.to_thread(self.build_instance, self.rates.rates())
            decision = await asyncio.to_thread(self._solve, instance, None)
            now = self.clock()
            self.last = LastPlan(decision, instance, now, trigger, kinds)
            # the view's costs and whys take a while on a large fleet: off the event loop
            doc = await asyncio.to_thread(lambda: self.placement().model_dump(mode="json"))
            self.registry.save_decision(doc, now)
            self._persist_rates()
            log.info(
                "planned (%s) with %s in %.3f s: cost %.2f, %s",
                trigger,
                decision.algorithm,
                decision.seconds,
                decision.cost.total,
                self._summary(decision),
            )
            self._start_reconcile()
            return self.last

    @staticmethod
    def _summary(d: Decision) -> str:
        parts = [
            f"{m}->{o.host or 'cloud'}{'/' + o.level if o.level else ''}"
            for m, o in sorted(d.assignment.items())
        ]
        return ", ".join(parts)

    def _persist_rates(self) -> None:
        self.registry.save_state("rates", self.rates.snapshot())
        self.registry.save_state("pool", self.pool.snapshot())

    async def _planner_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._replan.wait(), self.settings.slot_s)
                trigger = self._trigger
            except TimeoutError:
                trigger = "slot"
            self._replan.clear()
            try:
                await self.plan_now(trigger)
            except NoHosts:
                pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("planning failed")

    # ------------------------------------------------------------------ reconciling
    def _actual(self) -> dict[tuple[str, str], str]:
        actual: dict[tuple[str, str], str] = {}
        for a in self._live("edge"):
            for m in self._models_of(a.id):
                lvl = settled_level(m.get("level", "stored"), int(m.get("host_ram_bytes", 0)))
                actual[(m["id"], a.id)] = lvl
        return actual

    def _start_reconcile(self) -> None:
        if self._reconcile_task is not None and not self._reconcile_task.done():
            self._reconcile_task.cancel()
        assert self.last is not None
        target = dict(self.last.decision.levels)  # every replica, serving or kept
        cmds = plan_commands(target, self._actual())
        self.pending = list(cmds)  # visible at once in GET /v1/placement
        self._reconcile_task = asyncio.create_task(self._reconcile(cmds), name="reconcile")

    async def _reconcile(self, cmds: list[Command]) -> None:
        frees = [c for c in cmds if c.frees]
        takes = [c for c in cmds if not c.frees]
        # Everything that frees memory, on every host, before anything that takes it.
        for batch in (frees, takes):
            await asyncio.gather(
                *(
                    self._run_host(h, [c for c in batch if c.host == h])
                    for h in sorted({c.host for c in batch})
                )
            )

    async def _run_host(self, host: str, cmds: list[Command]) -> None:
        rec = self.registry.agent(host)
        if rec is None:
            return
        for c in cmds:
            await self.commands.send(rec.url, c)
            if c in self.pending:
                self.pending.remove(c)

    # ------------------------------------------------------------------ views
    def _placement_of(
        self, plan: LastPlan, actual: dict[tuple[str, str], str], *, cache: bool = True
    ) -> Placement:
        """The placement view: what the decision says per model (built once per decision:
        its costs and whys take a while on a large fleet; a what-if's is not kept) and the
        actual levels now."""
        d = plan.decision
        by_model: dict[str, dict[str, str]] = {}
        for (mid, h), lvl in actual.items():
            by_model.setdefault(mid, {})[h] = lvl
        entries = [
            e.model_copy(update={"actual": by_model.get(e.model, {})})
            for e in self._entries_of(plan, cache=cache)
        ]
        return Placement(
            algorithm=d.algorithm,
            computed_at=plan.computed_at,
            seconds=d.seconds,
            optimal=d.optimal,
            cost=views.terms(d.cost),
            entries=entries,
            hosts=[h.id for h in plan.instance.hosts],
            trigger=plan.trigger,
            pending_commands=len(self.pending),
        )

    def _entries_of(self, plan: LastPlan, *, cache: bool = True) -> list[PlacementEntry]:
        """What the decision says per model, built once per decision (kept unless asked
        not to: a what-if's is not)."""
        cached = self._entries_cache
        if cached is not None and cached[0] is plan:
            return cached[1]
        entries = self._decision_entries(plan)
        if cache:
            self._entries_cache = (plan, entries)
        return entries

    def _decision_entries(self, plan: LastPlan) -> list[PlacementEntry]:
        d, inst = plan.decision, plan.instance
        view = views.decision_view(inst, d)
        entries = []
        for m in inst.models:
            o = d.assignment.get(m.id, placement.CLOUD)
            if len(d.split.get(m.id, {})) > 1:
                cost = describe.split_cost(inst, d, m.id)
                why = describe.split_why(inst, d, m.id)
            else:
                cost, why = describe.option_cost(inst, d.assignment, m.id)
            entries.append(
                PlacementEntry(
                    model=m.id,
                    kind=plan.kinds.get(m.id),
                    rate_rps=inst.rates.get(m.id, 0.0),
                    target_host=o.host,
                    target_level=o.level,
                    split=view.shares.get(m.id, []),
                    levels=view.levels.get(m.id, {}),
                    cost=views.terms(cost),
                    why=why,
                )
            )
        return entries

    def placement(self) -> Placement:
        if self.last is None:
            if self.restored_decision is not None:
                return Placement.model_validate(self.restored_decision)
            return Placement(algorithm=self.settings.algorithm, computed_at=None, cost=None)
        return self._placement_of(self.last, self._actual())

    async def what_if(self, rates: dict[str, float] | None, algorithm: str | None) -> Placement:
        instance, kinds = await asyncio.to_thread(self.build_instance, rates)
        decision = await asyncio.to_thread(self._solve, instance, algorithm)
        plan = LastPlan(decision, instance, self.clock(), "what-if", kinds)
        return await asyncio.to_thread(self._placement_of, plan, self._actual(), cache=False)

    def history(self, window_s: float = 3600.0) -> dict[str, Any]:
        """The decisions of the last `window_s` seconds, oldest first (when, why, the cost by
        term, each model's rate), and when the gateways were last heard of."""
        now = self.clock()
        rows = []
        for _, at, doc in self.registry.decisions():
            if at < now - window_s:
                break
            rows.append(
                {
                    "computed_at": at,
                    "trigger": doc.get("trigger", ""),
                    "algorithm": doc.get("algorithm"),
                    "cost": doc.get("cost"),
                    "rates": {e["model"]: e.get("rate_rps", 0.0) for e in doc.get("entries", [])},
                }
            )
        return {
            "now": now,
            "data": rows[::-1],
            "routing_served_at": self.routing_served_at,
            "gateway_arrivals_at": self.gateway_seen_at,
        }

    def explain(self, model_id: str) -> Explanation:
        fractions: Mapping[Option, float] = {}
        if self.last is None:
            instance, _ = self.build_instance()
            assignment: Mapping[str, Option] = {}
        else:
            instance, assignment = self.last.instance, self.last.decision.assignment
            fractions = self.last.decision.split.get(model_id, {})
        if model_id not in {m.id for m in instance.models}:
            raise NotFound(f"model {model_id!r} is on no live host")
        options = [
            OptionCostDoc(
                host=oc.option.host,
                level=oc.option.level,
                cost=views.terms(oc.breakdown),
                feasible=oc.fits,
                chosen=oc.chosen if assignment else False,
                fraction=float(fractions.get(oc.option, 0.0)),
                note="; ".join(oc.reasons),
            )
            for oc in placement.explain(instance, model_id, assignment)
        ]
        return Explanation(
            model=model_id, rate_rps=instance.rates.get(model_id, 0.0), options=options
        )

    # ------------------------------------------------------------------ routing
    def _targets(self) -> tuple[dict[str, views.ModelRoute], float | None, str | None]:
        """The decision's route per model, from the last plan or the restored one."""
        if self.last is not None:
            # from the decision's entries (built once per decision), not its split anew:
            # the gateways fetch the table every second
            routes = views.routes_of_entries(self._entries_of(self.last))
            return routes, self.last.computed_at, self.last.decision.algorithm
        if self.restored_decision is not None:
            saved = Placement.model_validate(self.restored_decision)
            return views.routes_of_entries(saved.entries), saved.computed_at, saved.algorithm
        return {}, None, None

    def routing_table(self) -> RoutingTable:
        """Everything the gateway needs to route a request: per model the live hosts holding
        it (level, state, swap-pool occupancy, measured preload and inference, queue), the
        decision's target, and the live cloud agents."""
        self.routing_served_at = self.clock()
        targets, planned_at, algorithm = self._targets()
        models: dict[str, RouteModel] = {}
        for a in self._live("edge"):
            pool_model = a.facts.get("pool_model")
            for m in self._models_of(a.id):
                mid = m["id"]
                entry = models.get(mid)
                route = targets.get(mid)
                if entry is None:
                    entry = models[mid] = RouteModel(
                        model=mid,
                        kind=m.get("kind", "text"),
                        target_host=route.target_host if route else None,
                        target_level=route.target_level if route else None,
                        cloud_fraction=route.cloud_weight if route else None,
                    )
                level = settled_level(m.get("level", "stored"), int(m.get("host_ram_bytes", 0)))
                if level not in ("stored", "cached", "resident"):
                    continue
                p = m.get("profile") or self.registry.profile(a.id, mid) or {}
                preload = p.get("load_ram_s") if level == "cached" else p.get("load_cold_s")
                entry.hosts.append(
                    RouteHost.model_construct(  # internal data: no re-validation
                        host=a.id,
                        url=a.url,
                        level=level,
                        state=m.get("state", "ready"),
                        in_pool=pool_model == mid or m.get("level") == "pooled",
                        planned=route is not None and route.host_weights.get(a.id, 0.0) > 0,
                        fraction=min(1.0, route.host_weights.get(a.id, 0.0)) if route else 0.0,
                        preload_s=preload,
                        infer_s=p.get("generation_s"),
                        queued=int(m.get("in_flight", 0)) + int(m.get("queued", 0)),
                    )
                )
        cloud = []
        for a in self._live("cloud"):
            statuses = self._models_of(a.id)
            cloud.append(CloudRoute(id=a.id, url=a.url, models=[m["id"] for m in statuses]))
            for m in statuses:
                p = m.get("profile")
                entry = models.get(m["id"])
                if entry is None:
                    entry = models[m["id"]] = RouteModel(model=m["id"], kind=m.get("kind", "text"))
                if p and entry.cloud_infer_s is None:
                    entry.cloud_infer_s = float(p["generation_s"])
        return RoutingTable(
            generated_at=self.clock(),
            planned_at=planned_at,
            algorithm=algorithm,
            wan_rtt_s=self.settings.wan_rtt_s,
            models=sorted(models.values(), key=lambda e: e.model),
            cloud=cloud,
        )
