"""Which waiting model gets the swap pool next: grouped by model, by priority, bounded waits.

Shared ground floor: the edge agent's model manager schedules its swap pool with this rule,
and the simulator (`sim/simulator.py`) serves each simulated host's pool with the same one,
so a replay serves what the agent would (one implementation for both).

Every switch of the swap pool costs a preload (0.4-11 s measured on an H200). Serving the
waiting requests first-in-first-out reloads on almost every request of an interleaving such
as A B A A C (the thrash llama-swap's users report). The rule here, evaluated whenever the
pool is free:

1. **Starvation bound first**: if any request has waited longer than `max_wait_s`, its model
   goes next (the longest-waiting such request first), whatever is in the pool.
2. **Stay**: otherwise, if requests wait for the model the pool holds, they go next, with no
   switch (all its waiting requests go before a switch). Those include requests still
   waiting for one of the model's own concurrency slots (`holder_queued`), which are not in
   the pool's queue yet: without them a model served one request at a time would lose the
   pool between every two of its requests.
3. **Priority, then age**: otherwise the model of the waiting request with the highest
   priority class goes next, the oldest request first within a class.

So a request waits at most `max_wait_s` plus the time it takes for the work already admitted
to finish and its own load: the bound a client can count on, however many requests of other
models keep coming. `max_wait_s = 0` is plain first-in-first-out (rule 1 always applies);
priorities only reorder what waits under the bound, so a low-priority model is never starved.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

DEFAULT_MAX_WAIT_S: Final = 30.0
"""The starvation bound the agent runs with unless told otherwise (`EDGE_POOL_MAX_WAIT_S`);
the simulator's default and the bound the decision core's π assumes."""

PRIORITY_RANK = {"low": 0, "normal": 1, "high": 2}


@dataclass(frozen=True)
class Waiter:
    """A request waiting for the pool: its arrival order, model, priority class and since when."""

    ticket: int
    model_id: str
    priority: str
    since: float


def next_model(
    waiters: Iterable[Waiter],
    holder: str | None,
    now: float,
    max_wait_s: float,
    holder_queued: int = 0,
) -> str | None:
    """The model whose requests get the pool next (None: nobody waits)."""
    waiting = sorted(waiters, key=lambda w: w.ticket)
    overdue = [w for w in waiting if now - w.since >= max_wait_s]
    if overdue:
        return overdue[0].model_id
    if holder is not None and (holder_queued > 0 or any(w.model_id == holder for w in waiting)):
        return holder
    if not waiting:
        return None
    best = max(waiting, key=lambda w: (PRIORITY_RANK.get(w.priority, 1), -w.ticket))
    return best.model_id
