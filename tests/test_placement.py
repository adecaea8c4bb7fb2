"""The placement decision core: cost model, constraints, explanations and algorithms.

Property tests draw small random instances (≤ 8 models × ≤ 3 hosts) with hypothesis; unit
tests craft instances where one effect decides the answer (pool sharing, hysteresis, each
capacity binding). `exact` is checked against brute-force enumeration on tiny instances,
and every algorithm against `exact`.
"""

from __future__ import annotations

import itertools
import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from orchestrator.core import algorithms
from orchestrator.core.algorithms import ALGORITHMS, DEFAULT_ALGORITHM, solve
from orchestrator.core.compiled import Compiled, State
from orchestrator.core.placement import (
    CLOUD,
    GB,
    CloudSpec,
    CostBreakdown,
    HostSpec,
    Instance,
    Level,
    ModelSpec,
    Option,
    Perf,
    Prices,
    evaluate,
    evaluate_split,
    explain,
    option_cost,
    violations,
    violations_split,
    with_option,
)
from orchestrator.core.splitting import best_split
from sim.scenarios import default_measured_path, load_measured, random_instance

G = int(GB)


# ---------------------------------------------------------------------------------------
# Random small instances
# ---------------------------------------------------------------------------------------


@st.composite
def instances(draw: st.DrawFn, max_models: int = 8, max_hosts: int = 3) -> Instance:
    n_hosts = draw(st.integers(1, max_hosts))
    n_models = draw(st.integers(1, max_models))
    gb = st.floats(0.05, 30.0)
    hosts = [
        HostSpec(
            id=f"e{j}",
            disk_bytes=int(draw(st.floats(0.0, 40.0)) * G),
            ram_bytes=int(draw(st.floats(0.0, 20.0)) * G),
            gpu_bytes=int(draw(st.floats(0.0, 40.0)) * G),
            rho_max=draw(st.floats(0.2, 1.0)),
            backhaul_Bps=draw(st.sampled_from([1.25e8, 1.25e9])),
        )
        for j in range(n_hosts)
    ]
    models = [
        ModelSpec(f"m{i}", draw(st.sampled_from(["text", "image"])), int(draw(gb) * G))
        for i in range(n_models)
    ]
    perf: dict[tuple[str, str], Perf] = {}
    pool_miss: dict[tuple[str, str], float] = {}
    current: dict[tuple[str, str], str] = {}
    for m in models:
        for h in hosts:
            if not draw(st.booleans()) and draw(st.booleans()):
                continue  # about a quarter of the pairs cannot run
            perf[(m.id, h.id)] = Perf(
                vram_bytes=int(draw(gb) * G),
                load_disk_s=draw(st.floats(0.0, 12.0)),
                load_ram_s=draw(st.floats(0.0, 2.0)),
                infer_s=draw(st.floats(0.05, 5.0)),
            )
            if draw(st.booleans()):
                pool_miss[(m.id, h.id)] = draw(st.floats(0.0, 1.0))
            level = draw(st.sampled_from([None, None, *Level.ALL]))
            if level is not None:
                current[(m.id, h.id)] = level
    rates = {m.id: draw(st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.3, 1.0])) for m in models}
    prices = draw(
        st.sampled_from(
            [Prices(), Prices(vram_per_GB=2.0, ram_per_GB=0.2, disk_per_GB=0.01), Prices(0.5)]
        )
    )
    return Instance(
        hosts=hosts,
        models=models,
        perf=perf,
        rates=rates,
        cloud=CloudSpec(wan_rtt_s=draw(st.floats(0.0, 0.3))),
        prices=prices,
        pool_miss=pool_miss,
        current=current,
    )


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def same_cost(a: CostBreakdown, b: CostBreakdown) -> bool:
    return all(close(x, y) for x, y in zip(a.as_dict().values(), b.as_dict().values(), strict=True))


def exact_tolerance(cost: float) -> float:
    """HiGHS stops within a relative gap of 1e-7 (mip_rel_gap): allow that much."""
    return 1e-6 * max(1.0, abs(cost))


# ---------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances(), seed=st.integers(0, 3))
def test_every_algorithm_is_feasible_reports_its_cost_and_never_beats_exact(
    inst: Instance, seed: int
) -> None:
    decisions = {name: solve(name, inst, seed=seed) for name in ALGORITHMS}
    for name, d in decisions.items():
        assert d.algorithm == name
        assert set(d.assignment) == set(d.split) == {m.id for m in inst.models}
        # every split sums to 1 over valid options, and capacities hold over it
        assert violations_split(inst, d.split, d.levels) == [], name
        assert same_cost(d.cost, evaluate_split(inst, d.split, d.levels)), name
        assert d.seconds >= 0
    exact = decisions["exact"]
    if exact.optimal:
        for name, d in decisions.items():
            assert d.cost.total >= exact.cost.total - exact_tolerance(exact.cost.total), name
    assert decisions["cloud-only"].counts()["cloud"] == len(inst.models)
    # mlds starts from all-cloud and only improves
    assert decisions["mlds"].cost.total <= decisions["cloud-only"].cost.total + 1e-9


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances(), seed=st.integers(0, 3))
def test_mlds_large_instance_mode_is_feasible_and_never_beats_exact(
    inst: Instance, seed: int
) -> None:
    """The lean variant mlds runs on large instances (local ILS, candidate pairs), forced
    onto small instances so it can be checked against the MILP."""
    with (
        mock.patch.object(algorithms, "_SMALL_SIZE", 0),
        mock.patch.object(algorithms, "_ALL_PAIRS_MAX_MODELS", 0),
    ):
        d = solve("mlds", inst, seed=seed)
    assert violations_split(inst, d.split, d.levels) == []
    assert same_cost(d.cost, evaluate_split(inst, d.split, d.levels))
    exact = solve("exact", inst)
    if exact.optimal:
        assert d.cost.total >= exact.cost.total - exact_tolerance(exact.cost.total)
    assert d.cost.total <= solve("cloud-only", inst).cost.total + 1e-9


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances(max_models=2, max_hosts=2))
def test_exact_matches_brute_force(inst: Instance) -> None:
    """Enumerate every choice of levels of a tiny instance (none, stored, cached or resident
    on every host), each with its optimal split (a linear programme): the MILP finds the
    cheapest feasible."""
    pairs = sorted(inst.perf)
    best = math.inf
    for combo in itertools.product(*([None, *Level.ALL] for _ in pairs)):
        levels = {p: lv for p, lv in zip(pairs, combo, strict=True) if lv is not None}
        plan = best_split(inst, levels)
        if not violations_split(inst, plan.split, plan.levels):
            best = min(best, plan.total)
    d = solve("exact", inst)
    assert d.optimal is True
    assert d.cost.total == pytest.approx(best, rel=1e-6, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(inst=instances(), data=st.data())
def test_explain_is_consistent_with_evaluate_and_violations(
    inst: Instance, data: st.DataObject
) -> None:
    # a random feasible assignment to explain against
    assignment = solve("random", inst, seed=data.draw(st.integers(0, 5))).assignment
    # explain prices one-option assignments: the heaviest options of a split may not fit
    assume(violations(inst, assignment) == [])
    model = data.draw(st.sampled_from([m.id for m in inst.models]))
    rows = explain(inst, model, assignment)
    assert [r.option for r in rows] == inst.options(model)
    assert sum(r.chosen for r in rows) == 1
    assert next(r for r in rows if r.chosen).option == assignment[model]
    base = evaluate(inst, with_option(assignment, [(model, CLOUD)])).total
    cloud_row = rows[0]
    assert cloud_row.option == CLOUD and cloud_row.fits
    for r in rows:
        assert close(r.total, r.delay + r.resource + r.cloud + r.transition + r.wait)
        assert close(r.breakdown.total, r.total)
        changed = with_option(assignment, [(model, r.option)])
        assert r.fits == (violations(inst, changed) == []), r
        assert bool(r.reasons) == (not r.fits)
        # the marginal cost of an option, pool growth included, is what evaluate adds
        got = evaluate(inst, changed).total - base
        assert math.isclose(got, r.total - cloud_row.total, rel_tol=1e-9, abs_tol=1e-7)


# ---------------------------------------------------------------------------------------
# Crafted instances
# ---------------------------------------------------------------------------------------


def one_host(
    models: list[tuple[str, float, float]],
    *,
    disk: float = 100.0,
    ram: float = 100.0,
    gpu: float = 100.0,
    rho_max: float = 1.0,
    infer_s: float = 1.0,
    load_disk_s: float = 5.0,
    load_ram_s: float = 0.5,
    rates: dict[str, float] | None = None,
    current: dict[tuple[str, str], str] | None = None,
    prices: Prices | None = None,
) -> Instance:
    """One host "e"; models given as (id, storage GB, VRAM GB)."""
    return Instance(
        hosts=[HostSpec("e", int(disk * G), int(ram * G), int(gpu * G), rho_max=rho_max)],
        models=[ModelSpec(m, "text", int(s * G)) for m, s, _ in models],
        perf={(m, "e"): Perf(int(h * G), load_disk_s, load_ram_s, infer_s) for m, _, h in models},
        rates=rates if rates is not None else {m: 0.1 for m, _, _ in models},
        cloud=CloudSpec(wan_rtt_s=0.1, infer_s={m: 3.0 for m, _, _ in models}),
        prices=prices or Prices(),
        current=current or {},
    )


def test_pooled_models_share_one_pool_sized_by_the_largest() -> None:
    inst = one_host([("a", 1.0, 4.0), ("b", 1.0, 10.0)])
    pr = inst.prices
    both = {"a": Option("e", Level.STORED), "b": Option("e", Level.CACHED)}
    cost = evaluate(inst, both)
    singles = option_cost(inst, "a", both["a"]) + option_cost(inst, "b", both["b"])
    # the pool is charged once, at max(h_a, h_b) = 10 GB, not 4 + 10
    assert cost.resource == pytest.approx(singles.resource + pr.vram_per_GB * 10.0)
    # the GPU constraint counts the pool once too: 10 GB fits a 10 GB GPU
    tight = one_host([("a", 1.0, 4.0), ("b", 1.0, 10.0)], gpu=10.0)
    assert violations(tight, both) == []
    # ... but two residents do not
    resident = {m: Option("e", Level.RESIDENT) for m in ("a", "b")}
    assert any("GPU" in v for v in violations(tight, resident))
    # and a pooled model next to residents needs its own pool room
    mixed = {"a": Option("e", Level.RESIDENT), "b": Option("e", Level.STORED)}
    assert any("GPU" in v for v in violations(tight, mixed))
    # explain charges a pooled newcomer only the pool's growth
    rows = {str(r.option): r for r in explain(inst, "a", {"b": Option("e", Level.STORED)})}
    assert rows["e:stored"].pool_growth_bytes == 0
    rows = {str(r.option): r for r in explain(inst, "b", {"a": Option("e", Level.STORED)})}
    assert rows["e:cached"].pool_growth_bytes == 6 * G


def test_transition_hysteresis_keeps_a_resident_model_resident() -> None:
    models = [("m", 4.0, 4.0)]
    prices = Prices(vram_per_GB=0.25)
    kw = dict(rates={"m": 0.5}, prices=prices, load_disk_s=5.0, load_ram_s=0.5)
    resident = {"m": Option("e", Level.RESIDENT)}
    cached = {"m": Option("e", Level.CACHED)}
    fresh = one_host(models, **kw)  # type: ignore[arg-type]
    on_disk = one_host(models, current={("m", "e"): Level.STORED}, **kw)  # type: ignore[arg-type]
    in_ram = one_host(models, current={("m", "e"): Level.CACHED}, **kw)  # type: ignore[arg-type]
    kept = one_host(models, current={("m", "e"): Level.RESIDENT}, **kw)  # type: ignore[arg-type]
    fetch = 4.0 * G / fresh.hosts[0].backhaul_Bps
    assert evaluate(fresh, resident).transition == pytest.approx(fetch + 5.0)
    assert evaluate(on_disk, resident).transition == pytest.approx(5.0)
    assert evaluate(in_ram, resident).transition == pytest.approx(0.5)
    assert evaluate(kept, resident).transition == 0.0
    assert evaluate(kept, cached).transition == 0.0  # going down costs nothing
    # resident saves n·π·L^ram = 30·0.5 = 15 s of switches a slot against cached: worth
    # a 5 s load from disk ...
    for name in ("exact", "mlds"):
        assert solve(name, kept).assignment["m"] == Option("e", Level.RESIDENT)
        assert solve(name, on_disk).assignment["m"] == Option("e", Level.RESIDENT)
    # ... but not a load weighted 4×: then only the model already resident stays resident
    kw["prices"] = Prices(vram_per_GB=0.25, load_weight=4.0)
    on_disk = one_host(models, current={("m", "e"): Level.STORED}, **kw)  # type: ignore[arg-type]
    kept = one_host(models, current={("m", "e"): Level.RESIDENT}, **kw)  # type: ignore[arg-type]
    for name in ("exact", "mlds"):
        assert solve(name, kept).assignment["m"] == Option("e", Level.RESIDENT)
        assert solve(name, on_disk).assignment["m"] == Option("e", Level.CACHED)


# resource -> (the capacity that has room for one model, the level both want, load from
# disk, load from RAM, RAM price, current level of both): the edge option is worth
# 14.1 s-equivalent a slot against 18.9 on the cloud, every other option is worse than
# the cloud, and a second model does not fit on exactly that resource.
BINDING = {
    "disk": ({"disk": 15.0}, Level.RESIDENT, 0.02, 1.5, 1.0, None),
    "RAM": ({"ram": 15.0}, Level.CACHED, 20.0, 0.0, 0.0, None),
    "GPU": ({"gpu": 15.0}, Level.RESIDENT, 20.0, 1.5, 1.0, Level.RESIDENT),
    "compute": ({"rho_max": 0.1}, Level.CACHED, 20.0, 0.0, 0.0, None),  # 6 s a slot
}


def binding_instance(resource: str, tight: bool) -> Instance:
    room, _, load_disk, load_ram, ram_price, now = BINDING[resource]
    caps: dict[str, float] = {"disk": 100.0, "ram": 100.0, "gpu": 100.0, "rho_max": 1.0}
    if tight:
        caps.update(room)
    return one_host(
        [("a", 10.0, 10.0), ("b", 10.0, 10.0)],
        rates={"a": 0.1, "b": 0.1},  # 6 requests a slot, 1 s each on the edge
        load_disk_s=load_disk,
        load_ram_s=load_ram,
        prices=Prices(vram_per_GB=0.01, ram_per_GB=ram_price),
        current={(m, "e"): now for m in ("a", "b")} if now else None,
        disk=caps["disk"],
        ram=caps["ram"],
        gpu=caps["gpu"],
        rho_max=caps["rho_max"],
    )


@pytest.mark.parametrize("resource", sorted(BINDING))
def test_each_capacity_binds(resource: str) -> None:
    """Two equally popular models; the host has room for one on exactly one resource."""
    level = BINDING[resource][1]
    inst = binding_instance(resource, tight=True)
    both = {m: Option("e", level) for m in ("a", "b")}
    problems = violations(inst, both)
    assert len(problems) == 1 and resource in problems[0], problems
    assert violations(inst, {"a": both["a"], "b": CLOUD}) == []
    expected = {"cloud": 1, "stored": 0, "cached": 0, "resident": 0, "replicas": 0}
    expected[level] = 1
    for name in ("exact", "mlds", "ga"):
        d = solve(name, inst)
        assert violations(inst, d.assignment) == []
        assert d.counts() == expected, (name, d.assignment)
    # without the binding capacity both go to the edge
    loose = solve("exact", binding_instance(resource, tight=False))
    assert loose.counts()[level] == 2, loose.assignment


def test_idle_models_and_impossible_pairs_go_to_the_cloud() -> None:
    inst = Instance(
        hosts=[HostSpec("e", 100 * G, 100 * G, 5 * G)],
        models=[ModelSpec("idle", "text", G), ModelSpec("huge", "text", G)],
        perf={
            ("idle", "e"): Perf(G, 1.0, 0.1, 1.0),
            ("huge", "e"): Perf(10 * G, 1.0, 0.1, 1.0),  # never fits the 5 GB GPU
        },
        rates={"idle": 0.0, "huge": 1.0},
    )
    for name in ALGORITHMS:
        d = solve(name, inst)
        assert d.assignment["huge"] == CLOUD, name
        if name != "random":
            assert d.assignment["idle"] == CLOUD, name


def test_unknown_algorithm_name_lists_the_known_ones() -> None:
    inst = one_host([("a", 1.0, 1.0)])
    with pytest.raises(KeyError) as err:
        solve("simulated-annealing", inst)
    for name in ALGORITHMS:
        assert name in str(err.value)
    assert DEFAULT_ALGORITHM in ALGORITHMS


def test_evaluate_and_violations_reject_bad_assignments() -> None:
    inst = one_host([("a", 1.0, 1.0), ("b", 1.0, 1.0)])
    assert any("no option" in v for v in violations(inst, {"a": CLOUD}))
    assert any(
        "unknown host" in v for v in violations(inst, {"a": CLOUD, "b": Option("x", "stored")})
    )
    with pytest.raises(ValueError):
        evaluate(inst, {"a": CLOUD})
    with pytest.raises(KeyError):
        explain(inst, "nope")


def test_data_type_validation() -> None:
    with pytest.raises(ValueError):
        Option("e", None)
    with pytest.raises(ValueError):
        Option("e", "pooled")
    assert Option.parse("cloud") == CLOUD
    assert Option.parse(str(Option("h:1", "cached"))) == Option("h:1", "cached")
    assert Option("e", "stored").pooled and not Option("e", "resident").pooled
    with pytest.raises(ValueError):
        Instance(hosts=[], models=[ModelSpec("a", "text", 1)], perf={}, rates={"b": 1.0})
    with pytest.raises(ValueError):
        one_host([("a", 1.0, 1.0)], current={("a", "e"): "pooled"})
    with pytest.raises(ValueError):
        Prices(vram_per_GB=-1.0)
    c = CostBreakdown(1.0, 2.0, 3.0, 4.0) + CostBreakdown(1.0, 1.0, 1.0, 1.0)
    assert c.total == 14.0 and c.as_dict()["total"] == 14.0


def test_decision_helpers_and_cloud_default_inference() -> None:
    inst = one_host([("a", 1.0, 1.0), ("b", 1.0, 1.0)], rates={"a": 1.0, "b": 0.0})
    d = solve("mlds", inst)
    assert d.counts()["cloud"] >= 1  # b is idle
    assert set(d.on_host("e")) <= {"a"}
    assert d.as_dict()["algorithm"] == "mlds"
    no_cloud_times = Instance(
        hosts=inst.hosts, models=inst.models, perf=inst.perf, rates=inst.rates
    )
    assert no_cloud_times.cloud_infer_s("a") == pytest.approx(1.5 * 1.0)


def test_measured_instances_use_every_option_type() -> None:
    """With the default prices and the measured H200 models, all option types win somewhere."""
    path = default_measured_path()
    if not path.exists():
        pytest.skip(f"no measured characterisation at {path}")
    measured = load_measured(path)
    seen: dict[str, int] = {}
    for seed in range(6):
        d = solve("mlds", random_instance(measured, 30, 3, seed), seed=seed)
        for k, v in d.counts().items():
            seen[k] = seen.get(k, 0) + v
    assert all(seen[k] > 0 for k in ("cloud", *Level.ALL)), seen


def _true_delta(state: State, changes: dict[int, int]) -> float:
    """Cost change of applying `changes` (model -> option), +inf if infeasible."""
    cm = state.cm
    opt = state.opt.copy()
    for m, k in changes.items():
        opt[m] = k
    if not cm.feasible(opt) or not all(np.isfinite(cm.cost[m, k]) for m, k in changes.items()):
        return math.inf
    return cm.total(opt) - cm.total(state.opt)


def test_move_pricing_matches_evaluating_the_moved_assignment() -> None:
    """`State.move_table`, `sub_table` and `pair_deltas` price every one- and two-model move
    exactly as re-evaluating the whole assignment would (+inf where it does not fit), and
    `pair_best` finds the best two-model move."""
    path = default_measured_path()
    if not path.exists():
        pytest.skip(f"no measured characterisation at {path}")
    measured = load_measured(path)
    rng = np.random.default_rng(0)
    for seed in range(3):
        inst = random_instance(measured, 6, 2, seed, disk_frac=(0.3, 0.6))
        cm = Compiled(inst)
        state = State(cm)
        for _ in range(3):
            delta, _ = state.move_table()
            sub = state.sub_table(np.array([0, 2, 3]), np.array([1]))
            cols = [3, 4, 5, cm.cloud_k]
            for m in range(cm.M):
                for k in range(cm.K):
                    want = math.inf if k == state.opt[m] else _true_delta(state, {m: k})
                    assert delta[m, k] == pytest.approx(want, abs=1e-9)
                    if m in (0, 2, 3) and k in cols:
                        assert sub[[0, 2, 3].index(m), cols.index(k)] == pytest.approx(
                            want, abs=1e-9
                        )
            for a, b in itertools.combinations(range(cm.M), 2):
                pair = state.pair_deltas(a, b)
                d, ka, kb = state.pair_best(a, b)
                assert d == pytest.approx(pair.min(), abs=1e-9)
                assert pair[ka, kb] == pytest.approx(d, abs=1e-9)
                for ka in range(cm.K):
                    for kb in range(cm.K):
                        want = _true_delta(state, {a: ka, b: kb})
                        assert pair[ka, kb] == pytest.approx(want, abs=1e-9)
            # move somewhere feasible and check again
            m, k = (int(x) for x in rng.choice(np.argwhere(np.isfinite(delta))))
            state.move(m, k)


def test_mlds_on_a_large_instance_beats_the_baselines() -> None:
    path = default_measured_path()
    if not path.exists():
        pytest.skip(f"no measured characterisation at {path}")
    inst = random_instance(load_measured(path), 150, 12, seed=3)  # 1,800 > _SMALL_SIZE
    d = solve("mlds", inst, seed=1)
    assert violations(inst, d.assignment) == []
    assert same_cost(d.cost, evaluate(inst, d.assignment))
    for name in ("cloud-only", "popularity", "lru", "random"):
        assert d.cost.total < solve(name, inst, seed=1).cost.total, name
    assert solve("mlds", inst, seed=1).assignment == d.assignment  # deterministic per seed
