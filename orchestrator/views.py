"""Contract views of a decision: each model's split (`Share`s, heaviest first), the levels
it keeps, and what the routing table tells the gateways (the routing weights).

The routes come from a placement's entries, of this process's decision or, after a restart,
of the stored `Placement`: both give the same `ModelRoute`s, so the routing table does not
change across a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from genedge.contract import CostTerms, PlacementEntry, Share
from orchestrator.core import placement
from orchestrator.core.placement import CostBreakdown, Decision, Instance, Option


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
