"""The orchestrator's batch-aware inference time (orchestrator.core.batching)."""

from __future__ import annotations

import pytest

from genedge.contract import BatchPoint
from orchestrator.core.batching import batched_time, effective_service_s

POINTS = [
    BatchPoint(batch=1, request_s=1.0),
    BatchPoint(batch=4, request_s=1.6),
    BatchPoint(batch=16, request_s=4.0),
]


def test_no_points_is_the_batch_one_time() -> None:
    t = batched_time(2.0, [], concurrency=8)
    assert t.latency_s == t.service_s == 2.0
    assert effective_service_s(2.0, [], arrivals_per_s=5.0) == 2.0


def test_interpolates_between_measured_batches_and_holds_past_the_largest() -> None:
    assert batched_time(1.0, POINTS, 1).service_s == 1.0
    mid = batched_time(1.0, POINTS, 10)
    assert mid.latency_s == pytest.approx(1.6 + 0.5 * 2.4)
    assert mid.service_s == pytest.approx(mid.latency_s / 10)
    top = batched_time(1.0, POINTS, 64)
    assert (top.latency_s, top.service_s) == (4.0, 0.25)  # more requests queue, not batch


def test_a_batching_host_carries_more_load() -> None:
    light = effective_service_s(1.0, POINTS, arrivals_per_s=0.1)
    heavy = effective_service_s(1.0, POINTS, arrivals_per_s=3.0)
    assert light == pytest.approx(1.0, rel=0.05)
    assert heavy < 0.5  # a host at 3 req/s batches: under half the batch-1 service time
    assert 1 / heavy == pytest.approx(3.0, rel=1e-3)  # it batches just enough for the load
    assert effective_service_s(1.0, POINTS, arrivals_per_s=1.0) == 1.0  # batch 1 suffices
    assert effective_service_s(1.0, POINTS, arrivals_per_s=9.0) == 0.25  # past the largest


def test_a_profile_without_batch_one_uses_generation_s_for_it() -> None:
    t = batched_time(3.0, [BatchPoint(batch=4, request_s=4.0)], concurrency=1)
    assert t.latency_s == 3.0
