"""Per-key token buckets and the arrival counter. Pure Python; the caller passes the time."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token bucket per key: `rate` tokens/s, up to `burst`. `rate == 0` admits everything."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, key: str, now: float) -> float:
        """0 when admitted, else the seconds until one token is back (for `Retry-After`)."""
        if self.rate <= 0:
            return 0.0
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_keys:  # bound memory under a flood of IPs
                self._buckets.clear()
            b = self._buckets[key] = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
        b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate


class ArrivalCounter:
    """Requests per model since the last report. `take()` hands the counts out and clears
    them (the reporter keeps an undelivered batch and sends it again, so nothing is lost)."""

    def __init__(self, max_models: int = 10_000) -> None:
        self.max_models = max_models
        self._counts: Counter[str] = Counter()
        self.dropped = 0

    def add(self, model: str, n: int = 1) -> None:
        if model not in self._counts and len(self._counts) >= self.max_models:
            self.dropped += n
            return
        self._counts[model] += n

    def take(self) -> dict[str, int]:
        out = dict(self._counts)
        self._counts.clear()
        return out

    def pending(self) -> int:
        return sum(self._counts.values())
