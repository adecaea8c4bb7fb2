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


def firsts(r: Router, n: int) -> Counter[str]:
    return Counter(r.candidates("m", {}, now=0.0)[0].backend for _ in range(n))


def test_first_backend_follows_the_fractions_exactly() -> None:
    r = router([planned("a", "resident", 0.5), planned("b", "cached", 0.3, in_pool=True)], 0.2)
    assert firsts(r, 10) == {"a": 5, "b": 3, "cloud": 2}
    assert firsts(r, 100) == {"a": 50, "b": 30, "cloud": 20}


def test_fallbacks_after_the_pick() -> None:
    r = router([planned("a", "resident", 0.6), planned("b", "resident", 0.4)], 0.0)
    order = [t.backend for t in r.candidates("m", {}, now=0.0)]
    assert order[0] in ("a", "b") and set(order) == {"a", "b", "cloud"}
    assert order[-1] == "cloud"  # the other planned host beats the cloud: before it


def test_a_cloud_pick_keeps_the_edge_as_fallback() -> None:
    r = router([planned("a", "resident", 0.5)], 0.5)
    orders = [[t.backend for t in r.candidates("m", {}, now=0.0)] for _ in range(2)]
    assert sorted(orders) == [["a", "cloud"], ["cloud", "a"]]


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
