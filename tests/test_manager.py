"""The agent's state machine (levels, swap pool, admission) on fakes: fast and exact."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edge_agent.core.manager import ModelManager
from edge_agent.core.ports import TextParams
from edge_agent.errors import (
    DoesNotFit,
    ModelUnavailable,
    Overloaded,
    TransitionConflict,
    UnknownModel,
    WrongModelKind,
)
from genedge.contract import Level, ModelKind, ModelState, Priority
from tests.fakes import FakeDevice, FakeLoader, manifest, msgs

P = TextParams(max_tokens=3, temperature=0.0, top_p=1.0)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(sizes=None, capacity=1000, budget=1000, cache=1000, **kw):
    sizes = sizes or {"a": 300, "b": 400, "c": 500}
    dev = FakeDevice(capacity)
    loader = FakeLoader(dev, sizes)
    mgr = ModelManager(
        [manifest(k, v) for k, v in sizes.items()],
        loader,
        device_budget_bytes=budget,
        cache_budget_bytes=cache,
        **kw,
    )
    return mgr, loader, dev


async def until(cond, timeout: float = 10.0) -> None:
    """Wait for a condition without fixed sleeps (CI machines are slow and busy)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def generate(mgr: ModelManager, model: str):
    async with mgr.lease(model, ModelKind.TEXT) as lease:
        result = await asyncio.to_thread(lease.model.generate_text, msgs(), None, P)
        return lease, result


async def test_every_transition_and_idempotence():
    mgr, loader, dev = make()
    assert mgr.status("a").level == Level.STORED
    await mgr.set_level("a", Level.CACHED, wait=True)
    st = mgr.status("a")
    assert (st.level, st.state, st.host_ram_bytes) == (Level.CACHED, ModelState.READY, 300)
    await mgr.set_level("a", Level.RESIDENT, wait=True)
    st = mgr.status("a")
    assert (st.level, st.memory_bytes, st.host_ram_bytes) == (Level.RESIDENT, 300, 0)
    assert loader.loads == [("a", "ram")]  # loaded from the cached copy
    await mgr.set_level("a", Level.RESIDENT, wait=True)  # idempotent: no second load
    assert loader.loads == [("a", "ram")]
    await mgr.set_level("a", Level.CACHED, wait=True)
    st = mgr.status("a")
    assert (st.level, st.memory_bytes, st.host_ram_bytes) == (Level.CACHED, 0, 300)
    assert dev.allocated == 0
    await mgr.set_level("a", Level.STORED, wait=True)
    assert mgr.status("a").host_ram_bytes == 0
    await mgr.set_level("a", Level.RESIDENT, wait=True)
    assert loader.loads[-1] == ("a", "disk")
    await mgr.set_level("a", Level.STORED, wait=True)
    assert dev.allocated == 0 and mgr.status("a").level == Level.STORED


async def test_request_on_stored_model_uses_pool_and_switches():
    mgr, _loader, dev = make()
    lease, result = await generate(mgr, "a")
    assert lease.served_from == Level.POOLED and lease.preload_tier == "disk"
    assert result.completion_tokens == 3
    assert mgr.status("a").level == Level.POOLED and mgr.pool_model == "a"
    lease, _ = await generate(mgr, "a")  # hit: no preload paid
    assert lease.preload_tier is None and lease.preload_s == 0.0
    lease, _ = await generate(mgr, "b")  # switch
    assert lease.preload_tier == "disk"
    assert mgr.pool_model == "b" and mgr.status("a").level == Level.STORED
    assert dev.allocated == 400  # a was freed before b was loaded
    assert mgr.status("a").pool_hits == 1 and mgr.status("a").pool_misses == 1


async def test_pool_coexists_with_resident_and_respects_budget():
    mgr, _, dev = make(budget=750)
    await mgr.set_level("a", Level.RESIDENT, wait=True)
    await generate(mgr, "b")  # 300 + 400 <= 750
    assert dev.allocated == 700
    with pytest.raises(ModelUnavailable, match="swap pool"):
        await generate(mgr, "c")  # 300 + 500 > 750
    assert mgr.status("c").state == ModelState.READY  # refused, not broken
    lease, _ = await generate(mgr, "b")  # the pool still holds b
    assert lease.preload_tier is None


async def test_resident_that_cannot_fit_is_refused():
    mgr, _, _ = make(budget=600)
    await mgr.set_level("c", Level.RESIDENT, wait=True)
    with pytest.raises(DoesNotFit):
        await mgr.set_level("b", Level.RESIDENT)


async def test_going_resident_evicts_the_pool_when_needed():
    mgr, _, dev = make(budget=800)
    await generate(mgr, "c")  # pool holds c (500)
    await mgr.set_level("b", Level.RESIDENT, wait=True)  # 400 + 500 > 800: pool freed
    assert mgr.pool_model is None and mgr.status("b").level == Level.RESIDENT
    assert dev.allocated == 400


async def test_eviction_waits_for_running_request_then_frees():
    mgr, loader, dev = make()
    gate = threading.Event()
    loader.gates["a"] = gate
    await mgr.set_level("a", Level.RESIDENT, wait=True)
    running = asyncio.create_task(generate(mgr, "a"))
    while not loader.models[0].started.is_set():
        await asyncio.sleep(0.01)
    await mgr.set_level("a", Level.STORED)
    await until(lambda: mgr.status("a").state == ModelState.DRAINING)
    assert mgr.status("a").in_flight == 1
    assert dev.allocated == 300  # nothing freed under a running request
    gate.set()
    _, result = await running  # the request completes normally
    assert result.completion_tokens == 3
    await mgr.wait_idle()
    assert mgr.status("a").level == Level.STORED and dev.allocated == 0


async def test_failed_load_marks_model_and_others_keep_serving():
    mgr, loader, _ = make()
    loader.fail["a"] = "CUDA out of memory"
    with pytest.raises(ModelUnavailable, match="out of memory"):
        await generate(mgr, "a")
    st = mgr.status("a")
    assert st.state == ModelState.FAILED and "out of memory" in (st.failed_reason or "")
    _, result = await generate(mgr, "b")
    assert result.completion_tokens == 3
    with pytest.raises(ModelUnavailable):
        await generate(mgr, "a")  # stays failed until a level is set again
    del loader.fail["a"]
    await mgr.set_level("a", Level.RESIDENT, wait=True)
    assert mgr.status("a").state == ModelState.READY
    await generate(mgr, "a")


async def test_failed_transition_reports_reason():
    mgr, loader, _ = make()
    loader.fail["b"] = "safetensors: truncated"
    await mgr.set_level("b", Level.RESIDENT, wait=True)
    st = mgr.status("b")
    assert st.state == ModelState.FAILED and "truncated" in (st.failed_reason or "")
    assert st.level == Level.STORED


async def test_queue_overflow_gives_overloaded():
    mgr, loader, _ = make(max_concurrency=1, max_queue=2, retry_after_s=2.5)
    gate = threading.Event()
    loader.gates["a"] = gate
    tasks = [asyncio.create_task(generate(mgr, "a")) for _ in range(3)]
    await until(lambda: (mgr.status("a").in_flight, mgr.status("a").queued) == (1, 2))
    with pytest.raises(Overloaded) as info:
        await generate(mgr, "a")
    assert info.value.retry_after_s == 2.5
    gate.set()
    await asyncio.gather(*tasks)
    assert mgr.status("a").queued == 0 and mgr.status("a").in_flight == 0


async def pool_order(
    mgr: ModelManager,
    loader: FakeLoader,
    first: str,
    second: str,
    *,
    second_waits_for_slot: bool,
    before_release=None,
) -> list[str]:
    """a is in the pool serving one request (held by a gate); a request for `first` queues,
    then one for `second` (waiting for its model's own concurrency slot when
    `second_waits_for_slot`); `before_release()` runs, the gate opens: the order they got
    the pool in."""
    gate = threading.Event()
    loader.gates["a"] = gate
    running = asyncio.create_task(generate(mgr, "a"))
    await until(lambda: bool(loader.models) and loader.models[0].started.is_set())
    order: list[str] = []

    async def tracked(model):
        _lease, _ = await generate(mgr, model)
        order.append(model)

    one = asyncio.create_task(tracked(first))
    await until(lambda: len(mgr._waiters) == 1)
    two = asyncio.create_task(tracked(second))
    if second_waits_for_slot:
        await until(lambda: mgr.status(second).queued == 1)
    else:
        await until(lambda: len(mgr._waiters) == 2)
    if before_release is not None:
        before_release()
    gate.set()
    await asyncio.gather(running, one, two)
    return order


async def test_pool_with_a_zero_bound_is_first_in_first_out():
    """pool_max_wait_s = 0: an earlier request for b is served before a later request for
    the pooled model a, even though a could join the pool at once."""
    mgr, loader, _ = make(max_concurrency=2, pool_max_wait_s=0.0)
    assert await pool_order(mgr, loader, "b", "a", second_waits_for_slot=False) == ["b", "a"]
    assert mgr.status("b").pool_max_wait_s > 0


async def test_pool_serves_the_pooled_models_waiting_requests_before_a_switch():
    """Within the starvation bound, a later request for the pooled model a (waiting for a's
    one concurrency slot) goes before an earlier request for b; one switch each in all."""
    mgr, loader, _ = make(max_concurrency=1, pool_max_wait_s=60.0)
    assert await pool_order(mgr, loader, "b", "a", second_waits_for_slot=True) == ["a", "b"]
    assert mgr.status("a").pool_misses == 1 and mgr.status("b").pool_misses == 1


async def test_pool_starvation_bound_beats_the_pooled_model():
    """Past the bound, the earlier request for b goes before the pooled model's next one."""
    clock = FakeClock()
    mgr, loader, _ = make(max_concurrency=1, pool_max_wait_s=5.0, clock=clock)

    def six_seconds_later() -> None:  # b has now waited past the bound
        clock.t += 6.0

    order = await pool_order(
        mgr, loader, "b", "a", second_waits_for_slot=True, before_release=six_seconds_later
    )
    assert order == ["b", "a"]
    assert mgr.status("b").pool_max_wait_s >= 6.0


async def test_pool_serves_a_higher_priority_class_first():
    mgr, loader, _ = make(max_concurrency=1, pool_max_wait_s=60.0)
    mgr.set_priorities({"c": Priority.HIGH})
    assert await pool_order(mgr, loader, "b", "c", second_waits_for_slot=False) == ["c", "b"]
    assert mgr.status("c").priority == "high" and mgr.status("b").priority == "normal"


async def test_a_level_below_the_operators_pin_is_refused():
    mgr, _, _ = make()
    mgr.set_pins({"a": "cached"}, source="orchestrator")
    await mgr.set_level("a", Level.RESIDENT, wait=True)
    with pytest.raises(TransitionConflict, match="pinned at cached"):
        await mgr.set_level("a", Level.STORED)
    with pytest.raises(TransitionConflict, match="pinned"):
        await mgr.set_level("a", Level.ABSENT)
    await mgr.set_level("a", Level.CACHED, wait=True)  # down to the pin is fine
    assert mgr.status("a").level == Level.CACHED and mgr.status("a").pinned_level == "cached"
    mgr.set_pins({}, source="orchestrator")
    await mgr.set_level("a", Level.STORED, wait=True)
    assert mgr.status("a").level == Level.STORED


async def test_unknown_and_wrong_kind():
    mgr, _, _ = make()
    with pytest.raises(UnknownModel):
        await mgr.set_level("zzz", Level.RESIDENT)
    with pytest.raises(WrongModelKind):
        async with mgr.lease("a", ModelKind.IMAGE):
            pass


async def test_cache_budget():
    mgr, _, _ = make(cache=500)
    await mgr.set_level("a", Level.CACHED, wait=True)
    with pytest.raises(DoesNotFit):
        await mgr.set_level("b", Level.CACHED)


async def test_device_exclusive_evicts_pool_and_blocks_switches():
    mgr, _, dev = make()
    await generate(mgr, "a")
    async with mgr.device_exclusive():
        assert dev.allocated == 0 and mgr.pool_model is None
        waiting = asyncio.create_task(generate(mgr, "b"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
    await waiting
    assert mgr.pool_model == "b"
