"""Contract views of a decision and of the fleet: the placement (each model's split into
`Share`s, heaviest first, the levels it keeps, its cost and why), a model's explanation, the
decisions' history, and the routing table the gateways fetch.

A decision's entries take a while on a large fleet (costs and whys): `EntriesCache` builds
them once per decision, and the placement view, the stored decision and the routes all use
them. The routes come from a placement's entries, of this process's decision or, after a
restart, of the stored `Placement`: both give the same `ModelRoute`s, so the routing table
does not change across a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from genedge.contract import (
    CloudRoute,
    CostTerms,
    Explanation,
    Level,
    OptionCostDoc,
    Placement,
    PlacementEntry,
    Priority,
    RouteHost,
    RouteModel,
    Share,
)
from orchestrator.adapters.registry import StoredDecision
from orchestrator.core import describe, placement
from orchestrator.core.placement import CostBreakdown, Decision, Instance, Option
from orchestrator.fleet import PLACEABLE, Fleet, settled
from orchestrator.planner import Plan, profile_vram


def terms(c: CostBreakdown) -> CostTerms:
    return CostTerms(
        delay=c.delay,
        resource=c.resource,
        cloud=c.cloud,
        transition=c.transition,
        wait=c.wait,
        total=c.total,
    )


@dataclass(frozen=True)
class DecisionView:
    """What a decision says per model, in the contract's terms."""

    shares: dict[str, list[Share]]
    levels: dict[str, dict[str, str]]


def decision_view(instance: Instance, decision: Decision) -> DecisionView:
    """Every model's shares (fraction served, requests/s, expected wait on its host, the
    gateway's weight) and the levels kept per host."""
    loads = placement.host_loads(instance, decision.split)
    weights = placement.routing_weights(instance, decision.split)
    shares: dict[str, list[Share]] = {}
    for m, fractions in decision.split.items():
        rate = instance.rates.get(m, 0.0)
        ordered = sorted(fractions.items(), key=lambda i: (-i[1], i[0].host is None, str(i[0])))
        shares[m] = [
            Share(
                host=o.host,
                level=o.level,
                fraction=min(1.0, max(0.0, x)),
                rate_rps=rate * x,
                expected_wait_s=loads[o.host].wait_s if o.host is not None else 0.0,
                weight=min(1.0, max(0.0, weights.get(m, {}).get(o, 0.0))),
            )
            for o, x in ordered
        ]
    levels: dict[str, dict[str, str]] = {}
    for (m, e), level in decision.levels.items():
        levels.setdefault(m, {})[e] = level
    return DecisionView(shares, levels)


@dataclass(frozen=True)
class ModelRoute:
    """One model's part of the routing table: the heaviest share's host and level, the
    weight the gateway gives each host and the cloud."""

    target_host: str | None
    target_level: str | None
    host_weights: Mapping[str, float] = field(default_factory=dict)
    cloud_weight: float = 0.0


def _route(target: Option, shares: list[Share]) -> ModelRoute:
    hosts: dict[str, float] = {}
    cloud = 0.0
    for s in shares:
        w = s.fraction if s.weight is None else s.weight
        if s.host is None:
            cloud += w
        else:
            hosts[s.host] = hosts.get(s.host, 0.0) + w
    if not shares:  # a decision stored before splits: all of it to the one option
        if target.host is None:
            cloud = 1.0
        else:
            hosts[target.host] = 1.0
    return ModelRoute(target.host, target.level, hosts, min(1.0, cloud))


def routes_of_entries(entries: list[PlacementEntry]) -> dict[str, ModelRoute]:
    """The routes of a placement's entries (of this process's decision or a stored one)."""
    return {e.model: _route(Option(e.target_host, e.target_level), e.split) for e in entries}


# ---------------------------------------------------------------------- placement


def decision_entries(plan: Plan) -> list[PlacementEntry]:
    """What the decision says per model: target, split, levels kept, cost and why."""
    d, inst = plan.decision, plan.instance
    view = decision_view(inst, d)
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
                cost=terms(cost),
                why=why,
                priority=_PRIORITY_OF.get(inst.weight(m.id), Priority.NORMAL),
                pins={h: level for (mm, h), level in inst.pins.items() if mm == m.id},
            )
        )
    return entries


_PRIORITY_OF = {w: Priority(name) for name, w in placement.PRIORITY_WEIGHTS.items()}


class EntriesCache:
    """The entries of the latest decision, built once (the placement view, the stored
    decision and the routing table, fetched by every gateway every second, all read them)."""

    def __init__(self) -> None:
        self._cached: tuple[Plan, list[PlacementEntry]] | None = None

    def of(self, plan: Plan, *, keep: bool = True) -> list[PlacementEntry]:
        """`plan`'s entries; `keep=False` for a plan that is not the latest (a what-if)."""
        if self._cached is not None and self._cached[0] is plan:
            return self._cached[1]
        entries = decision_entries(plan)
        if keep:
            self._cached = (plan, entries)
        return entries


def placement_view(
    plan: Plan,
    entries: list[PlacementEntry],
    actual: Mapping[tuple[str, str], str],
    pending_commands: int,
) -> Placement:
    """The placement view: the decision's entries with each model's actual levels now."""
    d = plan.decision
    by_model: dict[str, dict[str, str]] = {}
    for (model, host), level in actual.items():
        by_model.setdefault(model, {})[host] = level
    return Placement(
        algorithm=d.algorithm,
        computed_at=plan.computed_at,
        seconds=d.seconds,
        optimal=d.optimal,
        cost=terms(d.cost),
        entries=[e.model_copy(update={"actual": by_model.get(e.model, {})}) for e in entries],
        hosts=[h.id for h in plan.instance.hosts],
        trigger=plan.trigger,
        pending_commands=pending_commands,
        notes=list(d.notes),
    )


def explanation(
    instance: Instance,
    model_id: str,
    assignment: Mapping[str, Option],
    fractions: Mapping[Option, float],
) -> Explanation:
    """Every option of one model with its cost and why it was (not) chosen; with an empty
    `assignment` (no decision yet) nothing is chosen."""
    options = [
        OptionCostDoc(
            host=oc.option.host,
            level=oc.option.level,
            cost=terms(oc.breakdown),
            feasible=oc.fits,
            chosen=oc.chosen if assignment else False,
            fraction=float(fractions.get(oc.option, 0.0)),
            note="; ".join(oc.reasons),
        )
        for oc in placement.explain(instance, model_id, assignment)
    ]
    return Explanation(model=model_id, rate_rps=instance.rates.get(model_id, 0.0), options=options)


def history_row(stored: StoredDecision) -> dict[str, Any]:
    """One decision of the history: when, why, the algorithm, the cost by term, the rates."""
    p = stored.placement
    return {
        "computed_at": stored.at,
        "trigger": p.trigger,
        "algorithm": p.algorithm,
        "cost": None if p.cost is None else p.cost.model_dump(mode="json"),
        "rates": {e.model: e.rate_rps for e in p.entries},
    }


# ---------------------------------------------------------------------- routing


def route_models(fleet: Fleet, targets: Mapping[str, ModelRoute]) -> list[RouteModel]:
    """Per model, the live edge hosts holding it (level, state, swap-pool occupancy,
    measured preload and inference, queue) with the decision's target and weights, and the
    cloud agents' measured inference; by model."""
    models: dict[str, RouteModel] = {}
    for a in fleet.live("edge"):
        pool_bytes = _planned_pool_bytes(fleet, a.id)
        for m in fleet.models_of(a.id):
            route = targets.get(m.id)
            entry = models.get(m.id)
            if entry is None:
                entry = models[m.id] = RouteModel(
                    model=m.id,
                    kind=m.kind.value,
                    target_host=route.target_host if route else None,
                    target_level=route.target_level if route else None,
                    cloud_fraction=route.cloud_weight if route else None,
                )
            level = settled(m)
            if level not in PLACEABLE:
                continue
            p = fleet.profile_of(a.id, m)
            weight = route.host_weights.get(a.id, 0.0) if route else 0.0
            entry.hosts.append(
                RouteHost.model_construct(  # internal data: no re-validation
                    host=a.id,
                    url=a.url,
                    level=level,
                    state=m.state.value,
                    in_pool=a.facts.pool_model == m.id or m.level == Level.POOLED,
                    planned=weight > 0,
                    fraction=min(1.0, weight),
                    preload_s=None
                    if p is None
                    else (p.load_ram_s if level == "cached" else p.load_cold_s),
                    infer_s=None if p is None else p.generation_s,
                    queued=m.in_flight + m.queued,
                    on_demand=weight <= 0
                    and level in placement.Level.POOLED
                    and p is not None
                    and profile_vram(p) <= pool_bytes,
                )
            )
    for a in fleet.live("cloud"):
        for m in fleet.models_of(a.id):
            entry = models.get(m.id)
            if entry is None:
                entry = models[m.id] = RouteModel(model=m.id, kind=m.kind.value)
            if m.profile is not None and entry.cloud_infer_s is None:
                entry.cloud_infer_s = m.profile.generation_s
    return sorted(models.values(), key=lambda e: e.model)


def _planned_pool_bytes(fleet: Fleet, host_id: str) -> int:
    """The swap pool the decision holds on a host: its largest member's measured memory
    (members: models placed there at a pooled level; 0 without one)."""
    sizes = [
        profile_vram(p)
        for m in fleet.models_of(host_id)
        if m.placed
        and settled(m) in placement.Level.POOLED
        and (p := fleet.profile_of(host_id, m)) is not None
    ]
    return max(sizes, default=0)


def cloud_routes(fleet: Fleet) -> list[CloudRoute]:
    """The live cloud agents and the models each serves."""
    return [
        CloudRoute(id=a.id, url=a.url, models=[m.id for m in fleet.models_of(a.id)])
        for a in fleet.live("cloud")
    ]
