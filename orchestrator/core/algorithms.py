"""Placement algorithms behind one interface, registered by name.

`solve(name, instance, seed=..., time_limit_s=...)` runs one of `ALGORITHMS` and returns a
`Decision` that is always feasible (checked with `placement.violations`; a model an
algorithm cannot place is moved to the cloud, and the decision's notes say so) with its
cost from `placement.evaluate`.

- `exact`: the MILP of DESIGN.md with scipy's HiGHS: binary x_{m,o}, one option per model,
  the pool max linearised as P_e ≥ h_{m,e}·(x_{m,e,stored} + x_{m,e,cached}), P_e ≥ 0.
  `optimal=True` only when HiGHS proved optimality; at the time limit its incumbent is
  returned with `optimal=False`, or `mlds`'s answer when it has none.
- `mlds` (the default): model-level decision selection. From all-cloud, repeatedly apply
  model-level moves with the best cost reduction per unit of scarce resource (each
  resource use divided by what the host has left, so prices rise as hosts fill; a pooled
  model is charged only the growth of the pool, and its GPU need is that growth). Then
  local improvement: single-model moves (best improvement) and pairwise moves (two models
  re-assigned at once: swaps, evictions, two models sharing or leaving a pool) until none
  helps. Moves are priced for all models and options at once with numpy
  (`compiled.State.move_table`), and moves on disjoint hosts are applied in the same round.
  An iterated local search escapes local optima (force a model, busy ones more often,
  onto another option and evict what no longer fits; kick models to the cloud; empty a
  host), seeded, with a fixed number of rounds. Small instances (models × hosts ≤ 1,000)
  run four greedy variants and a thorough search; larger ones a lean variant that prices
  only the moves a perturbation can have made improving (`State.sub_table`); 1,000 × 50
  takes 0.4-0.7 s on one core of the 2-core development machine. A pairwise search ends
  every run: up to 40 models over every pair, so the answer is a local optimum for single
  and pairwise moves; above, over pairs (blocked model, occupant of the host it wants).
- `ga`: a seeded genetic algorithm over per-model options with repair (an over-full host
  drops its least valuable placements, per unit of the broken resource, to the cloud),
  the approach of Liang et al. 2024.
- baselines: `cloud-only`; `popularity` (most requested first: resident where it fits,
  then stored, else cloud); `lru` (no planning: resident models stay, everything else is
  loaded on demand from disk on the host with most free disk, as Ollama, Ray Serve
  multiplexing and LocalAI do); `random` (a seeded random feasible assignment).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from .compiled import CACHED, RESIDENT, STORED, Compiled, IntArray, State
from .placement import (
    GB,
    Decision,
    Instance,
    Level,
    Option,
    busy_seconds,
    evaluate_split,
    holding_cost,
    marginal_wait_price,
    per_request_cost,
    pinned_instance,
    primary_of,
    violations_split,
)
from .queueing import wait_scale
from .splitting import (
    SplitPlan,
    add_replicas,
    best_split,
    drop_levels,
    improve_levels,
    levels_of_options,
    wait_tangents,
)

# An algorithm body: (instance, arrays, seed, time limit) -> (answer, optimal, notes); the
# answer is one option per model (the discrete stage: `_as_plan` chooses its fractions) or
# a `SplitPlan` the body has split itself.
Answer = IntArray | SplitPlan
Body = Callable[[Instance, Compiled, int, float], tuple[Answer, bool | None, list[str]]]


@dataclass(frozen=True)
class Algorithm:
    """A registered placement algorithm. Call it like `solve` (minus the name)."""

    name: str
    summary: str
    body: Body

    def __call__(
        self, instance: Instance, *, seed: int = 0, time_limit_s: float = 10.0
    ) -> Decision:
        if instance.pins:
            return self._pinned(instance, seed, time_limit_s)
        t0 = time.perf_counter()
        cm = Compiled(instance)
        answer, optimal, notes = self.body(instance, cm, seed, time_limit_s)
        plan, fixes = _feasible_plan(instance, cm, answer)
        if fixes:
            notes = [*notes, *fixes]
            optimal = False if optimal else optimal
        return Decision(
            assignment=primary_of(plan.split),
            cost=plan.cost,
            algorithm=self.name,
            seconds=time.perf_counter() - t0,
            optimal=optimal,
            notes=notes,
            split=plan.split,
            levels=plan.levels,
        )

    def _pinned(self, instance: Instance, seed: int, time_limit_s: float) -> Decision:
        """Plan the rest around the pins (`placement.pinned_instance`), then choose every
        model's fractions again with the pinned levels held; a pin serving nothing is still
        held (it is the operator's constraint, not a cost decision)."""
        t0 = time.perf_counter()
        rest, kept, notes = pinned_instance(instance)
        inner = self(rest, seed=seed, time_limit_s=time_limit_s)
        plan = best_split(instance, {**inner.levels, **kept})
        levels = {**plan.levels, **kept}
        notes = [*inner.notes, *notes]
        if kept:
            notes.append("pinned: " + ", ".join(f"{m}@{e}:{lv}" for (m, e), lv in kept.items()))
        problems = violations_split(instance, plan.split, levels)
        if problems:  # cannot happen (the pins' room was taken first); be loud, stay safe
            raise RuntimeError(f"{self.name} with pins is infeasible: {problems[0]}")
        return Decision(
            assignment=primary_of(plan.split),
            cost=evaluate_split(instance, plan.split, levels),
            algorithm=self.name,
            seconds=time.perf_counter() - t0,
            optimal=inner.optimal if not kept else False,
            notes=notes,
            split=plan.split,
            levels=levels,
        )


def solve(name: str, instance: Instance, *, seed: int = 0, time_limit_s: float = 10.0) -> Decision:
    """Run the algorithm registered as `name`; KeyError (listing the names) if unknown."""
    try:
        algorithm = ALGORITHMS[name]
    except KeyError:
        raise KeyError(
            f"unknown placement algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}"
        ) from None
    return algorithm(instance, seed=seed, time_limit_s=time_limit_s)


# ---------------------------------------------------------------------------------------
# Feasibility: repair and the final check
# ---------------------------------------------------------------------------------------


def _repair(
    cm: Compiled, opt: IntArray, keep: int = -1, rng: np.random.Generator | None = None
) -> IntArray:
    """Drop placements to the cloud on every over-full host until all fit, least valuable
    per unit of the broken resources first. Value = what the model saves against the
    cloud; only models that give back some of a broken resource are dropped (for the GPU:
    residents and the pool's largest members); model `keep` is never dropped (when it alone
    breaks a host, the host stays broken). With `rng`, the order is random instead
    (diversification for the local search)."""
    opt = opt.copy()
    over = cm.over(opt)
    cloud = cm.cloud_k
    ar = np.arange(cm.M)
    value = cm.cost[:, cloud] - cm.cost[ar, np.minimum(opt, cloud)]
    for host in np.flatnonzero(over):
        e = int(host)
        while True:
            on = np.flatnonzero((opt < cloud) & (opt // 3 == e))
            if on.size == 0:
                break
            lvl = opt[on] % 3
            disk = cm.s[on].sum()
            ram = cm.s[on[lvl == CACHED]].sum()
            pooled = lvl != RESIDENT
            pool = cm.h[on[pooled], e].max() if pooled.any() else 0.0
            gpu = cm.h[on[~pooled], e].sum() + pool
            comp = cm.nI[on, e].sum()
            slack = 1 + 1e-11
            bad_disk = disk > cm.disk_cap[e] * slack
            bad_ram = ram > cm.ram_cap[e] * slack
            bad_gpu = gpu > cm.gpu_cap[e] * slack
            bad_comp = comp > cm.comp_cap[e] * slack
            if not (bad_disk or bad_ram or bad_gpu or bad_comp):
                break
            # what each model gives back of the broken resources, relative to capacity
            freed = np.zeros(on.size)
            if bad_disk:
                freed += cm.s[on] / max(cm.disk_cap[e], 1.0)
            if bad_comp:
                freed += cm.nI[on, e] / max(cm.comp_cap[e], 1e-9)
            if bad_ram:
                freed += np.where(lvl == CACHED, cm.s[on], 0.0) / max(cm.ram_cap[e], 1.0)
            if bad_gpu:
                h = cm.h[on, e]
                freed += np.where(~pooled | (h >= pool), h, 0.0) / max(cm.gpu_cap[e], 1.0)
            useful = (freed > 0) & (on != keep)
            if not useful.any():
                break
            cands = on[useful]
            if rng is not None:
                drop = cands[int(rng.integers(cands.size))]
            else:
                drop = cands[int(np.argmin(value[cands] / freed[useful]))]
            opt[drop] = cloud
    return opt


def _as_plan(instance: Instance, cm: Compiled, opt: IntArray) -> SplitPlan:
    """The levels of a one-option answer with their best fractions (`splitting`)."""
    return best_split(instance, levels_of_options(cm.to_assignment(opt)))


def _feasible_plan(instance: Instance, cm: Compiled, answer: Answer) -> tuple[SplitPlan, list[str]]:
    """The last word on feasibility is `placement.violations_split`, not the arrays: an
    answer that breaks it is repaired on its levels (drop placements to the cloud)."""
    if isinstance(answer, SplitPlan):
        plan = answer
        if not violations_split(instance, plan.split, plan.levels):
            return plan, []
        opt = cm.from_assignment(primary_of(plan.split))
    else:
        opt = answer
        plan = _as_plan(instance, cm, opt)
        if not violations_split(instance, plan.split, plan.levels):
            return plan, []
    problems = violations_split(instance, plan.split, plan.levels)
    fixed = _repair(cm, opt)
    moved = [cm.model_ids[m] for m in np.flatnonzero(fixed != opt)]
    notes = [f"infeasible answer repaired ({'; '.join(problems)}): moved to cloud: {moved}"]
    plan = _as_plan(instance, cm, fixed)
    if violations_split(instance, plan.split, plan.levels):
        # Cannot happen unless the arrays and `violations_split` disagree: all-cloud is safe.
        notes.append("repair failed: all models on the cloud")
        plan = _as_plan(instance, cm, cm.all_cloud())
    return plan, notes


# ---------------------------------------------------------------------------------------
# exact: the MILP
# ---------------------------------------------------------------------------------------


def _exact(
    instance: Instance, cm: Compiled, seed: int, time_limit_s: float
) -> tuple[Answer, bool | None, list[str]]:
    """The MILP of the decision model v2 with HiGHS, over the levels that fit an empty host:

        y_{m,e,ℓ} ∈ {0,1}  m held at ℓ on e        Σ_ℓ y_{m,e,ℓ} ≤ 1
        x_{m,e,ℓ} ∈ [0,1]  share served there      x_{m,e,ℓ} ≤ y_{m,e,ℓ}
        x_{m,c}   ∈ [0,1]  share on the cloud      x_{m,c} + Σ x_{m,e,ℓ} = 1
        P_e ≥ h_{m,e}·(y_{m,e,stored} + y_{m,e,cached})             the pool
        W_e ≥ a_k + b_k·ρ_e for every tangent k, ρ_e = Σ n·I·x / τ   the wait
        disk, RAM, GPU (residents + P_e) on y; compute Σ n·I·x ≤ ρ_e·τ

    minimising Σ holding·y + Σ n·c·x + p_vram·Σ P_e + w_d·Σ κ_e·W_e, which is
    `placement.evaluate_split` term by term: `exact` is the optimum of the linearised model
    that every algorithm is judged by. Rows are in GB and compute seconds (HiGHS's
    feasibility tolerance of 1e-7 on a row is 100 bytes or 0.1 µs); the answer is re-checked
    by `violations_split` like every other."""
    E, tau = cm.E, instance.slot_s
    pr = instance.prices
    var_m, var_k = np.nonzero(cm.fits_alone[:, : 3 * E] & np.isfinite(cm.cost[:, : 3 * E]))
    ny = var_m.size
    M = cm.M
    # variables: y (ny) | x (ny) | x_cloud (M) | P (E) | W (E)
    ox, oc, op, ow = ny, 2 * ny, 2 * ny + M, 2 * ny + M + E
    nv = ow + E
    ve, vl = var_k // 3, var_k % 3
    s_gb = cm.s / GB
    h_gb = cm.h / GB
    cost = np.zeros(nv)
    busy = np.zeros(ny)
    for j in range(ny):
        m, e, level = cm.model_ids[var_m[j]], cm.host_ids[ve[j]], Level.ALL[vl[j]]
        cost[j] = holding_cost(instance, m, e, level).total
        per = per_request_cost(instance, m, Option(e, level))
        cost[ox + j] = cm.n[var_m[j]] * (per.delay + per.cloud)
        busy[j] = cm.n[var_m[j]] * instance.perf[(m, e)].infer_s
    for i, m in enumerate(cm.model_ids):
        per = per_request_cost(instance, m, Option(None, None))
        cost[oc + i] = cm.n[i] * (per.delay + per.cloud)
    cost[op : op + E] = cm.pool_price * GB
    kappa = np.array([wait_scale(tau, h.service_scv) for h in instance.hosts])
    cost[ow:] = pr.delay_weight * kappa

    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    lb: list[np.ndarray] = []
    ub: list[np.ndarray] = []
    n_rows = 0

    def add(r: np.ndarray, c: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        nonlocal n_rows
        rows.append(r + n_rows)
        cols.append(c)
        vals.append(v)
        lb.append(lo)
        ub.append(hi)
        n_rows += lo.size

    ys = np.arange(ny)
    inf_e = np.full(E, -np.inf)
    # the shares of each model sum to 1
    add(
        np.concatenate([var_m, np.arange(M)]),
        np.concatenate([ox + ys, oc + np.arange(M)]),
        np.ones(ny + M),
        np.ones(M),
        np.ones(M),
    )
    # at most one level per (model, host); a share only where held
    pair = var_m * E + ve
    uniq, pair_row = np.unique(pair, return_inverse=True)
    add(pair_row, ys, np.ones(ny), np.full(uniq.size, -np.inf), np.ones(uniq.size))
    add(
        np.concatenate([ys, ys]),
        np.concatenate([ox + ys, ys]),
        np.concatenate([np.ones(ny), -np.ones(ny)]),
        np.full(ny, -np.inf),
        np.zeros(ny),
    )
    # disk, RAM per host (on y), compute per host (on x)
    add(ve, ys, s_gb[var_m], inf_e, cm.disk_cap / GB)
    cv = ys[vl == CACHED]
    add(ve[cv], cv, s_gb[var_m[cv]], inf_e, cm.ram_cap / GB)
    add(ve, ox + ys, busy, inf_e, cm.comp_cap)
    # GPU: residents + P_e
    rv = ys[vl == RESIDENT]
    add(
        np.concatenate([ve[rv], np.arange(E)]),
        np.concatenate([rv, op + np.arange(E)]),
        np.concatenate([h_gb[var_m[rv], ve[rv]], np.ones(E)]),
        inf_e,
        cm.gpu_cap / GB,
    )
    # pool: h·(y_stored + y_cached) − P_e ≤ 0, one row per (model, host) pair
    pv = ys[vl != RESIDENT]
    ppair = var_m[pv] * E + ve[pv]
    puniq, prow = np.unique(ppair, return_inverse=True)
    add(
        np.concatenate([prow, np.arange(puniq.size)]),
        np.concatenate([pv, op + puniq % E]),
        np.concatenate([h_gb[var_m[pv], ve[pv]], -np.ones(puniq.size)]),
        np.full(puniq.size, -np.inf),
        np.zeros(puniq.size),
    )
    # wait: b_k·busy_e/τ − W_e ≤ −a_k for every tangent k ≥ 1 (k = 0 is W_e ≥ 0)
    slopes, intercepts = wait_tangents(instance)
    for k in range(1, slopes.shape[1]):
        add(
            np.concatenate([ve, np.arange(E)]),
            np.concatenate([ox + ys, ow + np.arange(E)]),
            np.concatenate([slopes[ve, k] * busy / tau, -np.ones(E)]),
            inf_e,
            -intercepts[:, k],
        )
    A = sparse.csr_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, nv)
    )
    integrality = np.concatenate([np.ones(ny), np.zeros(nv - ny)])
    upper = np.concatenate([np.ones(2 * ny + M), cm.gpu_cap / GB, np.full(E, np.inf)])
    res = milp(
        cost,
        constraints=LinearConstraint(A, np.concatenate(lb), np.concatenate(ub)),
        integrality=integrality,
        bounds=Bounds(np.zeros(nv), upper),
        options={"time_limit": float(time_limit_s), "mip_rel_gap": 1e-7},
    )
    if res.x is None:
        plan, _, notes = _mlds(instance, cm, seed, min(time_limit_s, 10.0))
        return plan, False, [f"MILP gave no solution ({res.message}); mlds answer", *notes]
    held = np.flatnonzero(res.x[:ny] > 0.5)
    levels = {(cm.model_ids[var_m[j]], cm.host_ids[ve[j]]): Level.ALL[vl[j]] for j in held}
    split: dict[str, dict[Option, float]] = {m: {} for m in cm.model_ids}
    for j in held.tolist():
        x = float(res.x[ox + j])
        if x > 1e-7:
            split[cm.model_ids[var_m[j]]][Option(cm.host_ids[ve[j]], Level.ALL[vl[j]])] = x
    for i, m in enumerate(cm.model_ids):
        x = float(res.x[oc + i])
        if x > 1e-7 or not split[m]:
            split[m][Option(None, None)] = max(x, 1e-7)
        total = sum(split[m].values())
        split[m] = {o: v / total for o, v in split[m].items()}
    used = {(m, o.host) for m, fr in split.items() for o in fr if o.host is not None}
    levels = {key: lv for key, lv in levels.items() if key in used}
    plan = SplitPlan(split, levels, evaluate_split(instance, split, levels), {}, {})
    notes = [] if res.status == 0 else [f"MILP stopped: {res.message}"]
    return plan, res.status == 0, notes


# ---------------------------------------------------------------------------------------
# mlds: model-level decision selection
# ---------------------------------------------------------------------------------------

_EPS_W = 1e-6


def _tol(state: State) -> float:
    return 1e-9 * (1.0 + abs(state.total()))


def _descend(state: State, alpha: float, tol: float, rng: np.random.Generator | None = None) -> int:
    """Apply improving single-model moves until none is left; returns how many.

    alpha = 0: best improvement per model. alpha > 0: best improvement per unit of scarce
    resource, (−Δcost) / weight^alpha, the greedy's ratio. Each round prices every move of
    every model, then applies the best ones in order of score as long as they touch hosts
    no earlier move of the round touched (so each applied move is priced exactly). With
    `rng`, scores get random noise (a randomised greedy, to diversify restarts).
    """
    cm = state.cm
    cloud = cm.cloud_k
    applied = 0
    ar = np.arange(cm.M)
    while True:
        delta, weight = state.move_table(with_weights=alpha > 0)
        improving = delta < -tol
        if not improving.any():
            return applied
        if weight is not None:
            w = weight + _EPS_W
            if alpha != 1.0:
                w **= alpha
            score = np.where(improving, -delta / w, -np.inf)
        else:
            score = np.where(improving, -delta, -np.inf)
        if rng is not None:
            score *= rng.lognormal(0.0, 0.5, size=score.shape)
        best_k = score.argmax(axis=1)
        best = score[ar, best_k]
        cands = np.flatnonzero(best > -np.inf)
        order = cands[np.argsort(-best[cands], kind="stable")]
        # hosts each move touches; index E stands for the cloud, which never blocks
        ks = best_k[order]
        olds = state.opt[order]
        e_new = np.where(ks != cloud, ks // 3, cm.E).tolist()
        e_old = np.where(olds != cloud, olds // 3, cm.E).tolist()
        touched = [False] * (cm.E + 1)
        free_hosts = cm.E
        for i, m in enumerate(order.tolist()):
            a, b = e_old[i], e_new[i]
            if (touched[a] and a < cm.E) or (touched[b] and b < cm.E):
                continue
            state.move(m, int(ks[i]))
            applied += 1
            for e in {a, b}:
                if e < cm.E:
                    touched[e] = True
                    free_hosts -= 1
            if free_hosts == 0:
                break


def _all_pairs(state: State) -> Iterator[tuple[int, int]]:
    """Every pair that might improve (see `State.pair_lower_bounds`)."""
    cm = state.cm
    live = np.flatnonzero((state.opt != cm.cloud_k) | (cm.n > 0))
    bound = state.pair_lower_bounds()
    tol = _tol(state)
    for i, a in enumerate(live):
        rest = live[i + 1 :]
        for b in rest[bound[a] + bound[rest] < -tol]:
            yield int(a), int(b)


def _blocked_pairs(state: State, max_b: int, max_a: int) -> Iterator[tuple[int, int]]:
    """Pairs worth pricing on large instances: a model b whose best option ignoring
    capacity does not fit, with the models a on that option's host that lose least by
    leaving it."""
    cm = state.cm
    delta, _ = state.move_table()
    ar = np.arange(cm.M)
    best_feasible = np.minimum(delta.min(axis=1), 0.0)
    free = cm.cost - cm.cost[ar, state.opt][:, None]
    free[~cm.fits_alone] = np.inf
    free[ar, state.opt] = np.inf
    k_star = free.argmin(axis=1)
    blocked = best_feasible - free[ar, k_star]
    cands = np.flatnonzero((blocked > _tol(state)) & (k_star != cm.cloud_k))
    cands = cands[np.argsort(-blocked[cands], kind="stable")][:max_b]
    to_cloud = delta[:, cm.cloud_k]
    for b in cands:
        e = int(k_star[b]) // 3
        on = np.flatnonzero((state.opt != cm.cloud_k) & (state.opt // 3 == e))
        on = on[on != b]
        on = on[np.argsort(to_cloud[on], kind="stable")][:max_a]
        for a in on:
            yield int(a), int(b)


def _pair_search(state: State, small: bool, budget: int, deadline: float) -> tuple[bool, int]:
    """Apply improving two-model moves (then single moves) until none; (improved, budget)."""
    improved_any = False
    while budget > 0 and time.perf_counter() < deadline:
        improved = False
        pairs = _all_pairs(state) if small else _blocked_pairs(state, 40, 6)
        tol = _tol(state)
        for a, b in pairs:
            budget -= 1
            if budget <= 0 or time.perf_counter() >= deadline:
                break
            d, ka, kb = state.pair_best(a, b)
            if d < -tol:
                state.move(a, ka)
                state.move(b, kb)
                improved = improved_any = True
        if not improved:
            break
        _descend(state, 0.0, tol)
    return improved_any, budget


def _mlds(
    instance: Instance, cm: Compiled, seed: int, time_limit_s: float
) -> tuple[Answer, bool | None, list[str]]:
    """mlds on the split decision model: the discrete search (`_mlds_levels`) on the
    one-option surrogate, its levels split optimally (`splitting.best_split`); then, with
    each host's busy seconds priced at the marginal queueing wait of that split, the
    discrete search again (`_WAIT_PRICE_ROUNDS` times, at `_PRICE_SCALES` of that price,
    keeping the best split found); then
    fractional moves (`splitting.add_replicas`: a second replica of a hot model where its
    reduced cost says it pays, re-split, kept only if the total falls)."""
    deadline = time.perf_counter() + time_limit_s
    size = cm.M * cm.E
    small = size <= _SMALL_SIZE
    opt, _, notes = _mlds_levels(instance, cm, seed, time_limit_s)
    best = best_split(instance, levels_of_options(cm.to_assignment(opt)))
    for r in range(_WAIT_PRICE_ROUNDS if small else 1):
        if time.perf_counter() >= deadline:
            break
        price = _busy_prices(instance, best)
        if not price.any():
            break
        priced = Compiled(instance, compute_price=price * _PRICE_SCALES[r % len(_PRICE_SCALES)])
        left = max(0.05, deadline - time.perf_counter())
        opt, _, more = _mlds_levels(instance, priced, seed + 1 + r, left)
        notes = [*notes, *more]
        trial = best_split(instance, levels_of_options(priced.to_assignment(opt)))
        if trial.total < best.total - 1e-9 * max(1.0, abs(best.total)):
            best = trial
    # small: until a replica no longer pays (at most one per model and host: a hot model
    # may want one on every host); large: two rounds
    rounds, trials = (cm.M * cm.E, _REPLICA_TRIALS) if small else (2, 4)
    best, _ = add_replicas(instance, best, rounds=rounds, trials=trials, deadline=deadline)
    if small:
        best = drop_levels(instance, best, deadline=deadline)
        best = improve_levels(
            instance, best, rounds=_LEVEL_ROUNDS, trials=_LEVEL_TRIALS, deadline=deadline
        )
    cloud = best_split(instance, {})
    if cloud.total < best.total:
        best = cloud
    return best, None, notes


_WAIT_PRICE_ROUNDS = 3  # discrete searches with busy seconds priced, small instances
_PRICE_SCALES = (1.0, 2.0, 0.5)
"""The r-th priced search prices busy seconds at this multiple of the marginal wait of the
best split so far: the tangent's slope is right only for small changes of a host's load
(the wait is convex: it underprices adding load, overprices removing it), so the search is
run on a bracket of prices and the split that is cheapest in the true model kept."""
_REPLICA_TRIALS = 6  # splits re-solved per replica round
_LEVEL_ROUNDS = 8  # level changes in the true model (`splitting.improve_levels`), small only
_LEVEL_TRIALS = 4


def _busy_prices(instance: Instance, plan: SplitPlan) -> np.ndarray:
    """Per host: the marginal queueing cost of a busy second under `plan`'s split."""
    busy = busy_seconds(instance, plan.split)
    return np.array([marginal_wait_price(instance, h, busy[h.id]) for h in instance.hosts])


def _mlds_levels(
    instance: Instance, cm: Compiled, seed: int, time_limit_s: float
) -> tuple[IntArray, bool | None, list[str]]:
    """Greedy from all-cloud, then single moves, pairwise moves and iterated local search.

    Small instances (models × hosts ≤ `_SMALL_SIZE`) run four greedy variants (the ratio
    greedy with resource prices to the power 1, 0.5 and 2, and plain best-gain) and a
    diverse ILS; larger ones a cheap, local ILS with fewer rounds as size grows, and above
    `_MULTI_START_SIZE` only the best-gain greedy. Deterministic for a seed: effort is
    counted in rounds, and `time_limit_s` only guards the worst case.
    """
    deadline = time.perf_counter() + time_limit_s
    size = cm.M * cm.E
    small = size <= _SMALL_SIZE
    rng = np.random.default_rng(seed)
    best: State | None = None
    for alpha in [1.0, 0.5, 0.0, 2.0] if size <= _MULTI_START_SIZE else [0.0]:
        state = State(cm)
        _descend(state, alpha, _tol(state))
        _descend(state, 0.0, _tol(state))
        if best is None or state.total() < best.total() - _tol(state):
            best = state
        if time.perf_counter() >= deadline:
            break
    assert best is not None
    all_pairs = cm.M <= _ALL_PAIRS_MAX_MODELS
    budget = 50_000 if all_pairs else 2_000  # pairs priced, at most
    if small:
        best = _perturb(best, rng, _ILS_ROUNDS, _ILS_PATIENCE, deadline, local=False)
    else:
        rounds = min(_ILS_ROUNDS, max(_LARGE_ILS_ROUNDS, _LARGE_ILS_WORK // size))
        best = _perturb(best, rng, rounds, _ILS_PATIENCE, deadline, local=True)
    _pair_search(best, all_pairs, budget, deadline)
    notes = []
    if time.perf_counter() >= deadline:
        notes.append(f"time limit ({time_limit_s} s) reached: local search cut short")
    return best.opt, None, notes


# Effort by instance size (models × hosts), so 1,000 × 50 stays well under a second:
_SMALL_SIZE = 1_000  # up to here: the full ILS (each round re-descends everything)
_MULTI_START_SIZE = 5_000  # up to here: four greedy variants, above: best-gain only
_ALL_PAIRS_MAX_MODELS = 40  # up to this many models, pairwise moves try every pair
_ILS_ROUNDS = 300  # at most this many perturbations ...
_ILS_PATIENCE = 100  # ... stopping after this many in a row that found nothing better
_LARGE_ILS_WORK = 600_000  # local ILS rounds above _SMALL_SIZE: this / size, ...
_LARGE_ILS_ROUNDS = 60  # ... but at least this many (about 4 ms each at 1000 × 50)


def _local_descend(state: State, hosts: set[int], models: set[int], tol: float) -> None:
    """`_descend(state, 0)` for a state that was single-move optimal before some models
    (`models`) and hosts (`hosts`) changed: only moves of those models, moves into those
    hosts and moves of models on those hosts can have become improving, so only they are
    priced (`State.sub_table`), round after round, following the changes."""
    cm = state.cm
    cloud = cm.cloud_k
    all_models = np.arange(cm.M)
    while hosts or models:
        H = np.array(sorted(hosts), dtype=np.int64)
        placed = state.opt != cloud
        on_h = np.flatnonzero(placed & np.isin(state.opt // 3, H))
        R = np.union1d(on_h, np.array(sorted(models), dtype=np.int64))
        best_d = np.zeros(cm.M)
        best_k = np.full(cm.M, -1, dtype=np.int64)
        if R.size:
            t = state.sub_table(R, None)  # all hosts: columns are the global option numbers
            k = t.argmin(axis=1)
            best_d[R] = t[np.arange(R.size), k]
            best_k[R] = k
        if H.size:
            t = state.sub_table(None, H)
            j = t.argmin(axis=1)
            d = t[all_models, j]
            k = np.where(j == 3 * H.size, cloud, 3 * H[np.minimum(j // 3, H.size - 1)] + j % 3)
            better = d < best_d
            best_d[better] = d[better]
            best_k[better] = k[better]
        cands = np.flatnonzero(best_d < -tol)
        if cands.size == 0:
            return
        order = cands[np.argsort(best_d[cands], kind="stable")]
        touched: set[int] = set()
        hosts, models = set(), set()
        for m in order.tolist():
            k = int(best_k[m])
            old = int(state.opt[m])
            involved = {x // 3 for x in (old, k) if x != cloud}
            if involved & touched:
                models.add(m)  # may still improve: its row is priced again next round
                continue
            state.move(m, k)
            touched |= involved
            models.add(m)
        hosts |= touched


def _force(state: State, m: int, k: int, rng: np.random.Generator | None = None) -> None:
    """Give model m option k even if it does not fit, then evict the least valuable other
    models from that host to the cloud until it does (an ejection move)."""
    cm = state.cm
    state.move(m, k)
    if k == cm.cloud_k:
        return
    fixed = _repair(cm, state.opt, keep=m, rng=rng)
    for x in np.flatnonzero(fixed != state.opt):
        state.move(int(x), cm.cloud_k)


def _perturb(
    best: State,
    rng: np.random.Generator,
    rounds: int,
    patience: int,
    deadline: float,
    local: bool,
) -> State:
    """Iterated local search from a single-move local optimum: each round copies the best
    state, perturbs it (force one model onto an option it does not have, evicting others;
    kick a few edge models to the cloud; or empty one or two hosts), descends again and
    keeps the result if cheaper. Stops after `rounds` rounds or `patience` rounds in a row
    without improvement.

    `local=False` (small instances) re-descends over everything, half the time through
    the ratio greedy first, and rebuilds emptied hosts with a randomised greedy: more
    diverse. `local=True` (large instances) re-prices only the moves the perturbation can
    have made improving (`_local_descend`): much cheaper per round."""
    cm = best.cm
    cloud = cm.cloud_k
    live = np.flatnonzero(cm.n > 0)
    if live.size == 0:
        return best
    weights = cm.n[live] / cm.n[live].sum()
    stale = 0
    for _ in range(rounds):
        if time.perf_counter() >= deadline or stale >= patience:
            break
        stale += 1
        # large instances work in place and undo a rejected round (copying [M, E] arrays
        # each round would cost more than the round)
        state = best if local else best.copy()
        placed = np.flatnonzero(best.opt != cloud)
        before = state.opt.copy()
        before_total = best.total()
        u = rng.random()
        if placed.size and u < 0.2:
            kick = rng.choice(placed, size=min(placed.size, int(rng.integers(1, 4))), replace=False)
            for x in kick:
                state.move(int(x), cloud)
        elif placed.size and u < 0.4:
            emptied = rng.choice(cm.E, size=min(cm.E, int(rng.integers(1, 3))), replace=False)
            for x in placed:
                if int(best.opt[x]) // 3 in emptied:
                    state.move(int(x), cloud)
            if not local:
                _descend(state, float(rng.choice([0.5, 1.0, 2.0])), _tol(state), rng)
        else:
            # busy models shape the solution most: pick them more often
            m = int(rng.choice(live, p=weights) if rng.random() < 0.5 else rng.choice(live))
            ks = np.flatnonzero(cm.fits_alone[m, :cloud])
            ks = ks[ks != state.opt[m]]
            if ks.size == 0:
                continue
            _force(state, m, int(rng.choice(ks)), rng if rng.random() < 0.3 else None)
        if local:
            moved = np.flatnonzero(state.opt != before)
            hosts = {int(k) // 3 for k in np.concatenate([before[moved], state.opt[moved]])}
            hosts.discard(cloud // 3)
            _local_descend(state, hosts, set(moved.tolist()), _tol(state))
        else:
            if rng.random() < 0.5:
                _descend(state, 1.0, _tol(state))
            _descend(state, 0.0, _tol(state))
        if state.total() < before_total - _tol(state):
            best = state
            stale = 0
        elif local:
            for x in np.flatnonzero(state.opt != before):
                state.move(int(x), int(before[x]))
    if local:
        best.resync()
    return best


# ---------------------------------------------------------------------------------------
# ga: genetic algorithm with repair
# ---------------------------------------------------------------------------------------


def _ga(
    instance: Instance, cm: Compiled, seed: int, time_limit_s: float
) -> tuple[IntArray, bool | None, list[str]]:
    """Genes are per-model options. Population 40 (all-cloud, each model's cheapest option,
    random ones), 60 generations: tournament selection of 3, uniform crossover (p 0.9),
    mutation of 1.5 genes per child on average to a random option (the cloud 40% of the
    time), 2 elites. Every child is repaired (`_repair`) and kept repaired (Lamarckian)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    M, cloud = cm.M, cm.cloud_k
    pop_size, generations, elite = 40, 60, 2
    allowed = [np.flatnonzero(cm.fits_alone[m]) for m in range(M)]

    def random_gene(m: int) -> int:
        if rng.random() < 0.4 or allowed[m].size == 1:
            return cloud
        return int(rng.choice(allowed[m]))

    def fitness(opt: IntArray) -> tuple[IntArray, float]:
        if not cm.feasible(opt):
            opt = _repair(cm, opt)
        return opt, cm.total(opt)

    greedy = cm.cost.copy()
    greedy[~cm.fits_alone] = np.inf
    seeds = [cm.all_cloud(), greedy.argmin(axis=1).astype(np.int64)]
    pop = [fitness(o) for o in seeds]
    while len(pop) < pop_size:
        pop.append(fitness(np.array([random_gene(m) for m in range(M)], dtype=np.int64)))
    notes: list[str] = []
    for gen in range(generations):
        if time.perf_counter() - t0 > time_limit_s:
            notes.append(f"time limit after {gen} generations")
            break
        pop.sort(key=lambda p: p[1])
        costs = np.array([p[1] for p in pop])
        nxt = pop[:elite]
        while len(nxt) < pop_size:
            i = rng.integers(0, pop_size, size=3)
            j = rng.integers(0, pop_size, size=3)
            pa = pop[int(i[np.argmin(costs[i])])][0]
            pb = pop[int(j[np.argmin(costs[j])])][0]
            child = np.where(rng.random(M) < 0.5, pa, pb) if rng.random() < 0.9 else pa.copy()
            for m in np.flatnonzero(rng.random(M) < 1.5 / M):
                child[m] = random_gene(int(m))
            nxt.append(fitness(child))
        pop = nxt
    pop.sort(key=lambda p: p[1])
    return pop[0][0], None, notes


# ---------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------


def _cloud_only(
    instance: Instance, cm: Compiled, seed: int, time_limit_s: float
) -> tuple[IntArray, bool | None, list[str]]:
    return cm.all_cloud(), None, []


def _popularity(
    instance: Instance, cm: Compiled, seed: int, time_limit_s: float
) -> tuple[IntArray, bool | None, list[str]]:
    """Most requested first: resident on the host where it fits (cheapest such host),
    then stored while disk (and the pool) allows, else the cloud."""
    state = State(cm)
    for m in np.argsort(-cm.n, kind="stable"):
        m = int(m)
        if cm.n[m] <= 0:
            break
        for level in (RESIDENT, STORED):
            ks = [3 * e + level for e in range(cm.E) if state.fits(m, 3 * e + level)]
            if ks:
                state.move(m, min(ks, key=lambda k: state.marginal_cost(m, k)))
                break
    return state.opt, None, []


def _lru(
    instance: Instance, cm: Compiled, seed: int, time_limit_s: float
) -> tuple[IntArray, bool | None, list[str]]:
    """No planning: what is resident now stays resident; every other requested model is
    loaded on demand from disk (level stored) on the host with the most free disk."""
    state = State(cm)
    for m in range(cm.M):
        for e in range(cm.E):
            if cm.current[m, e] == RESIDENT and state.fits(m, 3 * e + RESIDENT):
                state.move(m, 3 * e + RESIDENT)
                break
    for m in range(cm.M):
        if state.opt[m] != cm.cloud_k or cm.n[m] <= 0:
            continue
        for e in np.argsort(-(cm.disk_cap - state.disk_u), kind="stable"):
            if state.fits(m, 3 * int(e) + STORED):
                state.move(m, 3 * int(e) + STORED)
                break
    return state.opt, None, []


def _random(
    instance: Instance, cm: Compiled, seed: int, time_limit_s: float
) -> tuple[IntArray, bool | None, list[str]]:
    """Models in random order, each given a random option among those that still fit."""
    rng = np.random.default_rng(seed)
    state = State(cm)
    for m in rng.permutation(cm.M):
        m = int(m)
        ks = [int(k) for k in np.flatnonzero(cm.fits_alone[m]) if state.fits(m, int(k))]
        state.move(m, int(rng.choice(ks)))
    return state.opt, None, []


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("exact", "MILP with HiGHS (optimal within the time limit)", _exact),
        Algorithm("mlds", "model-level decision selection (greedy + local search)", _mlds),
        Algorithm("ga", "genetic algorithm with repair", _ga),
        Algorithm("cloud-only", "every model on the cloud", _cloud_only),
        Algorithm("popularity", "most requested first: resident, then stored", _popularity),
        Algorithm("lru", "on-demand loading from disk, residents stay (LRU-like)", _lru),
        Algorithm("random", "seeded random feasible assignment", _random),
    )
}
DEFAULT_ALGORITHM = "mlds"
