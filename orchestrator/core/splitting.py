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
    host_use_split,
    levels_of_split,
    per_request_cost,
    split_of_assignment,
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
    """The levels a one-option assignment holds (its edge options)."""
    return levels_of_split(split_of_assignment(assignment))


class _Candidates:
    """Every (model, host, level) a busy model could be held at, priced once per
    `add_replicas` call as arrays (pair p, level l in `Level.ALL` order): per-request delay,
    holding cost, bytes; each round only the duals, loads and memory in use change."""

    def __init__(self, instance: Instance) -> None:
        pairs = [(m, e) for (m, e) in instance.perf if instance.requests(m) > 0]
        self.pairs = pairs
        hidx = {h.id: j for j, h in enumerate(instance.hosts)}
        self.host = np.array([hidx[e] for _, e in pairs], dtype=np.int64)
        self.n = np.array([instance.requests(m) for m, _ in pairs])
        self.infer = np.array([instance.perf[k].infer_s for k in pairs])
        latency = np.array([instance.perf[k].delay_s for k in pairs])
        self.size = np.array([instance.model(m).storage_bytes for m, _ in pairs], dtype=float)
        self.vram = np.array([instance.perf[k].vram_bytes for k in pairs], dtype=float)
        perf = [instance.perf[k] for k in pairs]
        l_disk = np.array([x.load_disk_s for x in perf])
        l_ram = np.array([x.load_ram_s for x in perf])
        miss = np.array([instance.pool_miss.get(k, 1.0) for k in pairs])
        now = [instance.current.get(k) for k in pairs]
        absent = np.array([x is None for x in now])
        was_cached = np.array([x == Level.CACHED for x in now])
        was_resident = np.array([x == Level.RESIDENT for x in now])
        backhaul = np.array([instance.host(e).backhaul_Bps for _, e in pairs])
        pr = instance.prices
        # per_request_cost(.).delay and holding_cost(.).total, level by level
        self.delay = np.empty((len(pairs), len(Level.ALL)))
        self.hold = np.empty((len(pairs), len(Level.ALL)))
        base = pr.disk_per_GB * self.size / GB + np.where(
            absent, pr.fetch_weight * self.size / backhaul, 0.0
        )
        wd = pr.delay_weight * np.array([instance.weight(m) for m, _ in pairs])
        for col, level in enumerate(Level.ALL):
            if level == Level.RESIDENT:
                self.delay[:, col] = latency * wd
                load = np.where(was_cached, l_ram, l_disk)
                self.hold[:, col] = base + pr.vram_per_GB * self.vram / GB
                self.hold[:, col] += np.where(was_resident, 0.0, pr.load_weight * load)
            elif level == Level.CACHED:
                self.delay[:, col] = (latency + miss * l_ram) * wd
                self.hold[:, col] = base + pr.ram_per_GB * self.size / GB
            else:
                self.delay[:, col] = (latency + miss * l_disk) * wd
                self.hold[:, col] = base
        self.cap = np.array(
            [
                [h.disk_bytes, h.ram_bytes, h.gpu_bytes, h.rho_max * instance.slot_s]
                for h in instance.hosts
            ],
            dtype=float,
        ).reshape(len(instance.hosts), 4)

    def best(self, instance: Instance, plan: SplitPlan, k: int) -> list[tuple[str, str, str]]:
        """The `k` candidates of highest estimated gain > 0: reduced cost (module docstring)
        times the share the host's compute room allows (at least 5%), net of holding the
        level and of the pool growth; ties by model, host, level."""
        if not self.pairs:
            return []
        by_host = host_use_split(instance, plan.split, plan.levels)
        use = [by_host[h.id] for h in instance.hosts]
        disk, ram, resident, pool, loads = (
            np.array([getattr(u, name) for u in use], dtype=float)
            for name in ("disk", "ram", "resident", "pool", "compute")
        )
        price = np.array([plan.host_price.get(h.id, 0.0) for h in instance.hosts])
        u = np.array([plan.model_dual.get(m, np.nan) for m, _ in self.pairs])
        held = np.array([key in plan.levels for key in self.pairs])
        hj = self.host
        rc = self.n[:, None] * (self.delay + (self.infer * price[hj])[:, None]) - u[:, None]
        room = np.maximum(self.cap[hj, 3] - loads[hj], 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(self.infer > 0, np.minimum(1.0, room / (self.n * self.infer)), 1.0)
        fit_disk = disk[hj] + self.size <= self.cap[hj, 0]
        fit_ram = ram[hj] + self.size <= self.cap[hj, 1]
        grown = np.maximum(pool[hj], self.vram)
        fit_pooled = resident[hj] + grown <= self.cap[hj, 2]
        fit_res = resident[hj] + self.vram + pool[hj] <= self.cap[hj, 2]
        growth = np.zeros_like(self.hold)
        fits = np.zeros(self.hold.shape, dtype=bool)
        for col, level in enumerate(Level.ALL):
            if level == Level.RESIDENT:
                fits[:, col] = fit_disk & fit_res
            else:
                fits[:, col] = fit_disk & fit_pooled & (fit_ram if level == Level.CACHED else True)
                growth[:, col] = grown - pool[hj]
        gain = -rc * np.maximum(share, 0.05)[:, None] - self.hold
        gain -= instance.prices.vram_per_GB * growth / GB
        ok = fits & (rc < 0) & (gain > 0) & ~held[:, None] & ~np.isnan(u)[:, None]
        ps, ls = np.nonzero(ok)
        if ps.size == 0:
            return []
        g = gain[ps, ls]
        top = np.argsort(-g, kind="stable")[: 4 * k]
        ranked = sorted(
            top,
            key=lambda t: (-g[t], *self.pairs[ps[t]], Level.ALL[ls[t]]),
        )
        return [(*self.pairs[ps[t]], Level.ALL[ls[t]]) for t in ranked[:k]]


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
    cands: _Candidates | None = None
    for _ in range(rounds):
        if time.perf_counter() >= deadline:
            break
        cands = cands or _Candidates(instance)
        picks = cands.best(instance, plan, trials)
        if not picks:
            break
        best = plan
        for m, e, level in picks:
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


def _moved(
    split: Mapping[str, Mapping[Option, float]], m: str, old: Option | None, new: Option, x: float
) -> dict[str, Mapping[Option, float]]:
    """The split with `x` of model m's traffic taken from `old` (the cloud when None) and
    given to `new`."""
    fr = dict(split[m])
    src = old if old is not None else CLOUD
    fr[src] = fr.get(src, 0.0) - x
    if fr[src] <= _MIN_FRACTION:
        del fr[src]
    fr[new] = fr.get(new, 0.0) + x
    return {**split, m: fr}


def _level_moves(
    instance: Instance, plan: SplitPlan
) -> list[tuple[dict[tuple[str, str], str], Mapping[str, Mapping[Option, float]]]]:
    """Single changes of the levels, each with the split that follows its traffic: drop a
    held level (its share to the cloud), hold it at another level on the same host, move
    it to a host that lacks the model, or place a model held nowhere (as much of its
    traffic as the host's compute room allows)."""
    busy = busy_seconds(instance, plan.split)
    out: list[tuple[dict[tuple[str, str], str], Mapping[str, Mapping[Option, float]]]] = []
    held_models = {m for m, _ in plan.levels}
    for (m, e), level in sorted(plan.levels.items()):
        x = float(plan.split.get(m, {}).get(Option(e, level), 0.0))
        rest = {k: v for k, v in plan.levels.items() if k != (m, e)}
        out.append((rest, _moved(plan.split, m, Option(e, level), CLOUD, x) if x else plan.split))
        targets = [(e, other) for other in Level.ALL if other != level]
        targets += [
            (h.id, other)
            for h in instance.hosts
            if h.id != e and (m, h.id) in instance.perf and (m, h.id) not in plan.levels
            for other in Level.ALL
        ]
        for host, other in targets:
            split = _moved(plan.split, m, Option(e, level), Option(host, other), x)
            out.append(({**rest, (m, host): other}, split if x else plan.split))
    for mm in instance.models:
        m = mm.id
        n = instance.requests(m)
        if n <= 0 or m in held_models:
            continue
        for h in instance.hosts:
            perf = instance.perf.get((m, h.id))
            if perf is None:
                continue
            room = max(0.0, h.rho_max * instance.slot_s - busy[h.id])
            f = min(1.0, room / (n * perf.infer_s)) if perf.infer_s > 0 else 1.0
            if f <= _MIN_FRACTION:
                continue
            for level in Level.ALL:
                split = _moved(plan.split, m, None, Option(h.id, level), f)
                out.append(({**plan.levels, (m, h.id): level}, split))
    return out


def improve_levels(
    instance: Instance, plan: SplitPlan, *, rounds: int, trials: int, deadline: float
) -> SplitPlan:
    """Local search on the levels in the true model: every single change of
    `_level_moves` is priced by `placement.evaluate_split` with its traffic moved along
    (feasible ones only); the `trials` best that lower the cost are re-split optimally and
    the best kept, round after round. It corrects what the one-option surrogate of the
    discrete search misjudges (the wait of a host that sheds, a split's real shares)."""
    for _ in range(rounds):
        if time.perf_counter() >= deadline:
            break
        scored = []
        for levels, split in _level_moves(instance, plan):
            if violations_split(instance, split, levels):
                continue
            scored.append(
                (evaluate_split(instance, split, levels).total, sorted(levels.items()), levels)
            )
        scored.sort(key=lambda t: (t[0], t[1]))
        tol = 1e-9 * max(1.0, abs(plan.total))
        best = plan
        for total, _, levels in scored[:trials]:
            if total >= plan.total - tol or time.perf_counter() >= deadline:
                break
            trial = best_split(instance, levels)
            if trial.total < best.total - tol:
                best = trial
        if best is plan:
            break
        plan = best
    return plan


def feasible(instance: Instance, plan: SplitPlan) -> list[str]:
    return violations_split(instance, plan.split, plan.levels)
