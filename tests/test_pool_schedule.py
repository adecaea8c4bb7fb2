"""The swap pool's scheduling rule: grouped by model, priorities, the starvation bound."""

from __future__ import annotations

from genedge.pool_schedule import Waiter, next_model


def _w(ticket: int, model: str, since: float = 0.0, priority: str = "normal") -> Waiter:
    return Waiter(ticket, model, priority, since)


def test_nobody_waiting() -> None:
    assert next_model([], "a", now=5.0, max_wait_s=10.0) is None


def test_the_holders_waiting_requests_go_before_a_switch() -> None:
    waiting = [_w(1, "b"), _w(2, "a"), _w(3, "c")]
    assert next_model(waiting, "a", now=1.0, max_wait_s=10.0) == "a"
    # nothing waits for the holder: the oldest request's model
    assert next_model(waiting[:1] + waiting[2:], "a", now=1.0, max_wait_s=10.0) == "b"
    assert next_model(waiting, None, now=1.0, max_wait_s=10.0) == "b"


def test_the_holders_requests_waiting_for_a_slot_keep_the_pool() -> None:
    waiting = [_w(1, "b")]
    assert next_model(waiting, "a", now=1.0, max_wait_s=10.0, holder_queued=1) == "a"
    assert next_model(waiting, "a", now=1.0, max_wait_s=10.0, holder_queued=0) == "b"
    assert next_model([], "a", now=1.0, max_wait_s=10.0, holder_queued=2) == "a"
    assert next_model(waiting, "a", now=11.0, max_wait_s=10.0, holder_queued=1) == "b"


def test_the_starvation_bound_beats_the_holder() -> None:
    waiting = [_w(1, "b", since=0.0), _w(2, "a", since=9.0)]
    assert next_model(waiting, "a", now=9.9, max_wait_s=10.0) == "a"
    assert next_model(waiting, "a", now=10.0, max_wait_s=10.0) == "b"


def test_the_oldest_overdue_request_goes_first() -> None:
    waiting = [_w(3, "c", since=1.0), _w(2, "b", since=0.5), _w(4, "a", since=0.0)]
    # tickets order arrivals: b (ticket 2) is the oldest request overdue
    assert next_model(waiting, "a", now=20.0, max_wait_s=10.0) == "b"


def test_a_zero_bound_is_first_in_first_out() -> None:
    waiting = [_w(1, "b", since=3.0), _w(2, "a", since=3.0, priority="high")]
    assert next_model(waiting, "a", now=3.0, max_wait_s=0.0) == "b"


def test_priority_then_age_when_the_holder_has_no_waiters() -> None:
    waiting = [_w(1, "b"), _w(2, "c", priority="high"), _w(3, "d", priority="high")]
    assert next_model(waiting, "a", now=1.0, max_wait_s=10.0) == "c"
    low_first = [_w(1, "b", priority="low"), _w(2, "c")]
    assert next_model(low_first, None, now=1.0, max_wait_s=10.0) == "c"
    # but a low-priority request past the bound is not starved
    assert next_model(low_first, None, now=10.0, max_wait_s=10.0) == "b"


def test_grouping_halves_the_switches_of_an_interleaving() -> None:
    """A B A A C B A, all waiting at once, one request served per turn: FIFO switches on
    every change of model, the grouped rule once per model."""
    seq = ["a", "b", "a", "a", "c", "b", "a"]

    def switches(max_wait_s: float) -> int:
        waiting = [_w(i, m, since=0.0) for i, m in enumerate(seq)]
        holder, n = None, 0
        while waiting:
            m = next_model(waiting, holder, now=1.0, max_wait_s=max_wait_s)
            n += m != holder
            holder = m
            waiting.remove(next(w for w in waiting if w.model_id == m))
        return n

    assert switches(0.0) == 6  # a b a c b a (the two a's in a row share a load)
    assert switches(60.0) == 3
