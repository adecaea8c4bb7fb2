"""A model's inference time at the batch size its load implies, from the throughput points
of its profile (`ModelProfile.throughput`): pure functions the placement's capacity and
delay terms use instead of the time measured at batch size 1.

A host whose model batches serves `b` concurrent requests in about `request_s(b)` each, so
each request costs the host `request_s(b) / b` seconds of service (its capacity term) and
waits `request_s(b)` (its delay term). Between measured batch sizes both are interpolated
linearly; past the largest measured size the service time per request stays at the largest
size's (more requests queue rather than batch).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from genedge.contract import BatchPoint


@dataclass(frozen=True)
class BatchedTime:
    """Per request at a concurrency: its latency, and the host seconds it uses."""

    latency_s: float
    service_s: float


def batched_time(base_s: float, points: Sequence[BatchPoint], concurrency: float) -> BatchedTime:
    """Latency and service seconds per request with `concurrency` requests in flight.

    `base_s` is the batch-1 time (a profile's `generation_s`), used alone when the profile
    has no throughput points (a model measured before batching, or one that cannot batch).
    """
    pts = sorted((p for p in points if p.request_s > 0 and p.batch >= 1), key=lambda p: p.batch)
    if not pts or pts[0].batch != 1:
        pts = [BatchPoint(batch=1, request_s=base_s), *[p for p in pts if p.batch > 1]]
    c = max(1.0, concurrency)
    if c >= pts[-1].batch:
        top = pts[-1]
        return BatchedTime(latency_s=top.request_s, service_s=top.request_s / top.batch)
    for lo, hi in itertools.pairwise(pts):
        if lo.batch <= c <= hi.batch:
            f = (c - lo.batch) / (hi.batch - lo.batch)
            latency = lo.request_s + f * (hi.request_s - lo.request_s)
            return BatchedTime(latency_s=latency, service_s=latency / c)
    return BatchedTime(latency_s=pts[0].request_s, service_s=pts[0].request_s)


def planned_time(base_s: float, points: Sequence[BatchPoint], arrivals_per_s: float) -> BatchedTime:
    """Latency and host seconds per request at the batch size a load of `arrivals_per_s`
    implies: the smallest concurrency whose throughput (`c / latency(c)`) carries the load
    (found by bisection: throughput grows with the batch), or the largest measured batch
    when none does (the host is then overloaded and its queue grows)."""
    lo = 1.0
    hi = max([1.0, *(float(p.batch) for p in points)])

    def throughput(c: float) -> float:
        return c / batched_time(base_s, points, c).latency_s

    if throughput(lo) >= arrivals_per_s:
        return batched_time(base_s, points, lo)
    if throughput(hi) < arrivals_per_s:
        return batched_time(base_s, points, hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if throughput(mid) < arrivals_per_s else (lo, mid)
    return batched_time(base_s, points, hi)


def effective_service_s(
    base_s: float, points: Sequence[BatchPoint], arrivals_per_s: float
) -> float:
    """Host seconds per request at the batch size a load of `arrivals_per_s` implies
    (`planned_time`'s service)."""
    return planned_time(base_s, points, arrivals_per_s).service_s
