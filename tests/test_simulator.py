"""The trace simulator (`sim.simulator`) and the replay readers (`bench/replay.py`).

A tiny scenario (one host, two models, round numbers) is worked out by hand for a fixed
plan, for `lru` and with overflow; the rest checks properties: seeded determinism, GPU
memory never exceeded, plans that never see the slot they plan, and the trace readers on
small files in the real traces' formats. Self-contained: no `../shared` needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from bench import replay
from orchestrator.core.placement import (
    CLOUD,
    GB,
    CloudSpec,
    HostSpec,
    Instance,
    ModelSpec,
    Option,
    Perf,
    Prices,
)
from sim.scenarios import MeasuredModel, random_instance
from sim.simulator import (
    HINDSIGHT,
    POLICIES,
    Plan,
    Request,
    SimConfig,
    feasible_start,
    poisson_requests,
    simulate,
)

G = int(GB)


def tiny(slot_s: float = 10.0) -> Instance:
    """One host; A (2 GB, load 3 s, 1 s a request), B (1 GB, load 2 s, 2 s a request)."""
    host = HostSpec(
        "e", disk_bytes=10 * G, ram_bytes=0, gpu_bytes=10 * G, rho_max=1.0, backhaul_Bps=1e9
    )
    return Instance(
        hosts=[host],
        models=[ModelSpec("A", "text", 2 * G), ModelSpec("B", "image", 1 * G)],
        perf={
            ("A", "e"): Perf(vram_bytes=2 * G, load_disk_s=3.0, load_ram_s=1.0, infer_s=1.0),
            ("B", "e"): Perf(vram_bytes=1 * G, load_disk_s=2.0, load_ram_s=0.5, infer_s=2.0),
        },
        rates={},
        slot_s=slot_s,
        cloud=CloudSpec(wan_rtt_s=0.1, infer_s={"A": 4.0, "B": 5.0}),
        prices=Prices(disk_per_GB=0.01, ram_per_GB=0.0, vram_per_GB=0.1, cloud_per_request=0.5),
    )


TRACE = [
    Request(0.0, "A"),
    Request(1.0, "B"),
    Request(2.0, "A"),
    Request(10.5, "B"),
    Request(11.0, "B"),
]


def fixed(inst: Instance, slot: int) -> Mapping[str, Option]:
    """A resident, B stored (pooled from disk) on the one host, every slot."""
    return {"A": Option("e", "resident"), "B": Option("e", "stored")}


def test_hand_computed_fixed_plan() -> None:
    # slot 0: fetch A (2 s) and B (1 s); A loads from t=2 to 5 (resident); B@1 misses the
    # pool (2 s) and runs 2 s: ends 5; A@0 and A@2 wait for A: 5-6 and 6-7.
    # slot 1: B@10.5 hits the pool, ends 12.5; B@11 queues behind it, ends 14.5.
    r = simulate(tiny(), TRACE, fixed, SimConfig(overflow=False))
    assert r.latencies == pytest.approx([4.0, 6.0, 5.0, 2.0, 3.5])
    assert (r.pool_loads, r.resident_loads, r.switches) == (1, 1, 2)
    assert r.bytes_fetched == 3 * G
    assert r.cloud_requests == 0 and r.cloud_share == 0.0
    # resource a slot: disk 3 GB x 0.01 + A's 2 GB x 0.1 + the pool (1 GB) x 0.1 = 0.33
    assert r.slots[0].cost.delay == pytest.approx(15.0)
    assert r.slots[0].cost.resource == pytest.approx(0.33)
    assert r.slots[0].cost.transition == pytest.approx(6.0)  # 2 + 1 s fetch, 3 s load
    assert r.slots[1].cost.total == pytest.approx(5.5 + 0.33)
    assert r.cost.total == pytest.approx(27.16)
    assert r.mean_latency_s == pytest.approx(4.1)
    assert r.peak_gpu_bytes == {"e": 3 * G}
    assert r.slots[1].assignment == {"A": "e:resident", "B": "e:stored"}


def test_hand_computed_overflow_to_cloud() -> None:
    # A is fetched 0-2 and loaded 2-5: not ready for A@0 nor A@2, so the gateway (which
    # skips a host whose model is still loading) sends both to the cloud (4.1 s each);
    # B, on disk from 1 s, is ready for B@1: a pool miss (2 s) and 2 s of work on the edge.
    r = simulate(tiny(), TRACE, fixed, SimConfig(overflow=True))
    assert r.latencies[:3] == pytest.approx([4.1, 4.1, 4.0])  # cloud ones served first
    assert r.cloud_requests == 2
    assert r.slots[0].served == {"A": {"cloud": 2}, "B": {"e": 1}}
    assert r.slots[0].cost.cloud == pytest.approx(1.0)
    assert r.slots[0].cost.delay == pytest.approx(12.2)


def test_overflow_sends_a_request_past_a_long_queue() -> None:
    # B resident and ready from the start; four B requests at once: the 3rd would finish
    # at 6 > 5.1 on the cloud, so it goes there; so does the 4th.
    start = replace(tiny(), current={("B", "e"): "resident"})
    plan = {"A": CLOUD, "B": Option("e", "resident")}
    reqs = [Request(0.0, "B") for _ in range(4)]
    r = simulate(start, reqs, lambda i, k: plan, SimConfig(overflow=True, start_s=0.0))
    assert sorted(r.latencies) == pytest.approx([2.0, 4.0, 5.1, 5.1])
    assert r.slots[0].served == {"B": {"e": 2, "cloud": 2}}


def test_the_router_does_not_know_a_requests_size() -> None:
    # B resident (2 s a request, cloud 0.1 + 5 s). B@0 of work 3 runs 0-6. The router at
    # 0.5 estimates it at one mean request (0.5 + 2 = 2.5), so B@0.5 (work 1) joins the
    # queue (2.5 + 2 = 4.5 < 5.6) and really runs 6-8 (latency 7.5); a router that knew
    # the sizes would have sent it to the cloud (6 + 2 = 8 > 5.6). B@0.6 (work 2) would
    # finish at 6.5 by the estimate > 5.7: the cloud, at its own work (0.1 + 2 x 5).
    start = replace(tiny(), current={("B", "e"): "resident"})
    plan = {"A": CLOUD, "B": Option("e", "resident")}
    reqs = [Request(0.0, "B", 3.0), Request(0.5, "B", 1.0), Request(0.6, "B", 2.0)]
    r = simulate(start, reqs, lambda i, k: plan, SimConfig(overflow=True, start_s=0.0))
    assert sorted(r.latencies) == pytest.approx([6.0, 7.5, 10.1])
    assert r.slots[0].served == {"B": {"e": 2, "cloud": 1}}


def test_a_cloud_pick_goes_to_an_idle_planned_host_that_beats_the_cloud() -> None:
    # B split half to e (resident), half to the cloud. Each request finds e idle (2 s on e
    # against 5.1 s in the cloud), so a cloud pick is served there too: the split thins
    # the traffic to keep queues short, and an idle server has none. A@4.5 keeps e busy
    # (A is planned to the cloud only): the B pick of B@5 that goes to the cloud stays
    # there unless e is idle.
    start = replace(tiny(), current={("B", "e"): "resident"})
    half = {Option("e", "resident"): 0.5, CLOUD: 0.5}
    plan = Plan(
        split={"A": {CLOUD: 1.0}, "B": half},
        levels={("B", "e"): "resident"},
        assignment={"A": CLOUD, "B": Option("e", "resident")},
    )
    reqs = [Request(t, "B") for t in (0.0, 3.0, 6.0, 9.0)]
    r = simulate(start, reqs, lambda i, k: plan, SimConfig(overflow=True, start_s=0.0))
    assert r.latencies == pytest.approx([2.0] * 4)
    assert r.slots[0].served == {"B": {"e": 4}}
    # without the live correction (overflow off) the split is followed: two to the cloud
    r = simulate(start, reqs, lambda i, k: plan, SimConfig(overflow=False, start_s=0.0))
    assert r.slots[0].served == {"B": {"e": 2, "cloud": 2}}


def test_lru_overflow_sheds_a_queue_not_a_load() -> None:
    # A@0 on the idle host: fetched 0-2, loaded 2-5, runs 5-6; the cloud would take 4.1 s,
    # but an Ollama-style server loads what it is asked for: the overflow weighs only the
    # backlog. A@0.5 finds A loading (its one request estimated to end at 6): 6 + 1 > 4.6,
    # the cloud.
    r = simulate(tiny(), [Request(0.0, "A"), Request(0.5, "A")], "lru", SimConfig(overflow=True))
    assert sorted(r.latencies) == pytest.approx([4.1, 6.0])
    assert r.slots[0].served == {"A": {"e": 1, "cloud": 1}}


@pytest.mark.parametrize(
    ("on_demand", "trace", "latencies", "cloud"),
    [
        # B is on e's disk but planned to the cloud; e's planned pool (A, 2 GB) can hold B
        # (1 GB) and e is idle at 1: a pool load (2 s) and 2 s of work, 4 s < 5.1 s
        (True, [Request(1.0, "B")], [4.0], 0),
        (False, [Request(1.0, "B")], [5.1], 1),
        # A@0.5 keeps e busy until 4.5 (load 3 s, run 1 s): B@1 goes to the cloud
        (True, [Request(0.5, "A"), Request(1.0, "B")], [5.1, 4.0], 1),
    ],
)
def test_an_idle_host_serves_a_model_on_its_disk_on_demand(
    on_demand: bool, trace: list[Request], latencies: list[float], cloud: int
) -> None:
    start = replace(tiny(), current={("A", "e"): "stored", ("B", "e"): "stored"})
    plan = {"A": Option("e", "stored"), "B": CLOUD}
    cfg = SimConfig(overflow=True, start_s=0.0, on_demand=on_demand)
    r = simulate(start, trace, lambda i, k: plan, cfg)
    assert r.latencies == pytest.approx(latencies)
    assert r.cloud_requests == cloud


def test_a_surge_within_a_slot_plans_again_at_once() -> None:
    # one 60-s slot; A comes at 1/s from 20 s: at 24 s its 5th request makes a surge
    # (5 in 24 s > 3 x 0), and the orchestrator (and so the simulator) plans again there
    # (holding every level of the plan before it: here B stored on e)
    seen: list[float] = []
    pins: list[object] = []

    def cloud_plan(inst: Instance, slot: int) -> Mapping[str, Option]:
        seen.append(inst.rates.get("A", 0.0))
        pins.append(dict(inst.pins))
        return {"A": CLOUD, "B": Option("e", "stored")}

    reqs = [Request(20.0 + i, "A") for i in range(10)]
    r = simulate(tiny(slot_s=60.0), reqs, cloud_plan, SimConfig(start_s=0.0, n_slots=1))
    assert seen == pytest.approx([0.0, 5 / 24])
    assert pins == [{}, {("B", "e"): "stored"}]
    assert r.slots[0].replans == 1 and r.replans == 1
    seen.clear()
    cfg = SimConfig(start_s=0.0, n_slots=1, replan_on_surge=False)
    assert simulate(tiny(slot_s=60.0), reqs, cloud_plan, cfg).replans == 0
    assert seen == [0.0]


def both_pooled(inst: Instance, slot: int) -> Mapping[str, Option]:
    """A and B both stored (pooled from disk) on the one host: they share its swap pool."""
    return {"A": Option("e", "stored"), "B": Option("e", "stored")}


INTERLEAVED = [Request(0.0, "A"), Request(0.5, "B"), Request(1.0, "A"), Request(1.5, "B")]
INTERLEAVED += [Request(2.0, "A")]


@pytest.mark.parametrize(
    ("max_wait_s", "latencies", "switches"),
    [
        # first in, first out: every request finds the other model in the pool.
        # A@0 load 0-3 run 3-4; B@.5 load 4-6 run 6-8; A@1 8-11, 11-12; B@1.5 12-14,
        # 14-16; A@2 16-19, 19-20
        (0.0, [4.0, 7.5, 11.0, 14.5, 18.0], 5),
        # the agent's rule: at 4 the pool holds A, so A@1 (4-5) and A@2 (5-6) go before
        # the switch; B@.5 load 6-8 run 8-10, B@1.5 10-12
        (30.0, [4.0, 9.5, 4.0, 10.5, 4.0], 2),
        # a 5 s bound: at 6 B@.5 has waited 5.5 s (overdue) but A's run is already over
        (5.0, [4.0, 9.5, 4.0, 10.5, 4.0], 2),
        # a 3 s bound: at 4 B@.5 has waited 3.5 s, so it goes first; then FIFO again
        (3.0, [4.0, 7.5, 11.0, 14.5, 18.0], 5),
    ],
)
def test_the_swap_pool_is_served_by_the_agents_rule(
    max_wait_s: float, latencies: list[float], switches: int
) -> None:
    start = replace(tiny(100.0), current={("A", "e"): "stored", ("B", "e"): "stored"})
    cfg = SimConfig(overflow=False, start_s=0.0, pool_max_wait_s=max_wait_s)
    r = simulate(start, INTERLEAVED, both_pooled, cfg)
    by_arrival = {req.t: lat for req, lat in zip(INTERLEAVED, latencies, strict=True)}
    assert sorted(r.latencies) == pytest.approx(sorted(by_arrival.values()))
    assert r.pool_loads == switches and r.switches == switches


def test_grouping_the_pool_saves_switches_on_poisson_interleaving() -> None:
    # two pooled models at 0.4 req/s each on one host: queues form, and with the agent's
    # bound the pool serves runs of one model instead of alternating
    start = replace(tiny(60.0), current={("A", "e"): "stored", ("B", "e"): "stored"})
    reqs = poisson_requests({"A": 0.2, "B": 0.1}, n_slots=10, slot_s=60.0, seed=3)
    runs = {
        w: simulate(start, reqs, both_pooled, SimConfig(overflow=False, pool_max_wait_s=w))
        for w in (0.0, 30.0)
    }
    assert runs[30.0].switches < 0.9 * runs[0.0].switches  # 70 against 86
    assert runs[30.0].mean_latency_s < runs[0.0].mean_latency_s
    assert runs[30.0].requests == runs[0.0].requests == len(reqs)


def test_hand_computed_lru() -> None:
    # A@0: fetched 0-2, loaded 2-5, runs 5-6. B@1: fetched 1-2, waits for the GPU, loads
    # 6-8, runs 8-10. A@2 (loaded) runs 10-11. B@10.5 runs 11-13, B@11 13-15.
    r = simulate(tiny(), TRACE, "lru", SimConfig(overflow=False))
    assert r.latencies == pytest.approx([6.0, 9.0, 9.0, 2.5, 4.0])
    assert (r.pool_loads, r.resident_loads) == (2, 0)
    assert r.bytes_fetched == 3 * G
    # slot 0: disk held 2 GB x 10 s + 1 GB x 9 s, GPU 2 GB x 8 s + 1 GB x 4 s (time-averaged)
    assert r.slots[0].cost.resource == pytest.approx(0.01 * 2.9 + 0.1 * 2.0)
    assert r.slots[0].cost.transition == pytest.approx(3.0)
    assert r.slots[1].cost.resource == pytest.approx(0.01 * 3 + 0.1 * 3)
    assert r.cost.total == pytest.approx(24 + 0.229 + 3 + 6.5 + 0.33)
    assert r.peak_gpu_bytes == {"e": 3 * G}


def test_cloud_requests_pay_the_round_trip_and_price() -> None:
    reqs = [Request(0.0, "A", work=2.0), Request(1.0, "B")]
    r = simulate(tiny(), reqs, "cloud-only")
    assert r.latencies == pytest.approx([0.1 + 8.0, 0.1 + 5.0])
    assert r.cost.cloud == pytest.approx(1.0)
    assert r.cloud_share == 1.0 and r.switches == 0 and r.bytes_fetched == 0


def test_warmup_slots_are_left_out() -> None:
    r = simulate(tiny(), TRACE, fixed, SimConfig(overflow=False, warmup_slots=1))
    assert r.latencies == pytest.approx([2.0, 3.5])
    assert r.cost.total == pytest.approx(5.83)
    assert r.bytes_fetched == 0 and r.switches == 0


def test_dropped_models_stay_on_disk_until_a_fetch_needs_the_space() -> None:
    # disk 4 GB: A (2 GB), B (1 GB), C (2 GB). Slot 0 places A and B (B served last),
    # slot 1 sends both to the cloud (their files stay), slot 2 places B again (no fetch)
    # and C (a fetch: 3 + 2 > 4 GB, so A, the least recently used, is evicted), slot 3
    # places A again (fetched: C, now least recently used, is evicted; B stays).
    base = tiny()
    base = replace(
        base,
        hosts=[replace(base.hosts[0], disk_bytes=4 * G)],
        models=[*base.models, ModelSpec("C", "image", 2 * G)],
        perf={
            **base.perf,
            ("C", "e"): Perf(vram_bytes=1 * G, load_disk_s=1.0, load_ram_s=0.5, infer_s=1.0),
        },
        cloud=CloudSpec(wan_rtt_s=0.1, infer_s={"A": 4.0, "B": 5.0, "C": 5.0}),
    )
    stored = Option("e", "stored")
    script = [
        {"A": stored, "B": stored, "C": CLOUD},
        {"A": CLOUD, "B": CLOUD, "C": CLOUD},
        {"A": CLOUD, "B": stored, "C": stored},
        {"A": stored, "B": CLOUD, "C": CLOUD},
    ]
    seen: list[dict[tuple[str, str], str]] = []

    def planner(inst: Instance, slot: int) -> Mapping[str, Option]:
        seen.append(dict(inst.current))
        return script[slot]

    reqs = [Request(0.0, "A"), Request(1.0, "B"), Request(20.5, "B"), Request(30.5, "A")]
    r = simulate(base, reqs, planner, SimConfig(start_s=0.0, n_slots=4, overflow=False))
    assert seen[1] == {("A", "e"): "stored", ("B", "e"): "stored"}
    assert seen[2] == {("A", "e"): "stored", ("B", "e"): "stored"}  # retained, not placed
    assert seen[3] == {("B", "e"): "stored", ("C", "e"): "stored"}  # A was evicted
    fetched = [s.cost.transition for s in r.slots]
    assert fetched == pytest.approx([3.0, 0.0, 2.0, 2.0])  # B is never fetched again
    assert r.bytes_fetched == (2 + 1 + 2 + 2) * G
    # B@20.5 is served from the retained copy at once: a pool miss (2 s) and 2 s of work
    assert r.latencies[2] == pytest.approx(4.0)
    # every byte on the disk is charged, placed or retained (disk 0.01 per GB a slot)
    assert r.slots[1].cost.resource == pytest.approx(0.01 * 3)
    assert r.slots[2].cost.resource == pytest.approx(0.01 * 3 + 0.1 * 1)  # B, C + the pool
    assert r.slots[3].cost.resource == pytest.approx(0.01 * 3 + 0.1 * 2)  # A + B, pool A


# ---------------------------------------------------------------------------------------
# Properties on random scenarios
# ---------------------------------------------------------------------------------------

MEASURED = [
    MeasuredModel("gpt2", "text", 250_000_000, 290_000_000, 0.36, 0.11, 2.3),
    MeasuredModel("sd-1.5", "image", 2_130_000_000, 2_790_000_000, 2.5, 0.14, 1.3),
    MeasuredModel("sdxl", "image", 6_940_000_000, 9_600_000_000, 7.5, 0.23, 2.7),
    MeasuredModel("llama-8b", "text", 16_060_000_000, 16_090_000_000, 10.7, 0.39, 2.0),
]


def small_scenario(seed: int, gpu_scale: float = 0.15) -> tuple[Instance, list[Request]]:
    """8 models on 2 hosts with little GPU memory (evictions), 6 slots of Poisson arrivals
    plus 2 slots of history."""
    inst = random_instance(MEASURED, 8, 2, seed, load=0.6)
    hosts = [replace(h, gpu_bytes=int(h.gpu_bytes * gpu_scale)) for h in inst.hosts]
    inst = replace(inst, hosts=hosts)
    reqs = poisson_requests(inst.rates, 8, inst.slot_s, seed, start_s=-2 * inst.slot_s)
    return inst, reqs


CFG = SimConfig(start_s=0.0, n_slots=6, warmup_slots=1, time_limit_s=2.0)


@pytest.mark.parametrize("policy", ["mlds", "ga", "random", "lru"])
def test_seeded_runs_are_deterministic(policy: str) -> None:
    inst, reqs = small_scenario(3)
    a = simulate(inst, reqs, policy, CFG)
    b = simulate(inst, reqs, policy, CFG)
    assert a.summary() | {"plan_seconds": 0} == b.summary() | {"plan_seconds": 0}
    assert [s.cost for s in a.slots] == [s.cost for s in b.slots]
    assert [s.assignment for s in a.slots] == [s.assignment for s in b.slots]


@pytest.mark.parametrize("overflow", [True, False])
def test_gpu_memory_never_exceeded(overflow: bool) -> None:
    for seed in (1, 2):
        inst, reqs = small_scenario(seed)
        cfg = replace(CFG, overflow=overflow)
        for policy in POLICIES:
            r = simulate(inst, reqs, policy, cfg)
            for h in inst.hosts:
                assert r.peak_gpu_bytes[h.id] <= h.gpu_bytes, (policy, h.id)
            assert r.requests == sum(1 for q in reqs if 0 <= q.t < 6 * inst.slot_s) - sum(
                1 for q in reqs if 0 <= q.t < inst.slot_s
            )


def test_infeasible_start_is_cut_to_capacity() -> None:
    inst = tiny()
    small = replace(inst, hosts=[replace(inst.hosts[0], gpu_bytes=2 * G, disk_bytes=2 * G)])
    start = replace(small, current={("A", "e"): "resident", ("B", "e"): "resident"})
    assert feasible_start(start) == {("A", "e"): "resident"}  # B no longer fits the disk


def burst_trace() -> list[Request]:
    """A alone for three 10-s slots, then a burst of B in slot 3, then nothing."""
    reqs = [Request(10.0 * k + 0.5 * i, "A") for k in range(3) for i in range(6)]
    return reqs + [Request(30.0 + 0.25 * i, "B") for i in range(20)]


def test_plans_never_see_the_slot_they_plan() -> None:
    seen: list[dict[str, float]] = []

    def spy(inst: Instance, slot: int) -> Mapping[str, Option]:
        seen.append(dict(inst.rates))
        return {m.id: CLOUD for m in inst.models}

    cfg = SimConfig(start_s=0.0, n_slots=5)
    r = simulate(tiny(), burst_trace(), spy, cfg)
    assert [s.planned_rates for s in r.slots] == seen
    assert all(rates["B"] == 0.0 for rates in seen[:4])  # the burst is in slot 3
    assert seen[4]["B"] > 0.0  # known once slot 3 is over
    assert seen[0]["A"] == 0.0  # nothing before slot 0
    for name in ("mlds", "exact"):
        planned = [s.planned_rates for s in simulate(tiny(), burst_trace(), name, cfg).slots]
        assert planned == seen
    hindsight = simulate(tiny(), burst_trace(), HINDSIGHT, cfg).slots
    assert hindsight[3].planned_rates == {"A": 0.0, "B": 2.0}  # the yardstick does see it


def test_history_primes_the_estimator() -> None:
    history = [Request(-10.0 + 0.5 * i, "A") for i in range(10)]
    r = simulate(tiny(), [*history, Request(1.0, "A")], "mlds", SimConfig(start_s=0.0))
    assert r.slots[0].planned_rates["A"] == pytest.approx(1.0)  # 10 in a slot: a surge
    assert r.requests == 1  # history is not served


def test_unknown_policy_and_model_are_refused() -> None:
    with pytest.raises(KeyError):
        simulate(tiny(), TRACE, "nope")
    with pytest.raises(RuntimeError):
        simulate(tiny(), [Request(0.0, "C")], "mlds")


# ---------------------------------------------------------------------------------------
# Replay readers on tiny traces in the real formats
# ---------------------------------------------------------------------------------------

GENTD26_HEADER = (
    "gmt_create,predict_type,predict_status,exec_time_seconds,groupId,prompt_length,"
    "negative_prompt_length,num_images_per_prompt,num_inference_steps,"
    "checkpoint_model_version_id,num_lora"
)


def write_gentd26(folder: Path) -> None:
    rows = [
        "2024-11-15 16:57:50,TXT_2_IMG,SUCCEED,32.0,G0000,63.0,26.0,1.0,30.0,M0000,0",
        "2024-11-15 16:58:10,TXT_2_IMG,SUCCEED,43.0,G0001,93.0,,4.0,40.0,M0001,0",
        "2024-11-15 16:57:55,IMG_2_IMG,FAILED,3.0,G0001,93.0,,,,M0001,1",
        "2024-11-15 16:59:50,TXT_2_IMG,SUCCEED,30.0,G0002,10.0,,1.0,20.0,M0001,0",
        "2024-11-15 17:01:00,TXT_2_IMG,SUCCEED,30.0,G0002,10.0,,1.0,20.0,,0",
    ]
    folder.mkdir()
    (folder / "lora_request_trace.csv").write_text("\n".join([GENTD26_HEADER, *rows]) + "\n")
    loads = ["timestamp_anon,value,container_ip"]
    loads += [f"{1662859290 + i}.0,{1000 * (i + 1)}.0,abc{i}" for i in range(10)]
    (folder / "basemodel_update_latency_anon.csv").write_text("\n".join(loads) + "\n")


def write_azure(folder: Path) -> None:
    folder.mkdir()
    (folder / "AzureLLMInferenceTrace_code.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,4808,16\n"
        "2023-11-16 18:17:05.0319600,3180,48\n"
    )
    (folder / "AzureLLMInferenceTrace_conv.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.0000000,374,64\n"
        "2023-11-16 18:18:04.5000000,396,128\n"
    )


def write_measured(path: Path) -> None:
    def model(size: float, vram: float, cold: float, infer: float) -> dict[str, object]:
        return {
            "storage_bytes": int(size * G),
            "vram_resident_bytes": int(vram * G),
            "vram_peak_bytes": int(vram * G),
            "lib_cold_s": cold,
            "inference": {"seconds": infer},
        }

    doc = {
        "bandwidth": {"h2d_pinned_GBps": 50.0},
        "models": {
            "sd-1.5": model(2.1, 2.8, 2.5, 1.3),
            "sdxl-base-1.0": model(6.9, 9.6, 7.5, 2.7),
            "qwen2.5-1.5B": model(3.1, 3.1, 2.8, 3.3),
            "llama-3.1-8B": model(16.1, 16.1, 10.7, 2.0),
        },
    }
    path.write_text(json.dumps(doc))


def test_read_gentd26(tmp_path: Path) -> None:
    write_gentd26(tmp_path / "g")
    recs = replay.read_gentd26(tmp_path / "g")
    assert [r.model for r in recs] == ["M0000", "M0001", "M0001", "M0001"]  # no-model row out
    assert [r.t for r in recs] == [0.0, 5.0, 20.0, 120.0]  # sorted by time
    assert [r.work for r in recs] == [1.5, 1.0, 8.0, 1.0]  # steps/20 x images (default 20, 1)
    assert replay.popularity_ranks(recs) == ["M0001", "M0000"]
    assert [replay.diffusion_profile(r) for r in range(4)] == [
        "sdxl-base-1.0",
        "sd-1.5",
        "sd-1.5",
        "sdxl-base-1.0",
    ]
    lat = replay.read_load_latencies(tmp_path / "g")
    assert lat == [float(i + 1) for i in range(10)]  # ms to s
    loads = replay.trace_load_times(
        ["M0001", "M0000"], {"M0001": "sdxl-base-1.0", "M0000": "sd-1.5"}, lat, seed=0
    )
    assert loads["M0000"] <= 5.0 < loads["M0001"]  # small models draw from the lower half


def test_read_azure(tmp_path: Path) -> None:
    write_azure(tmp_path / "a")
    recs = replay.read_azure(tmp_path / "a")
    assert [r.model for r in recs] == ["conv", "code", "code", "conv"]
    assert [r.t for r in recs] == pytest.approx([0.0, 0.97996, 2.03196, 61.5])
    assert [r.work for r in recs] == [2.0, 0.5, 1.5, 4.0]  # generated tokens / 32


@pytest.mark.parametrize("kind", ["gentd26", "azure-llm"])
def test_replay_main_writes_the_json(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "trace"
    (write_gentd26 if kind == "gentd26" else write_azure)(folder)
    write_measured(tmp_path / "measured.json")
    out = tmp_path / "out.json"
    doc_md = tmp_path / "bench.md"
    args = [
        "--trace",
        str(folder),
        "--kind",
        kind,
        "--measured",
        str(tmp_path / "measured.json"),
        "--json",
        str(out),
        "--warmup-slots",
        "0",
        "--speedup",
        "1",
        "--sample",
        "1",
        "--policies",
        "mlds",
        "lru",
        "cloud-only",
        HINDSIGHT,
        "--doc",
        str(doc_md),
        "--label",
        "t",
    ]
    assert replay.main(args) == 0
    doc = json.loads(out.read_text())
    assert set(doc["policies"]) == {"mlds", "lru", "cloud-only", HINDSIGHT}
    keys = {
        "total_cost",
        "mean_latency_s",
        "p95_latency_s",
        "cloud_share",
        "switches",
        "bytes_fetched",
    }
    for result in doc["policies"].values():
        assert keys <= set(result)
    assert doc["assumptions"]["kind"] == kind
    assert doc["policies"]["cloud-only"]["cloud_share"] == 1.0
    text = doc_md.read_text()
    assert "<!-- t:begin -->" in text and "| mlds |" in text
    replay.update_doc(doc_md, "t", "replaced")
    assert doc_md.read_text().count("<!-- t:begin -->") == 1
    assert "replaced" in doc_md.read_text() and "| mlds |" not in doc_md.read_text()


def test_replay_over_seeds_reports_each_and_the_differences(tmp_path: Path) -> None:
    folder = tmp_path / "trace"
    write_gentd26(folder)
    write_measured(tmp_path / "measured.json")
    out, doc_md = tmp_path / "out.json", tmp_path / "bench.md"
    args = ["--trace", str(folder), "--kind", "gentd26", "--measured"]
    args += [str(tmp_path / "measured.json"), "--warmup-slots", "0", "--speedup", "1"]
    args += ["--sample", "0.8"]
    policies = ["--policies", "mlds", "lru", "cloud-only"]
    seeds = [*policies, "--seeds", "0", "1", "--doc", str(doc_md), "--label", "t"]
    assert replay.main([*args, *seeds, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["seeds"] == [0, 1] and set(doc["total_cost"]) == {"mlds", "lru", "cloud-only"}
    assert len(set(doc["total_cost"]["cloud-only"])) == 2  # the seeds thin differently
    for name in ("mlds", "lru", "cloud-only"):  # one replay per seed, as each alone gives
        alone = tmp_path / f"{name}.json"
        for k, cost in enumerate(doc["total_cost"][name]):
            one_args = [*args, "--policies", name, "--seed", str(k)]
            assert replay.main([*one_args, "--json", str(alone)]) == 0
            assert json.loads(alone.read_text())["policies"][name]["total_cost"] == cost
    text = doc_md.read_text()
    assert "<!-- t-seeds:begin -->" in text and "| seed 0 | seed 1 |" in text
    assert len(doc["p95_latency_s"]["lru"]) == 2 and "| mean latency vs lru (95%) |" in text


def test_read_requests_sorts_and_refuses_bad_rows(tmp_path: Path) -> None:
    good = tmp_path / "r.csv"
    good.write_text("time_s,model,kind,work\n5,b,image,2\n0.5,a,text,1\n5,a,text,0.25\n")
    recs = replay.read_requests(good)
    assert [(r.t, r.model, r.kind, r.work) for r in recs] == [
        (0.5, "a", "text", 1.0),
        (5.0, "b", "image", 2.0),  # same time: the file's order
        (5.0, "a", "text", 0.25),
    ]
    assert replay.profiles_by_rank(recs) == {"a": "llama-3.1-8B", "b": "sdxl-base-1.0"}
    bad = {
        "t,model,kind,work\n1,a,text,1\n": "header",
        "time_s,model,kind,work\n1,a,video,1\n": ":2:",
        "time_s,model,kind,work\n1,a,text,1\nx,a,text,1\n": ":3:",
        "time_s,model,kind,work\n1,a,text,0\n": "work > 0",
        "time_s,model,kind,work\n-1,a,text,1\n": "time_s must be >= 0",
    }
    for text, says in bad.items():
        good.write_text(text)
        with pytest.raises(ValueError, match=says):
            replay.read_requests(good)


def test_read_mooncake(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "conversation_trace.jsonl").write_text(
        '{"timestamp": 2000, "input_length": 10, "output_length": 64, "hash_ids": [1]}\n'
        '{"timestamp": 500, "input_length": 10, "output_length": 16, "hash_ids": [1]}\n'
    )
    recs = replay.read_mooncake(folder)
    assert [(r.t, r.model, r.kind, r.work) for r in recs] == [
        (0.0, "kimi", "text", 0.5),
        (1.5, "kimi", "text", 2.0),
    ]


@pytest.mark.parametrize(
    ("kind", "hosts", "work_mean"), [("gentd26", 2, "trace"), ("azure-llm", 1, "model")]
)
def test_an_exported_trace_replays_as_its_own_kind(
    tmp_path: Path, kind: str, hosts: int, work_mean: str
) -> None:
    # Both readers write the generic format; replaying the export as `requests` with the
    # kind's settings gives the same scenario and the same results.
    folder = tmp_path / "trace"
    (write_gentd26 if kind == "gentd26" else write_azure)(folder)
    write_measured(tmp_path / "measured.json")
    common = ["--measured", str(tmp_path / "measured.json"), "--warmup-slots", "0"]
    common += ["--speedup", "1", "--sample", "1", "--policies", "mlds", "lru"]
    csv_path = tmp_path / "export.csv"
    own, generic = tmp_path / "own.json", tmp_path / "generic.json"
    args = ["--trace", str(folder), "--kind", kind, "--json", str(own), "--export", str(csv_path)]
    assert replay.main([*args, *common]) == 0
    assert csv_path.read_text().startswith("time_s,model,kind,work\n")
    args = ["--trace", str(csv_path), "--kind", "requests", "--json", str(generic)]
    args += ["--hosts", str(hosts), "--work-mean", work_mean]
    assert replay.main([*args, *common]) == 0
    a, b = json.loads(own.read_text()), json.loads(generic.read_text())
    for name in ("mlds", "lru"):
        assert a["policies"][name]["total_cost"] == pytest.approx(b["policies"][name]["total_cost"])
        assert a["policies"][name]["requests"] == b["policies"][name]["requests"]
    assert a["assumptions"]["profiles"] == b["assumptions"]["profiles"]


def test_replay_refuses_what_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("when,model\n1,a\n")
    assert replay.main(["--trace", str(bad), "--kind", "requests"]) == 2
    assert "header" in capsys.readouterr().out
    assert (
        replay.main(["--trace", str(bad), "--kind", "requests", "--load-latencies", "trace"]) == 2
    )
