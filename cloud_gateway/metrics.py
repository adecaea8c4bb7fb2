"""Prometheus metrics of one gateway app (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "genedge_gw_requests_total",
            "Requests by model, route (resident, pooled, cloud, none) and status.",
            ["model", "route", "status"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "genedge_gw_upstream_seconds",
            "Time to the upstream's response headers (streams) or whole body, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "genedge_gw_fallbacks_total",
            "Requests moved to the next backend after a failure before the first byte.",
            ["from_route", "reason"],
            registry=r,
        )
        self.stream_errors = Counter(
            "genedge_gw_stream_errors_total",
            "Streams broken after their first byte (the client got an error event).",
            registry=r,
        )
        self.table_age = Gauge(
            "genedge_gw_routing_table_age_seconds",
            "Age of the routing table in use (-1: none yet).",
            registry=r,
        )
        self.arrivals_pending = Gauge(
            "genedge_gw_arrivals_pending", "Arrivals counted but not yet reported.", registry=r
        )
        self.inflight = Gauge(
            "genedge_gw_inflight", "Requests in flight per backend.", ["backend"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
