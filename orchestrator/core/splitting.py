"""Splitting traffic: the best fractions for given levels, and replicas of hot models.

The decision model v2 (`placement.evaluate_split`) has two kinds of decision: discrete
levels (what each host stores, caches, holds resident or pools) and continuous fractions
(which share of a model's requests each of its held options and the cloud serves). With
the levels fixed, choosing the fractions is a linear programme, because every term is
linear in them except the queueing wait, which is the convex piecewise-linear G of
`queueing` (one epigraph row per tangent and host):

    min  Σ_m Σ_o n_m·c_{m,o}·x_{m,o} + Σ_e w_d·κ_e·W_e
    s.t. Σ_o x_{m,o} = 1                                   every model with traffic
         Σ_{m,o on e} n_m·I_{m,e}·x_{m,o} ≤ ρ_e·τ           compute cap
         b_k·(Σ n_m·I_{m,e}·x_{m,o})/τ − W_e ≤ −a_k         every tangent k of G
         x ≥ 0, W ≥ 0

with c_{m,o} the per-request cost of the option (`placement.per_request_cost`) and the
cloud always among the options, so it is always feasible. `best_split` solves it with
HiGHS and returns the duals that price a new option: u_m (the marginal cost of one more
unit of model m's fraction) and p_e (the marginal cost of a busy second on host e). A
replica (m, e, ℓ) not yet held has reduced cost n_m·(c_{m,e,ℓ} + I_{m,e}·p_e) − u_m per unit
of fraction: negative means that moving some of m's traffic onto it pays at the margin.
`add_replicas` ranks candidates by that estimate net of the replica's holding cost and pool
growth, and keeps a candidate only when re-solving the programme with it lowers the total
cost (`placement.evaluate_split`): the fractional moves of `mlds` (add a replica, shift
traffic, overflow to the cloud; the last two are the programme itself).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from .placement import (
    CLOUD,
    GB,
    CostBreakdown,
    Instance,
    Level,
    Levels,
    Option,
    busy_seconds,
    evaluate_split,
    holding_cost,
    per_request_cost,
    violations_split,
)
from .queueing import BREAKPOINTS, wait_scale

_MIN_FRACTION = 1e-7
"""Fractions below this are dropped (and the rest renormalised): solver noise."""


@dataclass(frozen=True)
class SplitPlan:
    """Levels, the fractions over them and the cloud, and their cost (`evaluate_split`).
    `model_dual[m]`, `host_price[e]`: the programme's duals (see the module docstring)."""

    split: dict[str, dict[Option, float]]
    levels: dict[tuple[str, str], str]
    cost: CostBreakdown
    model_dual: Mapping[str, float]
    host_price: Mapping[str, float]

    @property
    def total(self) -> float:
        return self.cost.total


def _idle_split(
    instance: Instance, levels: Levels, models: list[str]
) -> dict[str, dict[Option, float]]:
    """Models without traffic: their held option (any serves nothing), else the cloud."""
    held: dict[str, Option] = {}
    for (m, e), level in sorted(levels.items()):
        held.setdefault(m, Option(e, level))
    return {m: {held.get(m, CLOUD): 1.0} for m in models}


def wait_tangents(instance: Instance) -> tuple[np.ndarray, np.ndarray]:
    """Per host (rows, in `instance.hosts` order) the slopes and intercepts of its wait
    curve's tangents (`Instance.wait_curve`; one column per breakpoint)."""
    curves = [instance.wait_curve(h.id) for h in instance.hosts]
    return np.array([c.slopes for c in curves]), np.array([c.intercepts for c in curves])


def best_split(instance: Instance, levels: Levels) -> SplitPlan:
    """The cheapest fractions for `levels` (the linear programme of the module docstring),
    with levels that serve nothing dropped (they only cost)."""
    levels = dict(levels)
    busy_models = [m.id for m in instance.models if instance.requests(m.id) > 0]
    idle_models = [m.id for m in instance.models if instance.requests(m.id) <= 0]
    held_by: dict[str, list[Option]] = {}
    for (m, e), level in levels.items():
        held_by.setdefault(m, []).append(Option(e, level))
    var_model: list[int] = []
    var_opt: list[Option] = []
    cost: list[float] = []
    busy_coef: list[float] = []
    host_of: list[int] = []
    hidx = {h.id: j for j, h in enumerate(instance.hosts)}
    for i, m in enumerate(busy_models):
        n = instance.requests(m)
        for o in [CLOUD, *sorted(held_by.get(m, []), key=str)]:
            pr = per_request_cost(instance, m, o)
            var_model.append(i)
            var_opt.append(o)
            cost.append(n * (pr.delay + pr.cloud))
            if o.host is None:
                busy_coef.append(0.0)
                host_of.append(-1)
            else:
                busy_coef.append(n * instance.perf[(m, o.host)].infer_s)
                host_of.append(hidx[o.host])
    nx, E, M = len(var_opt), len(instance.hosts), len(busy_models)
    split = _idle_split(instance, levels, idle_models)
    model_dual: dict[str, float] = {}
    host_price = {h.id: 0.0 for h in instance.hosts}
    vm = np.array(var_model, dtype=np.int64)
    if nx and any(h >= 0 for h in host_of):
        tau = instance.slot_s
        kappa = np.array([wait_scale(tau, h.service_scv) for h in instance.hosts])
        c = np.concatenate([cost, instance.prices.delay_weight * kappa])
        ho = np.array(host_of)
        bc = np.array(busy_coef)
        on = np.flatnonzero(ho >= 0)
        a_eq = sparse.csr_array((np.ones(nx), (vm, np.arange(nx))), shape=(M, nx + E))
        # compute rows 0..E-1, then tangent rows (k ≥ 1; k = 0 is W ≥ 0) host by host
        k_rows = len(BREAKPOINTS) - 1
        slopes, intercepts = wait_tangents(instance)
        r_comp = ho[on]
        rows = [r_comp]
        cols = [on]
        vals = [bc[on]]
        for k in range(1, k_rows + 1):
            rows.append(E + ho[on] * k_rows + (k - 1))
            cols.append(on)
            vals.append(slopes[ho[on], k] * bc[on] / tau)
            rows.append(E + np.arange(E) * k_rows + (k - 1))
            cols.append(nx + np.arange(E))
            vals.append(-np.ones(E))
        a_ub = sparse.csr_array(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(E + E * k_rows, nx + E),
        )
        cap = np.array([h.rho_max * tau for h in instance.hosts])
        b_tan = -intercepts[:, 1:].reshape(-1)
        b_ub = np.concatenate([cap, b_tan])
        res = linprog(
            c,
            A_ub=a_ub,
            b_ub=b_ub,
            A_eq=a_eq,
            b_eq=np.ones(M),
            bounds=(0, None),
            method="highs",
        )
        if res.status != 0:  # cannot happen (the cloud is always there); be safe
            x = np.array([1.0 if o.host is None else 0.0 for o in var_opt])
        else:
            x = res.x[:nx]
            duals_eq = res.eqlin.marginals
            duals_ub = res.ineqlin.marginals  # ≤ 0 for ≤ rows
            for i, m in enumerate(busy_models):
                model_dual[m] = float(duals_eq[i])
            for j, h in enumerate(instance.hosts):
                tang = duals_ub[E + j * k_rows : E + (j + 1) * k_rows]
                price = -float(duals_ub[j]) - float(np.dot(tang, slopes[j, 1:])) / tau
                host_price[h.id] = max(0.0, price)
    else:
        x = np.ones(nx)  # only cloud variables, one per model
        for i, m in enumerate(busy_models):
            model_dual[m] = cost[i]
    for i, m in enumerate(busy_models):
        fr = {var_opt[j]: float(x[j]) for j in np.flatnonzero(vm == i)} if nx else {}
        fr = {o: v for o, v in fr.items() if v > _MIN_FRACTION}
        total = sum(fr.values())
        split[m] = {o: v / total for o, v in fr.items()} if total > 0 else {CLOUD: 1.0}
    used = {(m, o.host) for m, fr in split.items() for o in fr if o.host is not None}
    levels = {key: level for key, level in levels.items() if key in used}
    return SplitPlan(split, levels, evaluate_split(instance, split, levels), model_dual, host_price)


def levels_of_options(assignment: Mapping[str, Option]) -> dict[tuple[str, str], str]:
    return {
        (m, o.host): o.level
        for m, o in assignment.items()
        if o.host is not None and o.level is not None
    }


def _fits(instance: Instance, levels: Levels, m: str, host: str, level: str) -> tuple[bool, int]:
    """Whether holding m at `level` on `host` fits its disk, RAM and GPU memory beside
    `levels`, and by how many bytes it grows the host's pool."""
    h = instance.host(host)
    disk = ram = resident = pool = 0
    for (mm, e), lv in levels.items():
        if e != host:
            continue
        size = instance.model(mm).storage_bytes
        vram = instance.perf[(mm, e)].vram_bytes
        disk += size
        ram += size if lv == Level.CACHED else 0
        if lv == Level.RESIDENT:
            resident += vram
        else:
            pool = max(pool, vram)
    size = instance.model(m).storage_bytes
    vram = instance.perf[(m, host)].vram_bytes
    disk += size
    ram += size if level == Level.CACHED else 0
    new_pool = pool
    if level == Level.RESIDENT:
        resident += vram
    else:
        new_pool = max(pool, vram)
    ok = disk <= h.disk_bytes and ram <= h.ram_bytes and resident + new_pool <= h.gpu_bytes
    return ok, new_pool - pool


def add_replicas(
    instance: Instance,
    plan: SplitPlan,
    *,
    rounds: int,
    trials: int,
    deadline: float,
) -> tuple[SplitPlan, int]:
    """Greedy fractional moves: each round, price every (model, host, level) a busy model
    does not hold by its reduced cost (module docstring) net of holding it, re-solve the
    programme for the `trials` most promising, and keep the best if it lowers the total.
    Returns the plan and how many replicas were added."""
    added = 0
    for _ in range(rounds):
        if time.perf_counter() >= deadline:
            break
        loads = busy_seconds(instance, plan.split)
        cands: list[tuple[float, str, str, str]] = []
        for (m, e), perf in instance.perf.items():
            n = instance.requests(m)
            if n <= 0 or (m, e) in plan.levels:
                continue
            u = plan.model_dual.get(m)
            if u is None:
                continue
            room = instance.host(e).rho_max * instance.slot_s - loads[e]
            share = min(1.0, max(room, 0.0) / (n * perf.infer_s)) if perf.infer_s > 0 else 1.0
            for level in Level.ALL:
                pr = per_request_cost(instance, m, Option(e, level))
                rc = n * (pr.delay + perf.infer_s * plan.host_price[e]) - u
                if rc >= 0:
                    continue
                ok, growth = _fits(instance, plan.levels, m, e, level)
                if not ok:
                    continue
                hold = holding_cost(instance, m, e, level).total
                hold += instance.prices.vram_per_GB * growth / GB
                gain = -rc * max(share, 0.05) - hold
                if gain > 0:
                    cands.append((gain, m, e, level))
        if not cands:
            break
        cands.sort(key=lambda c: (-c[0], c[1], c[2], c[3]))
        best = plan
        for _, m, e, level in cands[:trials]:
            trial = best_split(instance, {**plan.levels, (m, e): level})
            if trial.total < best.total - 1e-9 * max(1.0, abs(best.total)):
                best = trial
        if best is plan:
            break
        plan = best
        added += 1
    return plan, added


def drop_levels(instance: Instance, plan: SplitPlan, *, deadline: float) -> SplitPlan:
    """Remove held levels one at a time (least traffic first), re-split, and keep each
    removal that lowers the total: a level the discrete stage chose can serve too small a
    share, once split, to pay for holding it."""
    served: dict[tuple[str, str], float] = {}
    for m, fr in plan.split.items():
        for o, x in fr.items():
            if o.host is not None:
                served[(m, o.host)] = x * instance.requests(m)
    for key in sorted(plan.levels, key=lambda k: (served.get(k, 0.0), k)):
        if time.perf_counter() >= deadline:
            break
        if key not in plan.levels:
            continue
        trial = best_split(instance, {k: v for k, v in plan.levels.items() if k != key})
        if trial.total < plan.total - 1e-9 * max(1.0, abs(plan.total)):
            plan = trial
    return plan


def feasible(instance: Instance, plan: SplitPlan) -> list[str]:
    return violations_split(instance, plan.split, plan.levels)
