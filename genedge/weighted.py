"""Smooth weighted round-robin: spread requests over backends in proportion to weights.

The decision model splits each model's traffic into fractions over the cloud and several
hosts; the gateway (and the simulator, which must serve what the gateway would) turn those
fractions into a per-request choice. A random draw would do it on average; smooth weighted
round-robin (the nginx algorithm) does it exactly over every window of Σw requests and
interleaves the backends instead of sending bursts to one, with no randomness to seed.

Each pick adds every backend's weight to its running credit, takes the backend with the
most credit, and takes the total weight off that one. Weights may change between picks (a
new plan); credits of backends that vanish are dropped, new ones start at zero.
Pure Python: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class SmoothWeighted(Generic[K]):
    """Picks keys in proportion to their weights (see the module docstring)."""

    def __init__(self) -> None:
        self._credit: dict[K, float] = {}

    def pick(self, weights: Mapping[K, float]) -> K | None:
        """The next key for these weights; None when no weight is positive."""
        live = {k: w for k, w in weights.items() if w > 0.0}
        if not live:
            return None
        self._credit = {k: self._credit.get(k, 0.0) + w for k, w in live.items()}
        best = max(self._credit, key=lambda k: self._credit[k])
        self._credit[best] -= sum(live.values())
        return best

    def order(self, weights: Mapping[K, float]) -> list[K]:
        """The next pick first, then the other positive-weight keys, heaviest first (the
        fallbacks a caller tries when the pick fails)."""
        first = self.pick(weights)
        if first is None:
            return []
        rest = sorted(
            (k for k, w in weights.items() if w > 0.0 and k != first),
            key=lambda k: -weights[k],
        )
        return [first, *rest]
