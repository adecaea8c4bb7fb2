"""Smooth weighted round-robin (genedge.weighted): exact shares over every full window."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from genedge.weighted import SmoothWeighted


def test_interleaves_in_proportion() -> None:
    sw: SmoothWeighted[str] = SmoothWeighted()
    picks = [sw.pick({"a": 5, "b": 1, "c": 1}) for _ in range(7)]
    assert Counter(picks) == {"a": 5, "b": 1, "c": 1}
    assert picks[:2] != ["a", "a"] or picks[2] != "a"  # not one burst of five


def test_no_positive_weight_is_none() -> None:
    sw: SmoothWeighted[str] = SmoothWeighted()
    assert sw.pick({"a": 0.0}) is None
    assert sw.order({}) == []


def test_order_puts_the_pick_first_then_heaviest() -> None:
    sw: SmoothWeighted[str] = SmoothWeighted()
    order = sw.order({"a": 0.2, "b": 0.5, "c": 0.3, "d": 0.0})
    assert order == ["b", "c", "a"]


@given(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=6))
def test_every_window_of_total_weight_is_exact(ws: list[int]) -> None:
    weights = {i: float(w) for i, w in enumerate(ws)}
    total = int(sum(ws))
    sw: SmoothWeighted[int] = SmoothWeighted()
    if total == 0:
        assert sw.pick(weights) is None
        return
    for _ in range(3):
        got = Counter(sw.pick(weights) for _ in range(total))
        assert got == {i: w for i, w in enumerate(ws) if w > 0}


@given(st.dictionaries(st.integers(0, 4), st.floats(0.01, 1.0), min_size=1, max_size=5))
def test_fractional_weights_converge(weights: dict[int, float]) -> None:
    sw: SmoothWeighted[int] = SmoothWeighted()
    n = 2000
    got = Counter(sw.pick(weights) for _ in range(n))
    total = sum(weights.values())
    for k, w in weights.items():
        assert abs(got[k] / n - w / total) <= len(weights) / n + 1e-9
