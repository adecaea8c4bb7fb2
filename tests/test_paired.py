"""The intervals behind "cheaper" in the replays (`bench/paired.py`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.paired import across_seeds, paired_by_slot


def test_a_policy_cheaper_in_every_slot_is_told_apart() -> None:
    ref = [10.0, 12.0, 9.0, 11.0] * 25
    other = [c - 0.5 for c in ref]  # 0.5 cheaper in each of 100 slots: 50 of 1,050
    d = paired_by_slot(ref, other)
    assert d.pct == pytest.approx(-100 * 50 / 1050)
    assert d.low == pytest.approx(d.pct) and d.high == pytest.approx(d.pct)
    assert d.tells_apart


def test_noise_that_cancels_is_not_told_apart() -> None:
    rng = np.random.default_rng(3)
    ref = list(rng.uniform(5, 15, size=300))
    noise = rng.normal(0.0, 2.0, size=300)
    other = [r + e - float(noise.mean()) for r, e in zip(ref, noise, strict=True)]
    d = paired_by_slot(ref, other)
    assert d.pct == pytest.approx(0.0, abs=1e-9)
    assert d.low < 0 < d.high and not d.tells_apart
    # The interval is about the noise's: 1.96·2·√300 on 3,000, in %.
    assert d.high - d.low == pytest.approx(2 * 1.96 * 2 * math.sqrt(300) / sum(ref) * 100, rel=0.3)
    assert paired_by_slot(ref, other) == d  # seeded: the same table on a rerun


def test_different_replays_are_refused() -> None:
    with pytest.raises(ValueError, match="not the same replay"):
        paired_by_slot([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no counted slots"):
        paired_by_slot([], [])
    with pytest.raises(ValueError, match="cost nothing"):
        across_seeds([0.0, 1.0], [1.0, 1.0])


def test_across_seeds_is_the_student_t_interval_of_the_relative_differences() -> None:
    d = across_seeds([100.0, 100.0, 100.0], [101.0, 102.0, 103.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) · s / √n, s = 1
    assert (d.pct, d.low, d.high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert not d.tells_apart
    assert across_seeds([100.0], [90.0]).text() == "-10.00% [-10.00, -10.00]"
