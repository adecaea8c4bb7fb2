"""Rate estimation with a fake clock: convergence, half-life decay, surges, persistence."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from orchestrator.core.rates import PoolStats, RateEstimator, poisson_tail


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def steady(est: RateEstimator, clock: FakeClock, model: str, per_slot: int, slots: int) -> None:
    """``per_slot`` arrivals in the middle of each of ``slots`` slots, then close them."""
    for _ in range(slots):
        start = est.slot_start
        est.observe(model, per_slot, at=start + est.slot_s / 2)
        clock.t = start + est.slot_s
        est.roll()


def test_alpha_is_the_documented_half_life() -> None:
    est = RateEstimator(slot_s=60, half_life_s=300, clock=FakeClock())
    assert est.alpha == pytest.approx(1 - 2 ** (-60 / 300))
    assert (1 - est.alpha) ** 5 == pytest.approx(0.5)


def test_unknown_model_rate_is_zero() -> None:
    est = RateEstimator(clock=FakeClock())
    assert est.rate("nope") == 0.0
    assert est.rates() == {}
    assert est.models() == set()
    assert est.counts_in_slot() == {}


def test_poisson_arrivals_converge_to_the_true_rate() -> None:
    clock = FakeClock(0.0)
    est = RateEstimator(slot_s=60, half_life_s=300, clock=clock)
    t_end = 60 * 60.0  # one hour of traffic
    events = []
    for model, lam, seed in (("sd", 2.0, 7), ("llm", 0.5, 8)):
        rng = random.Random(seed)
        t = rng.expovariate(lam)
        while t < t_end:
            events.append((t, model))
            t += rng.expovariate(lam)
    # Interleaved in time order, as a gateway would report them.
    events.sort()
    for t, model in events:
        est.observe(model, at=t)
    clock.t = t_end
    est.roll()
    assert est.rate("sd") == pytest.approx(2.0, rel=0.1)
    assert est.rate("llm") == pytest.approx(0.5, rel=0.15)
    assert est.models() == {"sd", "llm"}


def test_a_new_model_gets_its_rate_at_once_and_is_reported_as_surged() -> None:
    clock = FakeClock(0.0)
    est = RateEstimator(slot_s=60, clock=clock)
    est.observe("m", 120, at=30.0)
    assert est.counts_in_slot() == {"m": 120}
    clock.t = 60.0
    assert est.roll() == ["m"]
    assert est.rate("m") == pytest.approx(2.0)
    assert est.counts_in_slot() == {}
    # Too few requests to call it a surge: the EWMA ramps up from zero.
    est.observe("rare", 2, at=90.0)
    clock.t = 120.0
    assert est.roll() == []
    assert est.rate("rare") == pytest.approx(est.alpha * 2 / 60)


def test_rate_drop_decays_with_the_half_life() -> None:
    clock = FakeClock(0.0)
    est = RateEstimator(slot_s=60, half_life_s=300, clock=clock, half_lives_s=None)
    steady(est, clock, "m", 60, 10)  # 1 req/s
    assert est.rate("m") == pytest.approx(1.0)
    steady(est, clock, "m", 12, 5)  # 0.2 req/s for one half-life (300 s)
    # The gap to the new rate halves every half-life: 0.2 + 0.8 / 2.
    assert est.rate("m") == pytest.approx(0.6, rel=1e-9)
    steady(est, clock, "m", 12, 5)
    assert est.rate("m") == pytest.approx(0.2 + 0.8 / 4, rel=1e-9)


def test_empty_slots_decay_even_when_time_jumps() -> None:
    clock = FakeClock(0.0)
    est = RateEstimator(slot_s=60, half_life_s=300, clock=clock, half_lives_s=None)
    steady(est, clock, "m", 60, 3)
    assert est.rate("m") == pytest.approx(1.0)
    start = est.slot_start
    # Five silent slots closed by one call.
    assert est.roll(now=start + 5 * 60 + 1) == []
    assert est.rate("m") == pytest.approx(0.5)
    assert est.slot_start == pytest.approx(start + 5 * 60)
    # Closing them one by one gives the same number.
    clock2 = FakeClock(0.0)
    est2 = RateEstimator(slot_s=60, half_life_s=300, clock=clock2, half_lives_s=None)
    steady(est2, clock2, "m", 60, 3)
    for _ in range(5):
        est2.roll(now=est2.slot_start + 60)
    assert est2.rate("m") == pytest.approx(est.rate("m"))
    # A huge jump is closed-form, not a loop over a million slots.
    est.roll(now=start + 60.0 * 1_000_000)
    assert est.rate("m") == pytest.approx(0.0, abs=1e-12)
    assert "m" in est.models()


def test_surge_is_detected_within_the_slot_and_reported_once() -> None:
    clock = FakeClock(0.0)
    est = RateEstimator(slot_s=60, half_life_s=300, surge_factor=3, surge_min_count=5, clock=clock)
    steady(est, clock, "m", 6, 20)  # 0.1 req/s
    assert est.rate("m") == pytest.approx(0.1)
    t0 = est.slot_start
    # 30 requests in the first 5 s: too early to tell (elapsed < 10 s).
    est.observe("m", 30, at=t0 + 5)
    assert est.check_surges(now=t0 + 5) == []
    assert est.rate("m") == pytest.approx(0.1)
    # At 15 s: 30 / 15 = 2 req/s > 3 x 0.1 and 30 >= 5: the estimate jumps now.
    assert est.check_surges(now=t0 + 15) == ["m"]
    assert est.rate("m") == pytest.approx(2.0)
    # Still surging, and growing: followed, but reported only once per slot.
    est.observe("m", 30, at=t0 + 20)
    assert est.check_surges(now=t0 + 20) == []
    assert est.rate("m") == pytest.approx(3.0)
    # The slot closes at 60 req/60 s = 1 req/s, still a surge against 0.1: the estimate is
    # the slot's rate, and the surge is not reported again.
    clock.t = t0 + 60
    assert est.roll() == []
    assert est.rate("m") == pytest.approx(1.0)
    # Next slot at the same high rate: the new normal, no surge, no change.
    steady(est, clock, "m", 60, 1)
    assert est.rate("m") == pytest.approx(1.0)


def test_poisson_tail() -> None:
    # P(N >= 5) at mean 1.5: 1 - e^-1.5 (1 + 1.5 + 1.5^2/2 + 1.5^3/6 + 1.5^4/24)
    head = math.exp(-1.5) * sum(1.5**k / math.factorial(k) for k in range(5))
    assert poisson_tail(5, 1.5) == pytest.approx(1 - head)
    assert poisson_tail(0, 3.0) == 1.0 and poisson_tail(1, 0.0) == 0.0
    assert poisson_tail(1, 2.0) == pytest.approx(1 - math.exp(-2.0))
    assert poisson_tail(3000, 1000.0) == pytest.approx(0.0, abs=1e-12)  # no overflow
    assert poisson_tail(1000, 1000.0) == pytest.approx(0.5, abs=0.02)


def test_noise_at_a_steady_rate_is_not_a_surge() -> None:
    # 0.15 req/s: 5 arrivals in the first 10 s of a slot (1.5 expected) happen about once
    # in 54 checks (P = 0.019); the ratio test alone calls it a surge, the tail test not
    def five_early(alpha: float) -> list[str]:
        clock = FakeClock(0.0)
        est = RateEstimator(slot_s=60, clock=clock, surge_alpha=alpha)
        steady(est, clock, "m", 9, 30)
        t0 = est.slot_start
        est.observe("m", 5, at=t0 + 10)
        return est.check_surges(now=t0 + 10)

    assert five_early(alpha=1.0) == ["m"]
    assert five_early(alpha=1e-4) == []
    # a model never seen before: any 5 arrivals are a surge (nothing was expected)
    clock = FakeClock(0.0)
    est = RateEstimator(slot_s=60, clock=clock)
    est.observe("new", 5, at=10.0)
    assert est.check_surges(now=10.0) == ["new"]
    # and 30 in 10 s against 1.5 expected is one too
    est = RateEstimator(slot_s=60, clock=clock)
    steady(est, clock, "m", 9, 30)
    est.observe("m", 30, at=est.slot_start + 10)
    assert est.check_surges(now=est.slot_start + 10) == ["m"]


def test_surge_seen_only_when_the_slot_closes_is_reported_by_roll() -> None:
    clock = FakeClock(0.0)
    est = RateEstimator(slot_s=60, clock=clock)
    steady(est, clock, "m", 6, 10)
    t0 = est.slot_start
    est.observe("m", 60, at=t0 + 30)
    # Nobody polled during the slot; an arrival in the next slot closes it.
    est.observe("m", 1, at=t0 + 61)
    assert est.rate("m") == pytest.approx(1.0)
    assert est.roll(now=t0 + 62) == ["m"]
    assert est.roll(now=t0 + 63) == []


def test_burst_not_confirmed_by_the_whole_slot_is_undone() -> None:
    clock = FakeClock(0.0)
    est = RateEstimator(slot_s=60, half_life_s=300, surge_factor=3, clock=clock)
    steady(est, clock, "m", 30, 20)  # 0.5 req/s
    t0 = est.slot_start
    est.observe("m", 30, at=t0 + 5)
    assert est.check_surges(now=t0 + 10) == ["m"]  # 3 req/s for now
    assert est.rate("m") == pytest.approx(3.0)
    clock.t = t0 + 60  # nothing more: 30 in the slot is exactly the usual 0.5 req/s
    assert est.roll() == []
    assert est.rate("m") == pytest.approx(0.5)


def test_short_slots_use_the_slot_as_the_minimum_elapsed_time() -> None:
    clock = FakeClock(0.0)
    est = RateEstimator(slot_s=4, half_life_s=20, clock=clock)
    est.observe("m", 10, at=1.0)
    assert est.check_surges(now=3.0) == []  # 3 s < min(4, 10)
    # The slot has ended at 4 s: the closing slot shows the surge.
    assert est.check_surges(now=4.0) == ["m"]
    assert est.rate("m") == pytest.approx(10 / 4)


def test_late_arrivals_count_in_the_open_slot() -> None:
    clock = FakeClock(0.0)
    est = RateEstimator(slot_s=60, clock=clock)
    clock.t = 130.0
    est.roll()
    est.observe("m", 3, at=10.0)  # its slot is closed
    assert est.counts_in_slot() == {"m": 3}


def test_snapshot_restore_round_trips_through_json() -> None:
    clock = FakeClock(0.0)
    est = RateEstimator(slot_s=60, half_life_s=120, surge_factor=4, clock=clock)
    steady(est, clock, "a", 60, 5)
    steady(est, clock, "b", 6, 1)
    est.observe("a", 7, at=est.slot_start + 3)
    snap = json.loads(json.dumps(est.snapshot()))

    # Restarted within the same slot: everything continues, counts included.
    clock.t = est.slot_start + 20
    same = RateEstimator.restore(snap, clock=clock)
    assert same.rates() == pytest.approx(est.rates())
    assert same.counts_in_slot() == {"a": 7}
    assert same.slot_start == est.slot_start
    assert (same.slot_s, same.half_life_s, same.surge_factor) == (60, 120, 4)
    assert same.snapshot() == est.snapshot()
    clock.t = est.slot_start + 60
    assert same.roll() == est.roll()
    assert same.rates() == pytest.approx(est.rates())

    # Restarted after an hour down: rates kept (downtime is not silence), a fresh slot.
    snap = est.snapshot()
    clock.t += 3600 + 7
    later = RateEstimator.restore(snap, clock=clock)
    assert later.rates() == pytest.approx(est.rates())
    assert later.counts_in_slot() == {}
    assert later.slot_start == clock.t

    with pytest.raises(ValueError):
        RateEstimator.restore({"version": 99}, clock=clock)


def _play(est: RateEstimator, clock: FakeClock, counts: list[int]) -> None:
    """One slot per entry of `counts`, its arrivals in the middle of the slot."""
    for c in counts:
        start = est.slot_start
        if c:
            est.observe("m", c, at=start + est.slot_s / 2)
        clock.t = start + est.slot_s
        est.roll()


def test_a_model_used_in_sessions_is_followed_by_the_fast_half_life() -> None:
    # Sessions of 10 slots at 6 requests a slot, then 30 silent slots, four times: the
    # one-slot EWMA predicts both the sessions (after their first slot) and the silences
    # best, so the estimate falls within minutes of a session's end, where the fixed 300-s
    # EWMA keeps much of its rate for many slots. (Isolated one-slot bursts are another
    # matter: there the long-run average predicts best, and the slow EWMA is chosen.)
    sessions = ([6] * 10 + [0] * 30) * 4
    clock, fixed_clock = FakeClock(0.0), FakeClock(0.0)
    est = RateEstimator(slot_s=60, surge_min_count=100, clock=clock)
    fixed = RateEstimator(slot_s=60, surge_min_count=100, clock=fixed_clock, half_lives_s=None)
    _play(est, clock, sessions + [6] * 10 + [0] * 4)
    _play(fixed, fixed_clock, sessions + [6] * 10 + [0] * 4)
    assert est.half_lives_s == (300.0, 60.0, 1800.0)
    assert est.half_life_of("m") == 60.0
    assert est.rate("m") == pytest.approx(0.1 * (1 - 0.5**10) / 16)  # halved 4 times
    assert fixed.rate("m") > 4 * est.rate("m")


def test_a_steady_model_keeps_a_slow_half_life() -> None:
    # Poisson arrivals at 0.1 req/s: the noise of one slot is no news, the slow EWMAs
    # predict best and the estimate stays near the rate.
    rng = random.Random(3)
    counts = [sum(rng.random() < 0.1 for _ in range(60)) for _ in range(240)]
    clock = FakeClock(0.0)
    est = RateEstimator(slot_s=60, surge_min_count=100, clock=clock)
    _play(est, clock, counts)
    assert est.half_life_of("m") in (300.0, 1800.0)
    assert est.rate("m") == pytest.approx(0.1, rel=0.25)


def test_silent_slots_in_one_jump_score_as_one_by_one() -> None:
    a_clock, b_clock = FakeClock(0.0), FakeClock(0.0)
    a = RateEstimator(slot_s=60, surge_min_count=100, clock=a_clock)
    b = RateEstimator(slot_s=60, surge_min_count=100, clock=b_clock)
    for est, clock in ((a, a_clock), (b, b_clock)):
        _play(est, clock, [6, 0, 5, 7, 0, 0, 4])
    a.roll(now=a.slot_start + 7 * 60 + 1)
    for _ in range(7):
        b.roll(now=b.slot_start + 60)
    sa, sb = a.snapshot(), b.snapshot()
    assert sa["bank"]["m"] == pytest.approx(sb["bank"]["m"])
    assert sa["scores"]["m"] == pytest.approx(sb["scores"]["m"])
    assert a.rate("m") == pytest.approx(b.rate("m"))
    assert a.half_life_of("m") == b.half_life_of("m")


def test_the_candidates_survive_a_restart_and_version_1_restores() -> None:
    clock = FakeClock(0.0)
    est = RateEstimator(slot_s=60, surge_min_count=100, clock=clock)
    _play(est, clock, ([3] + [0] * 4) * 10)
    snap = json.loads(json.dumps(est.snapshot()))
    assert snap["version"] == 2
    back = RateEstimator.restore(snap, clock=FakeClock(clock.t + 1))
    assert back.snapshot()["bank"] == snap["bank"]
    assert back.snapshot()["scores"] == snap["scores"]
    assert back.half_life_of("m") == est.half_life_of("m")
    # a version-1 snapshot (one EWMA): every candidate starts from its rate, scores even
    old = {k: v for k, v in snap.items() if k not in ("bank", "scores", "half_lives_s")}
    old["version"] = 1
    v1 = RateEstimator.restore(old, clock=FakeClock(clock.t + 1))
    assert v1.rate("m") == pytest.approx(est.rate("m"))
    assert v1.snapshot()["bank"]["m"] == pytest.approx([est.rate("m")] * 3)
    assert v1.half_life_of("m") == 300.0


def test_invalid_inputs_are_refused() -> None:
    est = RateEstimator(clock=FakeClock())
    with pytest.raises(ValueError):
        est.observe("", 1)
    with pytest.raises(ValueError):
        est.observe("m", -1)
    with pytest.raises(ValueError):
        est.observe("m", 1, at=math.nan)
    with pytest.raises(ValueError):
        est.roll(now=math.inf)
    with pytest.raises(ValueError):
        RateEstimator(slot_s=0)
    with pytest.raises(ValueError):
        RateEstimator(half_life_s=math.inf)
    with pytest.raises(ValueError):
        RateEstimator(surge_min_count=0)
    with pytest.raises(ValueError):
        RateEstimator(half_lives_s=(60.0, -1.0))
    with pytest.raises(ValueError):
        RateEstimator(score_half_life_slots=0)


# ------------------------------------------------------------------------- PoolStats


def test_pool_stats_default_to_one_and_converge() -> None:
    stats = PoolStats(half_life_slots=5)
    assert stats.miss_probability("m", "e1") == 1.0
    assert stats.all() == {}
    for _ in range(20):
        stats.observe("m", "e1", hits=30, misses=10)
        stats.roll()
    assert stats.miss_probability("m", "e1") == pytest.approx(0.25)
    assert stats.miss_probability("m", "e2") == 1.0
    # The pool starts hitting every time: π falls towards 0, old evidence fading.
    history = []
    for _ in range(40):
        stats.observe("m", "e1", hits=40, misses=0)
        stats.roll()
        history.append(stats.miss_probability("m", "e1"))
    assert all(a > b for a, b in itertools.pairwise(history))
    assert history[-1] < 0.01
    # After one half-life (5 slots) of the new regime the old evidence has half its weight.
    old_weight = 40 * sum(stats.keep**k for k in range(1, 21)) * 0.5
    new_weight = 40 * sum(stats.keep**k for k in range(1, 6))
    assert history[4] == pytest.approx(0.25 * old_weight / (old_weight + new_weight))
    assert stats.all() == {("m", "e1"): pytest.approx(history[-1])}


def test_pool_stats_totals_and_persistence() -> None:
    stats = PoolStats()
    stats.observe_totals("m", "e1", 100, 100)  # baseline only: history of unknown age
    assert stats.miss_probability("m", "e1") == 1.0
    stats.observe_totals("m", "e1", 109, 101)
    assert stats.miss_probability("m", "e1") == pytest.approx(0.1)
    stats.observe_totals("m", "e1", 3, 7)  # counters went down: the agent restarted
    assert stats.miss_probability("m", "e1") == pytest.approx(8 / 20)
    stats.observe("x", "e2", 0, 0)  # nothing to learn
    assert ("x", "e2") not in stats.all()

    snap = json.loads(json.dumps(stats.snapshot()))
    back = PoolStats.restore(snap)
    assert back.all() == pytest.approx(stats.all())
    assert back.snapshot() == stats.snapshot()
    back.observe_totals("m", "e1", 4, 7)  # continues from the restored totals
    assert back.miss_probability("m", "e1") == pytest.approx(8 / 21)
    with pytest.raises(ValueError):
        stats.observe("m", "e1", -1, 0)
    with pytest.raises(ValueError):
        PoolStats(half_life_slots=0)
