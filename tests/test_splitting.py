"""The decision model v2: split traffic, replicas of a hot model, the queueing wait, π from
the pool's sharers. Hand-worked instances where splitting and a second replica are the
optimum, checked against the MILP (`exact`) and the wait's closed form."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from orchestrator.core.algorithms import solve
from orchestrator.core.placement import (
    CLOUD,
    CloudSpec,
    Decision,
    HostSpec,
    Instance,
    ModelSpec,
    Option,
    Perf,
    evaluate_split,
    host_loads,
    pool_miss_from,
    violations_split,
)
from orchestrator.core.queueing import linear_g, mg1_g, offered_factor, shed_g, wait_curve
from orchestrator.core.splitting import best_split

G = 1_000_000_000


def hot_instance(n_hosts: int, rate: float = 1.0) -> Instance:
    """One model of 2 s per request at `rate` req/s: 120 busy seconds a 60 s slot, more
    than one host's compute cap (0.9 · 60 = 54 s); the cloud takes 3 s + 80 ms."""
    hosts = [HostSpec(f"h{i}", 100 * G, 100 * G, 40 * G, rho_max=0.9) for i in range(n_hosts)]
    return Instance(
        hosts=hosts,
        models=[ModelSpec("hot", "text", 4 * G)],
        perf={("hot", h.id): Perf(4 * G, 2.0, 0.5, 2.0) for h in hosts},
        rates={"hot": rate},
        cloud=CloudSpec(wan_rtt_s=0.08, infer_s={"hot": 3.0}),
        current={("hot", h.id): "resident" for h in hosts},
    )


def test_a_model_hotter_than_a_host_is_split_between_the_edge_and_the_cloud() -> None:
    inst = hot_instance(1)
    for name in ("exact", "mlds"):
        d = solve(name, inst)
        fr = d.split["hot"]
        assert violations_split(inst, d.split, d.levels) == []
        assert sum(fr.values()) == pytest.approx(1.0)
        assert 0 < fr[CLOUD] < 1 and fr[Option("h0", "resident")] > 0, (name, fr)
        # the one-option model could only send it all to the cloud (compute cap)
        assert d.cost.total < solve("cloud-only", inst).cost.total
    assert solve("mlds", inst).cost.total == pytest.approx(solve("exact", inst).cost.total)


def test_two_hosts_and_the_cloud_serve_a_model_no_host_can_carry() -> None:
    inst = hot_instance(2)
    exact = solve("exact", inst)
    mlds = solve("mlds", inst)
    for d in (exact, mlds):
        fr = d.split["hot"]
        assert set(fr) == {CLOUD, Option("h0", "resident"), Option("h1", "resident")}, fr
        # identical hosts: the convex wait makes the balanced split optimal
        assert fr[Option("h0", "resident")] == pytest.approx(fr[Option("h1", "resident")], 1e-4)
        assert d.counts()["replicas"] == 1
    assert mlds.cost.total == pytest.approx(exact.cost.total, rel=1e-6)
    # one replica only is worse than two
    one = best_split(inst, {("hot", "h0"): "resident"})
    assert exact.cost.total < one.total


def test_mlds_adds_a_replica_that_the_one_option_search_cannot_see() -> None:
    # resident on h0, only on h1's disk: the replica on h1 is a fractional move
    inst = hot_instance(2)
    cold = Instance(
        hosts=inst.hosts,
        models=inst.models,
        perf=inst.perf,
        rates=inst.rates,
        cloud=inst.cloud,
        current={("hot", "h0"): "resident", ("hot", "h1"): "stored"},
    )
    d = solve("mlds", cold)
    assert {o.host for o in d.split["hot"]} == {None, "h0", "h1"}
    assert d.cost.total == pytest.approx(solve("exact", cold).cost.total, rel=1e-6)


def test_mlds_adds_a_replica_on_every_host_a_hot_model_wants() -> None:
    # 8 hosts of a model four hosts could not carry, on every disk, resident nowhere: the
    # optimum holds it on all eight (no host's memory is worth keeping idle while the
    # cloud is slower); the fractional moves must not stop at a fixed number of replicas
    inst = hot_instance(8, rate=4.0)
    inst = replace(inst, current={("hot", h.id): "stored" for h in inst.hosts})
    exact = solve("exact", inst)
    mlds = solve("mlds", inst)
    assert len({o.host for o in exact.split["hot"]} - {None}) == 8
    assert {o.host for o in mlds.split["hot"]} - {None} == {h.id for h in inst.hosts}
    assert mlds.cost.total == pytest.approx(exact.cost.total, rel=1e-6)


def test_the_wait_is_the_linearised_mg1_curve_and_counts_in_the_cost() -> None:
    inst = hot_instance(1, rate=0.2)  # 24 busy seconds: ρ = 0.4, a breakpoint of G
    inst = replace(inst, cloud=replace(inst.cloud, overflow=False))  # a queue that never sheds
    split = {"hot": {Option("h0", "resident"): 1.0}}
    levels = {("hot", "h0"): "resident"}
    load = host_loads(inst, split)["h0"]
    assert load.rho == pytest.approx(0.4)
    assert linear_g(0.4) == pytest.approx(mg1_g(0.4))
    # P-K with c² = 1: Wq = ρ/(1 − ρ)·E[S] = 0.4/0.6 · 2 s per request
    assert load.wait_s == pytest.approx(0.4 / 0.6 * 2.0)
    assert load.true_wait_s == pytest.approx(load.wait_s)
    cost = evaluate_split(inst, split, levels)
    assert cost.wait == pytest.approx(12 * 0.4 / 0.6 * 2.0)  # 12 requests in the slot
    # G never exceeds the true curve (tangents: an outer approximation of the epigraph)
    for r in [0.0, 0.13, 0.37, 0.61, 0.88, 0.93, 0.97]:
        assert linear_g(r) <= mg1_g(r) + 1e-12


def _shedding_queue(a: float, d: float, n: int, seed: int) -> tuple[float, float]:
    """Simulate an M/M/1 queue (service rate 1, offered load a) whose arrivals join only
    while the work ahead of them is at most d: (served utilisation, total wait / time)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / a, n)
    sizes = rng.exponential(1.0, n)
    work = t = busy = waited = 0.0
    for gap, size in zip(gaps, sizes, strict=True):
        t += gap
        work = max(0.0, work - gap)
        if work <= d:
            waited += work
            busy += size
            work += size
    return busy / t, waited / t


@pytest.mark.parametrize(("a", "d"), [(0.6, 0.5), (1.5, 0.5), (0.9, 3.0), (2.0, 1.0)])
def test_the_shedding_curve_matches_a_simulated_queue_that_sheds(a: float, d: float) -> None:
    served, wait = _shedding_queue(a, d, 200_000, seed=7)
    # the curve at the simulated served utilisation gives the simulated wait per unit time
    assert shed_g(served, d) == pytest.approx(wait, rel=0.06, abs=2e-3)
    assert offered_factor(served, d) * served == pytest.approx(a, rel=0.05)


def test_the_shedding_curve_is_convex_bounded_and_tends_to_mg1() -> None:
    xs = [i / 100 for i in range(1, 99)]
    for d in (0.3, 1.0, 5.0):
        ys = [shed_g(x, d) for x in xs]
        assert all(y2 >= y1 for y1, y2 in itertools.pairwise(ys))
        assert all(ys[i - 1] + ys[i + 1] >= 2 * ys[i] - 1e-9 for i in range(1, len(ys) - 1))
        assert shed_g(0.999, d) <= d
        curve = wait_curve(d)
        assert all(curve.linear(x) <= curve.g(x) + 1e-9 for x in xs)
        assert all(curve.g(x) <= mg1_g(x) + 1e-9 for x in xs)
    for x in (0.2, 0.5, 0.8):
        assert shed_g(x, 200.0) == pytest.approx(mg1_g(x), rel=1e-3)
    assert wait_curve(None).linear(0.95) == pytest.approx(linear_g(0.95))
    assert math.isinf(mg1_g(1.0))


def test_a_host_that_sheds_to_the_cloud_takes_more_of_a_hot_model() -> None:
    # the gateway sends requests past a host whose queue would outlast the cloud, so the
    # host never queues without bound: the split leans on it more than M/G/1 pricing would
    sheds = hot_instance(1)
    queues = replace(sheds, cloud=replace(sheds.cloud, overflow=False))
    assert sheds.shed_threshold("h0") == pytest.approx((0.08 + 3.0 - 2.0) / 2.0)
    assert queues.shed_threshold("h0") is None
    edge = Option("h0", "resident")
    x_shed = solve("exact", sheds).split["hot"][edge]
    x_queue = solve("exact", queues).split["hot"][edge]
    assert x_shed > x_queue > 0


def test_pool_miss_follows_the_models_sharing_the_pool_and_their_rates() -> None:
    host = HostSpec("e", 100 * G, 100 * G, 40 * G)
    models = [ModelSpec(m, "text", G) for m in ("a", "b", "c")]
    inst = Instance(
        hosts=[host],
        models=models,
        perf={(m.id, "e"): Perf(G, 2.0, 0.5, 1.0) for m in models},
        rates={"a": 0.3, "b": 0.1, "c": 0.2},
    )
    split = {
        "a": {Option("e", "stored"): 1.0},
        "b": {Option("e", "cached"): 1.0},
        "c": {CLOUD: 1.0},
    }
    d = Decision(
        {m: next(iter(fr)) for m, fr in split.items()},
        evaluate_split(inst, split, {("a", "e"): "stored", ("b", "e"): "cached"}),
        "t",
        0.0,
        split=split,
    )
    pi = pool_miss_from(inst, d, max_wait_s=0.0)  # first in, first out
    assert pi[("a", "e")] == pytest.approx(0.1 / 0.4)
    assert pi[("b", "e")] == pytest.approx(0.3 / 0.4)
    assert pi[("c", "e")] == pytest.approx(0.4 / 0.6)  # if it joined with all its traffic
    alone = {"a": {Option("e", "stored"): 1.0}, "b": {CLOUD: 1.0}, "c": {CLOUD: 1.0}}
    d1 = Decision({m: next(iter(fr)) for m, fr in alone.items()}, d.cost, "t", 0.0, split=alone)
    assert pool_miss_from(inst, d1, max_wait_s=0.0)[("a", "e")] == 0.0
    assert pool_miss_from(inst, d1)[("a", "e")] == 0.0


def test_replica_candidates_are_priced_as_the_cost_model_prices_them() -> None:
    from orchestrator.core.placement import Level, holding_cost, per_request_cost
    from orchestrator.core.splitting import _Candidates

    hosts = [
        HostSpec(f"h{i}", 100 * G, 50 * G, 40 * G, backhaul_Bps=(i + 1) * 1e9) for i in range(3)
    ]
    models = [ModelSpec(f"m{i}", "text", (i + 1) * G) for i in range(4)]
    perf = {
        (m.id, h.id): Perf((j + 1) * G, 1.0 + j, 0.3 * (k + 1), 0.5 + 0.1 * k)
        for j, m in enumerate(models)
        for k, h in enumerate(hosts)
    }
    inst = Instance(
        hosts=hosts,
        models=models,
        perf=perf,
        rates={"m0": 0.5, "m1": 0.1, "m3": 2.0},  # m2 idle: no candidates
        pool_miss={("m0", "h1"): 0.25, ("m3", "h2"): 0.0},
        current={("m0", "h0"): "resident", ("m1", "h1"): "cached", ("m3", "h2"): "stored"},
    )
    c = _Candidates(inst)
    assert {m for m, _ in c.pairs} == {"m0", "m1", "m3"}
    for p, (m, e) in enumerate(c.pairs):
        for col, level in enumerate(Level.ALL):
            assert c.delay[p, col] == pytest.approx(
                per_request_cost(inst, m, Option(e, level)).delay
            )
            assert c.hold[p, col] == pytest.approx(holding_cost(inst, m, e, level).total)


def test_a_host_the_cloud_beats_outright_still_plans_and_routes() -> None:
    from orchestrator.core.placement import routing_weights

    # the cloud answers in 1 s, the host in 2 s: a request should wait there not at all
    inst = replace(hot_instance(1), cloud=CloudSpec(wan_rtt_s=0.0, infer_s={"hot": 1.0}))
    assert inst.shed_threshold("h0") == 0.01
    for name in ("exact", "mlds"):
        d = solve(name, inst)
        weights = routing_weights(inst, d.split)
        assert sum(weights["hot"].values()) == pytest.approx(1.0)
