"""Ids seen recently: how the orchestrator counts a retried arrivals batch once.

Each gateway gives every batch a random id and resends the *same* batch (same id, same
counts) until one attempt is acknowledged, so a batch whose acknowledgement was lost is
sent twice. The orchestrator remembers the ids it has counted for `ttl_s` (far longer than
any gateway keeps retrying) and at most `max_ids` of them, oldest forgotten first; memory
is bounded whatever the gateways send. Forgotten on restart: a batch retried across an
orchestrator restart may be counted twice, which only nudges one slot's rate.
"""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    def __init__(self, ttl_s: float = 900.0, max_ids: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_ids = max_ids
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> first seen, oldest first

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, key: str, now: float) -> bool:
        """True the first time `key` is seen within `ttl_s` (and remembers it)."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.ttl_s and len(self._seen) < self.max_ids:
                break
            del self._seen[oldest]
        if key in self._seen:
            return False
        self._seen[key] = now
        return True
