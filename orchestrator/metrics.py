"""The orchestrator's Prometheus metrics, computed from its state at each scrape.

Labels are bounded: rates are exported only for models some registered agent holds; arrivals
for any other name are one `_other` total, so no client can grow the output.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from orchestrator.service import Orchestrator


class OrchestratorMetrics:
    def __init__(self, orch: Orchestrator) -> None:
        self.registry = CollectorRegistry()
        self.orch = orch
        self.agents_up = Gauge("genedge_orch_agents_up", "Live agents.", registry=self.registry)
        self.cost = Gauge(
            "genedge_orch_decision_cost", "Total cost of the last decision.", registry=self.registry
        )
        self.pending = Gauge(
            "genedge_orch_pending_commands", "Level commands not yet done.", registry=self.registry
        )
        self.rate = Gauge(
            "genedge_orch_rate_rps",
            "Estimated request rate of each model some agent holds.",
            ["model"],
            registry=self.registry,
        )
        self.other = Gauge(
            "genedge_orch_arrivals_other_total",
            "Arrivals reported for models no agent holds (one bucket, names not kept).",
            registry=self.registry,
        )

        self.arrivals = Gauge(
            "genedge_orch_arrivals_total",
            "Arrivals counted since start, per model some agent holds (all gateways summed).",
            ["model"],
            registry=self.registry,
        )
        self.duplicates = Gauge(
            "genedge_orch_arrival_batches_duplicate_total",
            "Arrivals batches received again under an id already counted (retries, not counted).",
            registry=self.registry,
        )

    def render(self) -> bytes:
        o = self.orch
        self.agents_up.set(sum(1 for a in o.registry.agents() if a.status == "up"))
        if o.last is not None:
            self.cost.set(o.last.decision.cost.total)
        self.pending.set(len(o.pending))
        known = o.known_models()
        self.rate.clear()  # a model no agent holds any more leaves the output
        for m, r in o.rates.rates().items():
            if m in known:
                self.rate.labels(m).set(r)
        self.arrivals.clear()
        for m, n in o.arrivals_counted.items():
            if m in known:
                self.arrivals.labels(m).set(n)
        self.other.set(o.unknown_arrivals)
        self.duplicates.set(o.duplicate_batches)
        return generate_latest(self.registry)
