"""The operator's controls in the decision core: pins (a minimum level of a model on a host,
a constraint every algorithm holds) and priority classes (a weight on a model's own delay
and cloud price, so a high-priority model keeps the edge when capacity binds)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings

from orchestrator.core.algorithms import ALGORITHMS, solve
from orchestrator.core.compiled import Compiled
from orchestrator.core.placement import (
    CLOUD,
    GB,
    PRIORITY_WEIGHTS,
    HostSpec,
    Instance,
    Level,
    ModelSpec,
    Option,
    Perf,
    evaluate_split,
    option_cost,
    pinned_instance,
    violations_split,
)
from tests.test_placement import instances

G = int(GB)
ORDER = {Level.STORED: 0, Level.CACHED: 1, Level.RESIDENT: 2}


def _two_models_one_slot(**kw: object) -> Instance:
    """One host with GPU room for exactly one of two equal, equally busy models."""
    host = HostSpec("e0", disk_bytes=100 * G, ram_bytes=0, gpu_bytes=int(5.5 * G))
    models = [ModelSpec("a", "text", 5 * G), ModelSpec("b", "text", 5 * G)]
    perf = {(m.id, "e0"): Perf(5 * G, 8.0, 2.0, 0.5) for m in models}
    base = Instance([host], models, perf, rates={"a": 0.2, "b": 0.2})
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_holds_a_pin_even_without_traffic(name: str) -> None:
    inst = _two_models_one_slot(rates={"a": 0.2, "b": 0.0}, pins={("b", "e0"): Level.RESIDENT})
    d = solve(name, inst, time_limit_s=5.0)
    assert d.levels.get(("b", "e0")) == Level.RESIDENT
    assert violations_split(inst, d.split, d.levels) == []
    assert any("pinned: b@e0:resident" in n for n in d.notes)
    # the pin takes the GPU: the other model cannot also be resident there
    assert d.levels.get(("a", "e0")) != Level.RESIDENT


def test_a_pin_that_does_not_fit_is_not_held_and_says_so() -> None:
    inst = _two_models_one_slot(
        pins={("a", "e0"): Level.RESIDENT, ("b", "e0"): Level.RESIDENT}  # 10 GB in 5.5
    )
    rest, kept, notes = pinned_instance(inst)
    assert kept == {} and rest.hosts[0].gpu_bytes == inst.hosts[0].gpu_bytes
    assert notes and "do not fit" in notes[0]
    d = solve("mlds", inst)
    assert violations_split(inst, d.split, d.levels) == []


def test_a_pin_is_a_constraint_that_may_cost_more() -> None:
    on_disk = {("a", "e0"): Level.STORED, ("b", "e0"): Level.STORED}
    free = solve("exact", _two_models_one_slot(rates={"a": 1.0, "b": 0.01}, current=on_disk))
    assert free.levels.get(("a", "e0")) == Level.RESIDENT
    pinned = _two_models_one_slot(
        rates={"a": 1.0, "b": 0.01}, current=on_disk, pins={("b", "e0"): "resident"}
    )
    d = solve("exact", pinned)
    assert d.levels[("b", "e0")] == Level.RESIDENT
    assert d.cost.total > free.cost.total  # the operator's choice, paid for
    assert d.optimal is False  # the optimum of the rest given the pins, not of the whole


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances(max_models=5, max_hosts=2))
def test_pins_hold_and_decisions_stay_feasible_on_random_instances(inst: Instance) -> None:
    pins = {}
    for (m, e), _ in sorted(inst.perf.items())[:2]:
        pins[(m, e)] = Level.STORED if len(pins) == 0 else Level.CACHED
    inst = replace(inst, pins=pins)
    _, kept, _ = pinned_instance(inst)
    for name in ("mlds", "popularity", "exact"):
        d = solve(name, inst, time_limit_s=5.0)
        assert violations_split(inst, d.split, d.levels) == []
        for key, level in kept.items():
            assert ORDER[d.levels[key]] >= ORDER[level]
        assert d.cost.total == pytest.approx(evaluate_split(inst, d.split, d.levels).total)


def test_priority_weighs_a_models_own_delay_and_cloud_price() -> None:
    inst = _two_models_one_slot(priority={"a": PRIORITY_WEIGHTS["high"]})
    plain = _two_models_one_slot()
    for o in (CLOUD, Option("e0", Level.RESIDENT), Option("e0", Level.STORED)):
        hi, lo = option_cost(inst, "a", o), option_cost(plain, "a", o)
        assert hi.delay == pytest.approx(2 * lo.delay)
        assert hi.cloud == pytest.approx(2 * lo.cloud)
        assert hi.resource == lo.resource and hi.transition == lo.transition
        assert option_cost(inst, "b", o) == option_cost(plain, "b", o)


@pytest.mark.parametrize("name", ["exact", "mlds", "ga"])
def test_when_capacity_binds_the_high_priority_model_keeps_the_edge(name: str) -> None:
    # b is a little busier, so without priorities it takes the one GPU slot
    rates = {"a": 1.0, "b": 1.1}
    on_disk = {("a", "e0"): Level.STORED, ("b", "e0"): Level.STORED}
    plain = solve(name, _two_models_one_slot(rates=rates, current=on_disk), time_limit_s=5.0)
    assert plain.levels.get(("b", "e0")) == Level.RESIDENT
    high_a = _two_models_one_slot(
        rates=rates, current=on_disk, priority={"a": PRIORITY_WEIGHTS["high"]}
    )
    d = solve(name, high_a, time_limit_s=5.0)
    assert d.levels.get(("a", "e0")) == Level.RESIDENT


def test_the_compiled_costs_carry_the_priority_weights() -> None:
    inst = _two_models_one_slot(priority={"b": PRIORITY_WEIGHTS["low"]})
    cm = Compiled(inst)
    for i, m in enumerate(cm.model_ids):
        assert cm.cost[i, -1] == pytest.approx(option_cost(inst, m, CLOUD).total)


def test_bad_pins_and_priorities_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot run on that host"):
        _two_models_one_slot(pins={("a", "nowhere"): "resident"})
    with pytest.raises(ValueError, match="levels"):
        _two_models_one_slot(pins={("a", "e0"): "pooled"})
    with pytest.raises(ValueError, match="priority weight"):
        _two_models_one_slot(priority={"a": 0.0})
