"""How sure a replay's "cheaper" is: intervals for the cost difference of two policies.

Two policies replayed on the same trace see the same requests slot by slot, so their
difference is measured slot by slot (paired): `paired_by_slot` resamples the per-slot
differences in blocks of consecutive slots (a moving-block bootstrap; blocks because a
decision's consequences, what it leaves on disks and in pools, carry into the next slots)
and gives the 95% interval of the total difference. An interval that contains 0 says the
replay cannot tell the two apart; it says nothing about other traffic.

`across_seeds` does the same over independent replays (other thinning seeds of one trace):
the mean relative difference and its Student-t 95% interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

BLOCK_SLOTS = 10
DRAWS = 4000


@dataclass(frozen=True)
class Difference:
    """`other` minus `reference`, in % of the reference's total, with a 95% interval."""

    pct: float
    low: float
    high: float

    @property
    def tells_apart(self) -> bool:
        """The interval excludes 0: one of the two is cheaper beyond the replay's noise."""
        return self.low > 0 or self.high < 0

    def text(self) -> str:
        return f"{self.pct:+.2f}% [{self.low:+.2f}, {self.high:+.2f}]"


def paired_by_slot(
    reference: Sequence[float],
    other: Sequence[float],
    block: int = BLOCK_SLOTS,
    draws: int = DRAWS,
    seed: int = 0,
) -> Difference:
    """Per-slot costs of two policies over the same slots -> the total difference
    (`other` − `reference`) in % of the reference's total, 95% moving-block bootstrap."""
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} slots against {len(other)}: not the same replay")
    ref_total = float(sum(reference))
    if not reference or ref_total <= 0:
        raise ValueError("no counted slots, or a reference that cost nothing")
    d = np.asarray(other, dtype=float) - np.asarray(reference, dtype=float)
    n = len(d)
    b = max(1, min(block, n))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - b + 1, size=(draws, -(-n // b)))
    idx = (starts[:, :, None] + np.arange(b)).reshape(draws, -1)[:, :n]
    totals = d[idx].sum(axis=1)
    low, high = np.percentile(totals, [2.5, 97.5])
    scale = 100.0 / ref_total
    return Difference(float(d.sum()) * scale, float(low) * scale, float(high) * scale)


def across_seeds(reference: Sequence[float], other: Sequence[float]) -> Difference:
    """Totals of two policies on the same seeds -> the mean of `other`/`reference` − 1 in
    %, with its Student-t 95% interval (a point interval for one seed)."""
    if len(reference) != len(other) or not reference:
        raise ValueError("the same seeds, at least one, for both policies")
    if min(reference) <= 0:
        raise ValueError("a reference that cost nothing")
    r = [100.0 * (o / ref - 1.0) for ref, o in zip(reference, other, strict=True)]
    mean = sum(r) / len(r)
    if len(r) < 2:
        return Difference(mean, mean, mean)
    half = float(stats.t.ppf(0.975, len(r) - 1)) * float(np.std(r, ddof=1)) / math.sqrt(len(r))
    return Difference(mean, mean - half, mean + half)
