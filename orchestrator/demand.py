"""Demand: what the planner needs to know about requests, and where it comes from.

- Per-model arrivals feed an EWMA rate estimator with a fast surge reaction. The gateways'
  batches count while a gateway reports (within two slots); otherwise the agents' own
  counters in their heartbeats do, so a fleet without a gateway still has rates.
- A gateway batch is counted once per batch id (a retry counts nothing) at the
  orchestrator's own clock; names no agent holds go to one `_other` tally, never stored and
  never a metric label, so no client can grow the state.
- Swap-pool hits and misses of the edge agents feed the pool statistics.

The estimator's and the pool statistics' snapshots are saved in the registry and restored
from it, so a restart keeps the rates.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from genedge.contract import ArrivalBatch, Heartbeat
from orchestrator.adapters.registry import AgentRecord, Registry
from orchestrator.core.rates import PoolStats, RateEstimator
from orchestrator.core.recent import RecentIds
from orchestrator.settings import OrchestratorSettings

log = logging.getLogger("orchestrator")


@dataclass(frozen=True)
class ArrivalResult:
    counted: int  # under a model some agent holds
    other: int  # under names no agent holds
    duplicate: bool  # the batch id was counted already: nothing counted now


class Demand:
    """The rate estimator, the pool statistics and the arrivals tallies."""

    def __init__(
        self, settings: OrchestratorSettings, registry: Registry, clock: Callable[[], float]
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._clock = clock
        snap = registry.load_state("rates")
        kw = dict(
            slot_s=settings.slot_s,
            half_life_s=settings.rate_half_life_s,
            half_lives_s=tuple(settings.rate_half_lives_s),
            surge_factor=settings.surge_factor,
            surge_min_count=settings.surge_min_count,
            surge_alpha=settings.surge_alpha,
            clock=clock,
        )
        self.rates = RateEstimator.restore(snap, **kw) if snap else RateEstimator(**kw)  # type: ignore[arg-type]
        pool_snap = registry.load_state("pool")
        self.pool = PoolStats.restore(pool_snap) if pool_snap else PoolStats()
        self.gateway_seen_at: float | None = None
        self.unknown_arrivals = 0  # requests for models no agent holds (the `_other` bucket)
        self.batch_ids = RecentIds()  # arrivals batches counted, so a retry counts once
        self.arrivals_counted: Counter[str] = Counter()  # per known model, since start
        self.duplicate_batches = 0

    def gateway_active(self, now: float) -> bool:
        return (
            self.gateway_seen_at is not None
            and now - self.gateway_seen_at < 2 * self._settings.slot_s
        )

    def observe_heartbeat(self, agent: AgentRecord, hb: Heartbeat, now: float) -> None:
        """An agent's own request counters (while no gateway reports) and its pool counts."""
        if not self.gateway_active(now):
            own = {m.id for m in hb.models}  # an agent counts only what it serves
            for model, n in hb.arrivals.items():
                if n and model in own:
                    self.rates.observe(model, n, now)
        if agent.role == "edge":
            for model, pc in hb.pool.items():
                if pc.hits or pc.misses:
                    self.pool.observe(model, agent.id, pc.hits, pc.misses)

    def arrivals(self, batch: ArrivalBatch, known: set[str], now: float) -> ArrivalResult:
        """Count a batch once per batch id; `known` are the models some agent holds."""
        if batch.source == "gateway":
            self.gateway_seen_at = now
        if batch.id is not None and not self.batch_ids.first_time(batch.id, now):
            self.duplicate_batches += 1
            log.debug("arrivals batch %s counted already (a retry)", batch.id)
            return ArrivalResult(counted=0, other=0, duplicate=True)
        counted = other = 0
        for model, n in batch.counts.items():
            if model not in known:
                other += n
            elif n:
                self.rates.observe(model, n, now)
                self.arrivals_counted[model] += n
                counted += n
        self.unknown_arrivals += other
        return ArrivalResult(counted=counted, other=other, duplicate=False)

    def surges(self) -> list[str]:
        """The models whose rate surged since the last look (each reported once)."""
        surged = self.rates.check_surges()
        if surged:
            log.info("rate surge: %s", ", ".join(surged))
        return surged

    def roll(self, *, slot: bool) -> None:
        """Before planning: close the rate slot; on a slot boundary, also age the pool-hit
        evidence (once per slot, not on every event)."""
        self.rates.roll()
        if slot:
            self.pool.roll()

    def persist(self) -> None:
        self._registry.save_state("rates", self.rates.snapshot())
        self._registry.save_state("pool", self.pool.snapshot())
