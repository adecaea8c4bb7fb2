"""π, the pool-miss probability the decision prices a pooled model by, for the swap pool the
agent serves grouped by model (`placement.pool_miss_from`, `genedge.pool_schedule`).

The closed form is checked against the event it claims to be the probability of (sampled
Poisson streams), its limits by hand, and its values against the misses the simulator's
pool, served by the agent's rule, actually makes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from orchestrator.core.placement import (
    GB,
    CloudSpec,
    Decision,
    HostSpec,
    Instance,
    ModelSpec,
    Option,
    Perf,
    evaluate_split,
    grouped_pool_miss,
    pool_miss_from,
)
from sim.simulator import SimConfig, poisson_requests, simulate

G = int(GB)


def test_closed_form_is_the_probability_of_its_event() -> None:
    # a request of m misses iff no m arrived in the last T and another model's request
    # came after m's last one: sampled times back to the last arrival of each stream
    rng = np.random.default_rng(0)
    for own, others, stay in [(0.2, 0.1, 4.0), (0.05, 0.5, 2.0), (1.0, 1.0, 0.7)]:
        back_m = rng.exponential(1 / own, 400_000)
        back_o = rng.exponential(1 / others, 400_000)
        sampled = float(np.mean((back_m > stay) & (back_o < back_m)))
        assert grouped_pool_miss(own, others, stay) == pytest.approx(sampled, abs=0.003)


def test_limits_fifo_alone_and_falling_with_the_stay() -> None:
    assert grouped_pool_miss(0.3, 0.1, 0.0) == pytest.approx(0.1 / 0.4)  # FIFO
    assert grouped_pool_miss(0.3, 0.0, 5.0) == 0.0  # alone in its pool
    assert grouped_pool_miss(0.0, 0.0, 5.0) == 1.0  # no traffic: no evidence
    values = [grouped_pool_miss(0.3, 0.1, t) for t in (0.0, 0.5, 2.0, 8.0, 40.0)]
    assert values == sorted(values, reverse=True) and values[-1] < 1e-4


def two_pooled(rate_a: float, rate_b: float, slot_s: float = 600.0) -> Instance:
    """One host; A (1 s a request, load 3 s) and B (2 s, load 2 s) share its pool."""
    host = HostSpec("e", 10 * G, 0, 10 * G, rho_max=1.0, backhaul_Bps=1e9)
    return Instance(
        hosts=[host],
        models=[ModelSpec("A", "text", 2 * G), ModelSpec("B", "image", G)],
        perf={("A", "e"): Perf(2 * G, 3.0, 1.0, 1.0), ("B", "e"): Perf(G, 2.0, 0.5, 2.0)},
        rates={"A": rate_a, "B": rate_b},
        slot_s=slot_s,
        cloud=CloudSpec(wan_rtt_s=0.1, infer_s={"A": 4.0, "B": 5.0}),
        current={("A", "e"): "stored", ("B", "e"): "stored"},
    )


def both_pooled(inst: Instance) -> Decision:
    split = {"A": {Option("e", "stored"): 1.0}, "B": {Option("e", "stored"): 1.0}}
    levels = {("A", "e"): "stored", ("B", "e"): "stored"}
    return Decision(
        {m: next(iter(fr)) for m, fr in split.items()},
        evaluate_split(inst, split, levels),
        "given",
        0.0,
        split=split,
        levels=levels,
    )


def test_grouping_lowers_pi_below_fifo_and_the_bound_turns_it_off() -> None:
    inst = two_pooled(0.2, 0.1)
    d = both_pooled(inst)
    fifo = pool_miss_from(inst, d, max_wait_s=0.0)
    grouped = pool_miss_from(inst, d, max_wait_s=30.0)
    assert fifo[("A", "e")] == pytest.approx(0.1 / 0.3)
    assert fifo[("B", "e")] == pytest.approx(0.2 / 0.3)
    for key in fifo:
        assert grouped[key] < fifo[key]
    # a bound shorter than the host's expected wait: requests are served overdue, FIFO
    busy = two_pooled(0.5, 0.2)
    assert pool_miss_from(busy, both_pooled(busy), max_wait_s=0.5) == pytest.approx(
        pool_miss_from(busy, both_pooled(busy), max_wait_s=0.0)
    )


@pytest.mark.parametrize(
    ("rate_a", "rate_b"), [(0.2, 0.1), (0.1, 0.1), (0.3, 0.05), (0.05, 0.05), (0.4, 0.1)]
)
def test_grouped_pi_predicts_the_simulated_pool_better_than_fifo(
    rate_a: float, rate_b: float
) -> None:
    # two hours of Poisson traffic on one host whose pool the simulator serves by the
    # agent's rule (30 s bound); the misses it makes against π's prediction
    inst = two_pooled(rate_a, rate_b)
    reqs = poisson_requests(inst.rates, n_slots=12, slot_s=inst.slot_s, seed=5)
    fixed = {"A": Option("e", "stored"), "B": Option("e", "stored")}
    # a fixed plan at slot boundaries only (a surge plan would be checked against the
    # surged rates, which this fixed plan is not made for)
    cfg = SimConfig(overflow=False, start_s=0.0, replan_on_surge=False)
    r = simulate(inst, reqs, lambda i, k: fixed, cfg)
    observed = r.pool_loads / r.requests
    d = both_pooled(inst)
    share = {m: rate / (rate_a + rate_b) for m, rate in inst.rates.items()}
    fifo = pool_miss_from(inst, d, max_wait_s=0.0)
    grouped = pool_miss_from(inst, d)
    predicted = sum(share[m] * grouped[(m, "e")] for m in share)
    predicted_fifo = sum(share[m] * fifo[(m, "e")] for m in share)
    assert abs(predicted - observed) <= abs(predicted_fifo - observed)
    assert predicted == pytest.approx(observed, abs=0.03)


def test_the_simulator_derives_pi_for_its_bound() -> None:
    # slot 1's plan sees π from slot 0's decision: FIFO values with bound 0, lower with 30
    # (with `grouped_pi`; by default the simulator's decisions take the FIFO value)
    inst = replace(two_pooled(0.2, 0.1, slot_s=60.0), rates={})
    reqs = poisson_requests({"A": 0.2, "B": 0.1}, n_slots=3, slot_s=60.0, seed=1)
    seen: dict[float, list[dict[tuple[str, str], float]]] = {}
    for bound in (0.0, 30.0):
        got: list[dict[tuple[str, str], float]] = []

        def plan(i: Instance, k: int, got: list = got) -> Decision:
            got.append(dict(i.pool_miss))
            return both_pooled(i)

        cfg = SimConfig(overflow=False, start_s=0.0, pool_max_wait_s=bound, grouped_pi=True)
        simulate(inst, reqs, plan, cfg)
        seen[bound] = got
    assert seen[0.0][2][("A", "e")] > seen[30.0][2][("A", "e")]
