"""The orchestrator plans with a profile's throughput (issue 14, item 5): a batching model's
host seconds per request fall with its load (the compute cap's term) while a request's
latency grows (the delay term), so a host carries more load than its batch-1 time says."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from genedge.contract import BatchPoint, Heartbeat
from orchestrator.adapters.registry import Registry
from orchestrator.core import algorithms, placement
from orchestrator.core.batching import planned_time
from orchestrator.core.placement import CloudSpec, HostSpec, Instance, ModelSpec, Perf
from orchestrator.core.rates import PoolStats
from orchestrator.fleet import Fleet
from orchestrator.planner import build_instance
from orchestrator.settings import OrchestratorSettings
from tests.test_registry import facts, model_doc, profile

GB = 10**9
POINTS = [
    BatchPoint(batch=1, request_s=1.0),
    BatchPoint(batch=4, request_s=1.6),
    BatchPoint(batch=16, request_s=4.0),
]


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    reg = Registry(":memory:")
    yield Fleet(reg)
    reg.close()


def _host_with(fleet: Fleet, *, throughput: list[BatchPoint], cache: int = 0) -> None:
    status = model_doc(
        "chat",
        "resident",
        storage_bytes=GB,
        batch_cache_bytes=cache,
        profile=profile("chat", generation_s=1.0, throughput=throughput),
    )
    fleet.registry.upsert_agent("e1", "http://e1:8100", "edge", facts("e1"), now=1.0)
    assert fleet.heartbeat("e1", Heartbeat(models=[status]), now=1.0) is not None


def _perf_at(fleet: Fleet, rate: float) -> Perf:
    settings = OrchestratorSettings(db_path=":memory:")
    inst, _ = build_instance(settings, fleet, {"chat": rate}, PoolStats())
    return inst.perf[("chat", "e1")]


def test_a_batching_profile_gives_less_host_time_per_request_at_a_higher_rate(
    fleet: Fleet,
) -> None:
    _host_with(fleet, throughput=POINTS)
    light, heavy = _perf_at(fleet, 0.1), _perf_at(fleet, 3.0)
    assert light.infer_s == pytest.approx(1.0) and light.delay_s == pytest.approx(1.0)
    # At 3 req/s the model runs ~4.3 requests together: a third of a second of host time
    # each, while each request waits longer than alone (the delay term).
    assert heavy.infer_s < 0.5 * light.infer_s
    assert heavy.infer_s == pytest.approx(1 / 3.0, rel=1e-3)
    assert heavy.latency_s is not None and heavy.delay_s > light.delay_s


def test_a_profile_without_throughput_plans_with_its_batch_one_time(fleet: Fleet) -> None:
    _host_with(fleet, throughput=[])
    for rate in (0.1, 3.0):
        p = _perf_at(fleet, rate)
        assert p.infer_s == 1.0 and p.latency_s is None and p.delay_s == 1.0


def _one_host(perf: Perf, rate: float) -> Instance:
    return Instance(
        hosts=[HostSpec(id="e1", disk_bytes=100 * GB, ram_bytes=10 * GB, gpu_bytes=10 * GB)],
        models=[ModelSpec(id="chat", kind="text", storage_bytes=GB)],
        perf={("chat", "e1"): perf},
        rates={"chat": rate},
        slot_s=60.0,
        # A far cloud: the edge is worth it for every request it can carry.
        cloud=CloudSpec(wan_rtt_s=5.0, infer_s={"chat": 1.0}),
        current={("chat", "e1"): "resident"},
    )


def _edge_requests(inst: Instance, d: placement.Decision) -> float:
    return sum(
        share * inst.requests(m)
        for m, options in d.split.items()
        for option, share in options.items()
        if option.host == "e1"
    )


@pytest.mark.parametrize("algorithm", ["mlds", "exact"])
def test_a_plan_puts_more_load_on_a_batching_host(algorithm: str) -> None:
    rate = 3.0  # 180 requests a slot; alone each takes 1 s, the host has 54 s (rho 0.9)
    plain = Perf(vram_bytes=GB, load_disk_s=1.0, load_ram_s=0.5, infer_s=1.0)
    t = planned_time(1.0, POINTS, rate)
    batched = Perf(
        vram_bytes=GB, load_disk_s=1.0, load_ram_s=0.5, infer_s=t.service_s, latency_s=t.latency_s
    )
    inst_plain, inst_batched = _one_host(plain, rate), _one_host(batched, rate)
    on_edge_plain = _edge_requests(inst_plain, algorithms.solve(algorithm, inst_plain))
    on_edge_batched = _edge_requests(inst_batched, algorithms.solve(algorithm, inst_batched))
    assert on_edge_plain <= 0.9 * 60 / 1.0 + 1e-6  # the compute cap at batch-1 times
    assert on_edge_batched > 2 * on_edge_plain


def test_the_delay_term_uses_the_latency_and_the_compute_term_the_host_time() -> None:
    perf = Perf(vram_bytes=GB, load_disk_s=1.0, load_ram_s=0.5, infer_s=0.25, latency_s=4.0)
    inst = _one_host(perf, 1.0)
    option = placement.Option("e1", "resident")
    cost = placement.per_request_cost(inst, "chat", option)
    assert cost.delay == pytest.approx(4.0 * inst.prices.delay_weight)
    with pytest.raises(ValueError, match=">= 0"):
        Perf(vram_bytes=1, load_disk_s=1.0, load_ram_s=1.0, infer_s=1.0, latency_s=-1.0)


def test_the_model_takes_its_batch_cache_on_the_device_too(fleet: Fleet) -> None:
    _host_with(fleet, throughput=[], cache=7000)
    # The profile's peak (3000) and resident (2000) bytes, plus the agent's batch cache.
    assert _perf_at(fleet, 1.0).vram_bytes == 3000 + 7000
