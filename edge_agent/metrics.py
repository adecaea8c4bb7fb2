"""Prometheus metrics of one agent, on a registry of its own (no process-wide globals, so
several agents can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from edge_agent.core.ports import LoadReport

PRELOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class AgentMetrics:
    """Implements the manager's `Observer` and counts requests."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.preload_seconds = Histogram(
            "genedge_preload_seconds",
            "Seconds to load a model onto the device, by source tier and loader.",
            ["tier", "loader"],
            buckets=PRELOAD_BUCKETS,
            registry=r,
        )
        self.loads = Counter(
            "genedge_loads_total",
            "Model loads by outcome.",
            ["model", "tier", "outcome"],
            registry=r,
        )
        self.evictions = Counter(
            "genedge_evictions_total", "Models freed from the device.", ["model"], registry=r
        )
        self.evict_seconds = Histogram(
            "genedge_evict_seconds", "Seconds to free a model's device memory.", registry=r
        )
        self.pool_switches = Counter(
            "genedge_pool_switches_total", "Swap-pool switches to a model.", ["model"], registry=r
        )
        self.requests = Counter(
            "genedge_requests_total",
            "Generation requests by model, endpoint and HTTP status.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "genedge_request_seconds",
            "Generation request latency (to the last byte).",
            ["model", "endpoint"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "genedge_queue_depth", "Requests waiting per model.", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "genedge_in_flight", "Requests running per model.", ["model"], registry=r
        )
        self.device_used_gauge = Gauge(
            "genedge_device_used_bytes",
            "Device memory held by resident models and the swap pool.",
            registry=r,
        )
        self.gpu_used = Gauge(
            "genedge_gpu_memory_used_bytes", "GPU memory used, as NVML reports it.", registry=r
        )

    # Observer ------------------------------------------------------------------------
    def loaded(self, model_id: str, report: LoadReport) -> None:
        self.preload_seconds.labels(report.tier, report.loader).observe(report.seconds)
        self.loads.labels(model_id, report.tier, "ok").inc()

    def load_failed(self, model_id: str, tier: str) -> None:
        self.loads.labels(model_id, tier, "failed").inc()

    def evicted(self, model_id: str, seconds: float) -> None:
        self.evictions.labels(model_id).inc()
        self.evict_seconds.observe(seconds)

    def pool_switched(self, old: str | None, new: str) -> None:
        self.pool_switches.labels(new).inc()

    def depth(self, model_id: str, queued: int, in_flight: int) -> None:
        self.queue_depth.labels(model_id).set(queued)
        self.in_flight.labels(model_id).set(in_flight)

    def device_used(self, used_bytes: int) -> None:
        self.device_used_gauge.set(used_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
