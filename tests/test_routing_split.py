"""The gateway routes by the decision's split (cloud_gateway.core.routing, with a plan):
weighted choice among planned backends, corrected by live queue length."""

from __future__ import annotations

from collections import Counter

from cloud_gateway.core.routing import CloudBackend, Router
from genedge.contract import RouteHost, RouteModel
from tests.gateway_fakes import host, table


def planned(name: str, level: str, fraction: float, **kw: object) -> RouteHost:
    h = host(name, f"http://{name}", level, **kw)  # type: ignore[arg-type]
    h.fraction = fraction
    return h


def router(hosts: list[RouteHost], cloud_fraction: float, wan_rtt_s: float = 0.2) -> Router:
    r = Router(cloud=CloudBackend("cloud", "http://cloud"))
    entry = RouteModel(model="m", kind="text", hosts=hosts, cloud_fraction=cloud_fraction)
    r.update(table([entry], wan_rtt_s=wan_rtt_s), 0.0)
    return r


def firsts(r: Router, n: int, inflight: dict[str, int] | None = None) -> Counter[str]:
    return Counter(r.candidates("m", inflight or {}, now=0.0)[0].backend for _ in range(n))


BUSY = {"a": 1, "b": 1}  # one request in flight on each: no host is idle


def test_first_backend_follows_the_fractions_exactly() -> None:
    r = router([planned("a", "resident", 0.5), planned("b", "cached", 0.3, in_pool=True)], 0.2)
    assert firsts(r, 10, BUSY) == {"a": 5, "b": 3, "cloud": 2}
    assert firsts(r, 100, BUSY) == {"a": 50, "b": 30, "cloud": 20}


def test_fallbacks_after_the_pick() -> None:
    r = router([planned("a", "resident", 0.6), planned("b", "resident", 0.4)], 0.0)
    order = [t.backend for t in r.candidates("m", {}, now=0.0)]
    assert order[0] in ("a", "b") and set(order) == {"a", "b", "cloud"}
    assert order[-1] == "cloud"  # the other planned host beats the cloud: before it


def test_a_cloud_pick_keeps_the_edge_as_fallback() -> None:
    r = router([planned("a", "resident", 0.5)], 0.5)
    orders = [[t.backend for t in r.candidates("m", BUSY, now=0.0)] for _ in range(2)]
    assert sorted(orders) == [["a", "cloud"], ["cloud", "a"]]


def test_a_cloud_pick_goes_to_an_idle_planned_host_that_beats_the_cloud() -> None:
    # idle (nothing in flight or queued there) and quicker than the cloud: it serves even
    # the requests the weights send to the cloud
    r = router([planned("a", "resident", 0.5)], 0.5)
    assert firsts(r, 4) == {"a": 4}
    # busy with another model's requests (the table's queue): the weights decide again
    other = RouteModel(
        model="x", kind="text", hosts=[planned("a", "resident", 1.0, queued=1)], cloud_fraction=0
    )
    mine = RouteModel(
        model="m", kind="text", hosts=[planned("a", "resident", 0.5)], cloud_fraction=0.5
    )
    r.update(table([mine, other], wan_rtt_s=0.2), 0.0)
    assert firsts(r, 4) == {"a": 2, "cloud": 2}
    # idle but slower than the cloud (a pool load of 5 s against 0.21 s): the cloud first,
    # whatever the pick
    slow = planned("a", "stored", 0.5, preload_s=5.0)
    r = router([slow], 0.5)
    assert firsts(r, 4) == {"cloud": 4}


def test_a_long_queue_puts_the_picked_host_behind_the_cloud() -> None:
    r = router([planned("a", "resident", 1.0, infer_s=0.1)], 0.0)
    assert [t.backend for t in r.candidates("m", {"a": 1}, now=0.0)] == ["a", "cloud"]
    # 0.1 s x 4 ahead and itself > 0.2 + 0.1 in the cloud: the cloud first, a as fallback.
    assert [t.backend for t in r.candidates("m", {"a": 3}, now=0.0)] == ["cloud", "a"]


def test_an_edge_pick_goes_to_the_planned_host_that_answers_first() -> None:
    # the weights decide edge or cloud; among the planned hosts the shortest queue serves
    r = router(
        [planned("a", "resident", 0.5, infer_s=1.0), planned("b", "resident", 0.5, infer_s=1.0)],
        0.0,
    )
    assert {t.backend for t in (r.candidates("m", {"a": 3}, now=0.0)[0] for _ in range(6))} == {"b"}
    # idle and equal: the weights share them out
    assert firsts(r, 4) == {"a": 2, "b": 2}


def test_unready_and_suspect_hosts_give_their_share_to_the_rest() -> None:
    r = router([planned("a", "resident", 0.5), planned("b", "resident", 0.5, state="loading")], 0.0)
    assert firsts(r, 6) == {"a": 6}  # b is loading: not a backend at all
    r = router([planned("a", "resident", 0.5), planned("b", "resident", 0.5)], 0.0)
    r.mark_failed("b", now=0.0)
    assert firsts(r, 6) == {"a": 6}
    assert r.candidates("m", {}, now=1.0)[-1].backend == "b"  # suspect: last resort


def test_unplanned_holders_are_late_fallbacks_only() -> None:
    r = router([planned("a", "resident", 0.0), planned("b", "cached", 0.0, in_pool=True)], 1.0)
    assert [t.backend for t in r.candidates("m", {}, now=0.0)] == ["cloud", "a", "b"]


def test_without_a_decision_routes_by_level() -> None:
    r = Router(cloud=CloudBackend("cloud", "http://cloud"))
    entry = RouteModel(model="m", kind="text", hosts=[planned("a", "resident", 0.0)])
    r.update(table([entry]), 0.0)  # cloud_fraction None: no decision yet
    assert [t.backend for t in r.candidates("m", {}, now=0.0)] == ["a", "cloud"]


def test_an_idle_host_serves_on_demand_before_the_cloud() -> None:
    # all-cloud plan; b holds m on disk with a planned pool big enough (on_demand)
    b = planned("b", "stored", 0.0, preload_s=0.05, infer_s=0.1)
    b.on_demand = True
    r = router([b], 1.0)
    assert [t.backend for t in r.candidates("m", {}, now=0.0)] == ["b", "cloud"]
    # busy (the gateway's own in-flight request there): the cloud, as planned
    assert r.candidates("m", {"b": 1}, now=0.0)[0].backend == "cloud"


def test_on_demand_only_when_idle_and_quicker_than_the_cloud() -> None:
    slow = planned("b", "stored", 0.0, preload_s=5.0, infer_s=0.1)
    slow.on_demand = True
    r = router([slow], 1.0)  # 5.1 s on demand against 0.3 s in the cloud
    assert r.candidates("m", {}, now=0.0)[0].backend == "cloud"
    # another model queued on the same host makes it busy too
    b = planned("b", "stored", 0.0, preload_s=0.05, infer_s=0.1)
    b.on_demand = True
    other = RouteModel(
        model="x", kind="text", hosts=[planned("b", "resident", 1.0, queued=2)], cloud_fraction=0
    )
    r = Router(cloud=CloudBackend("cloud", "http://cloud"))
    mine = RouteModel(model="m", kind="text", hosts=[b], cloud_fraction=1.0)
    r.update(table([mine, other], wan_rtt_s=0.2), 0.0)
    assert r.candidates("m", {}, now=0.0)[0].backend == "cloud"
    r.update(table([mine], wan_rtt_s=0.2), 0.0)
    assert r.candidates("m", {}, now=0.0)[0].backend == "b"
    # not on demand (the plan's pool is too small, or no pool): a late fallback only
    b.on_demand = False
    assert r.candidates("m", {}, now=0.0)[0].backend == "cloud"


def test_a_planned_edge_pick_is_not_replaced_by_on_demand() -> None:
    a = planned("a", "resident", 1.0, infer_s=0.1)
    b = planned("b", "stored", 0.0, preload_s=0.01, infer_s=0.01)
    b.on_demand = True
    r = router([a, b], 0.0)
    assert r.candidates("m", {}, now=0.0)[0].backend == "a"
