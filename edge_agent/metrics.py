"""Prometheus metrics of one agent, on a registry of its own (no process-wide globals, so
several agents can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from edge_agent.core.ports import LoadReport
from genedge.contract import FetchProgress

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
        self.pool_wait = Histogram(
            "genedge_pool_wait_seconds",
            "Seconds a request waited for the swap pool (its turn and any switch).",
            ["model"],
            buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
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
        # Fetching absent models from a model repository, and disk eviction (issue 15)
        self.fetch_bytes = Counter(
            "genedge_fetch_bytes_total",
            "Bytes transferred from the model repository (resumed bytes count once).",
            registry=r,
        )
        self.fetch_seconds = Histogram(
            "genedge_fetch_seconds",
            "Seconds of completed fetches, from the first request to the model in place.",
            buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.fetches = Counter(
            "genedge_fetches_total", "Fetches by outcome.", ["model", "outcome"], registry=r
        )
        self.fetch_done = Gauge(
            "genedge_fetch_bytes_done",
            "Bytes of a model's fetch on disk (under way or last).",
            ["model"],
            registry=r,
        )
        self.fetch_total = Gauge(
            "genedge_fetch_bytes_expected",
            "Bytes of a model's fetch in all.",
            ["model"],
            registry=r,
        )
        self.fetch_rate = Gauge(
            "genedge_fetch_rate_bytes_per_second",
            "Recent transfer rate of a model's fetch.",
            ["model"],
            registry=r,
        )
        self.fetch_eta = Gauge(
            "genedge_fetch_eta_seconds",
            "Seconds left of a model's fetch at its recent rate (0 when done).",
            ["model"],
            registry=r,
        )
        self.disk_evictions = Counter(
            "genedge_disk_evictions_total",
            "Models whose files were deleted to make room for a fetch.",
            ["model"],
            registry=r,
        )
        self.disk_evicted_bytes = Counter(
            "genedge_disk_evicted_bytes_total", "Bytes deleted by disk eviction.", registry=r
        )
        self._fetch_seen: dict[str, int] = {}  # bytes_done - resumed already counted, per model

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

    def pool_waited(self, model_id: str, seconds: float) -> None:
        self.pool_wait.labels(model_id).observe(seconds)

    def depth(self, model_id: str, queued: int, in_flight: int) -> None:
        self.queue_depth.labels(model_id).set(queued)
        self.in_flight.labels(model_id).set(in_flight)

    def device_used(self, used_bytes: int) -> None:
        self.device_used_gauge.set(used_bytes)

    def fetch_progress(self, model_id: str, progress: FetchProgress) -> None:
        moved = max(0, progress.bytes_done - progress.resumed_bytes)
        new = moved - self._fetch_seen.get(model_id, 0)
        if new > 0:
            self.fetch_bytes.inc(new)
        self._fetch_seen[model_id] = moved
        self.fetch_done.labels(model_id).set(progress.bytes_done)
        self.fetch_total.labels(model_id).set(progress.bytes_total)
        self.fetch_rate.labels(model_id).set(progress.rate_Bps)
        self.fetch_eta.labels(model_id).set(progress.eta_s or 0.0)

    def fetched(self, model_id: str, transferred_bytes: int, seconds: float) -> None:
        self._fetch_seen.pop(model_id, None)
        self.fetch_seconds.observe(seconds)
        self.fetches.labels(model_id, "ok").inc()

    def fetch_failed(self, model_id: str) -> None:
        self._fetch_seen.pop(model_id, None)
        self.fetches.labels(model_id, "failed").inc()

    def disk_evicted(self, model_id: str, nbytes: int) -> None:
        self.disk_evictions.labels(model_id).inc()
        self.disk_evicted_bytes.inc(nbytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
