"""An `Instance` as numpy arrays, and the incremental host state the fast algorithms share.

Options are numbered per model: k = 3·e + ℓ for host index e and level index ℓ (0 stored,
1 cached, 2 resident), and k = 3·E for the cloud (K = 3·E + 1 options). `Compiled.cost[m, k]`
is the option's cost *without* the shared pool term (placement.option_cost), +inf where the
model has no Perf on the host.

This is the *one-option surrogate* of the split decision model, the discrete stage of the
algorithms (`splitting` then chooses the fractions for the levels found here): an edge
option serves at most n_edge = min(n_m, ρ_e·τ/I_{m,e}) requests (what the host's compute cap
allows the model alone) and the rest overflows to the cloud at the cloud's per-request
cost, so a model hotter than one host is still placed at the edge for part of its traffic;
its compute use is n_edge·I. With `compute_price` (per host, cost per busy second: the
marginal queueing wait of a previous split, `placement.marginal_wait_price`) each edge
option also pays for the busy seconds it adds, so the search sees queueing. Queueing
itself, which is not separable per model, is left to `splitting`.

`State` keeps per-host usage and the pool size P_e (with the top two pooled VRAM needs
per host, so removing a model tells at once how far the pool shrinks) and prices moves of
one model (`move_table`, vectorised over all models and options; `sub_table` for some
models and hosts) or of two models at once (`pair_deltas`, and `pair_best` for the best of
them in O(K)), exactly as the surrogate's total (`Compiled.total`) would.

Float arithmetic here is only a guide: every algorithm re-checks its answer with
`placement.violations` and reports `placement.evaluate`. Capacity checks here are slightly
stricter than `violations` (relative slack 1e-11 against 1e-9) so they never disagree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .placement import CLOUD, GB, Instance, Level, Option

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

LEVELS = Level.ALL
STORED, CACHED, RESIDENT = 0, 1, 2
_SLACK = 1e-11


class Compiled:
    """Arrays of one instance (see the module docstring for the option numbering)."""

    def __init__(self, instance: Instance, compute_price: FloatArray | None = None) -> None:
        self.instance = instance
        self.model_ids = [m.id for m in instance.models]
        self.host_ids = [h.id for h in instance.hosts]
        M, E = len(self.model_ids), len(self.host_ids)
        self.M, self.E, self.K = M, E, 3 * E + 1
        self.cloud_k = 3 * E
        midx = {m: i for i, m in enumerate(self.model_ids)}
        hidx = {h: j for j, h in enumerate(self.host_ids)}
        self.midx, self.hidx = midx, hidx
        pr = instance.prices

        self.n = np.array([instance.requests(m) for m in self.model_ids], dtype=np.float64)
        self.s = np.array([m.storage_bytes for m in instance.models], dtype=np.float64)
        self.disk_cap = np.array([h.disk_bytes for h in instance.hosts], dtype=np.float64)
        self.ram_cap = np.array([h.ram_bytes for h in instance.hosts], dtype=np.float64)
        self.gpu_cap = np.array([h.gpu_bytes for h in instance.hosts], dtype=np.float64)
        self.comp_cap = np.array(
            [h.rho_max * instance.slot_s for h in instance.hosts], dtype=np.float64
        )
        backhaul = np.array([h.backhaul_Bps for h in instance.hosts], dtype=np.float64)

        self.avail = np.zeros((M, E), dtype=bool)
        self.h = np.zeros((M, E))
        infer = np.zeros((M, E))  # host seconds per request (the compute cap)
        lat = np.zeros((M, E))  # seconds a request takes (the delay)
        l_disk = np.zeros((M, E))
        l_ram = np.zeros((M, E))
        if instance.perf:
            keys = list(instance.perf)
            perfs = list(instance.perf.values())
            ii = np.array([midx[m] for m, _ in keys], dtype=np.int64)
            jj = np.array([hidx[e] for _, e in keys], dtype=np.int64)
            self.avail[ii, jj] = True
            self.h[ii, jj] = [p.vram_bytes for p in perfs]
            infer[ii, jj] = [p.infer_s for p in perfs]
            lat[ii, jj] = [p.delay_s for p in perfs]
            l_disk[ii, jj] = [p.load_disk_s for p in perfs]
            l_ram[ii, jj] = [p.load_ram_s for p in perfs]
        miss = np.ones((M, E))
        for (m, e), p_miss in instance.pool_miss.items():
            miss[midx[m], hidx[e]] = p_miss
        # current level code: -1 absent, else the level index
        cur = np.full((M, E), -1, dtype=np.int64)
        for (m, e), level in instance.current.items():
            cur[midx[m], hidx[e]] = LEVELS.index(level)
        self.current = cur
        # The one-option surrogate of a split (see the module docstring): an edge option
        # serves at most what fits the host's compute cap, the rest overflows to the cloud.
        with np.errstate(divide="ignore", invalid="ignore"):
            cap_n = np.where(infer > 0, self.comp_cap[None, :] / infer, np.inf)
        n_edge = np.minimum(self.n[:, None], cap_n)
        self.n_edge = n_edge
        self.nI = n_edge * infer

        n = n_edge
        disk_res = pr.disk_per_GB * self.s / GB
        fetch = np.where(cur < 0, pr.fetch_weight * self.s[:, None] / backhaul[None, :], 0.0)
        load = np.where(cur == CACHED, l_ram, l_disk)
        cost = np.empty((M, E, 3))
        w = np.array([instance.weight(m) for m in self.model_ids])  # priority weights
        wd = pr.delay_weight * w[:, None]
        cost[:, :, STORED] = n * (lat + miss * l_disk) * wd
        cost[:, :, CACHED] = n * (lat + miss * l_ram) * wd
        cost[:, :, CACHED] += pr.ram_per_GB * self.s[:, None] / GB
        cost[:, :, RESIDENT] = n * lat * wd + pr.vram_per_GB * self.h / GB
        cost[:, :, RESIDENT] += np.where(cur == RESIDENT, 0.0, pr.load_weight * load)
        cost += (disk_res[:, None] + fetch)[:, :, None]
        cloud_infer = np.array([instance.cloud_infer_s(m) for m in self.model_ids])
        per_cloud = (instance.cloud.wan_rtt_s + cloud_infer) * pr.delay_weight
        per_cloud = (per_cloud + pr.cloud_per_request) * w
        cost += ((self.n[:, None] - n_edge) * per_cloud[:, None])[:, :, None]
        if compute_price is not None:
            cost += (self.nI * compute_price[None, :])[:, :, None]
        cost[~self.avail] = np.inf
        cloud = self.n * per_cloud
        self.cost = np.concatenate([cost.reshape(M, 3 * E), cloud[:, None]], axis=1)
        self.cost3 = self.cost[:, : 3 * E].reshape(M, E, 3)  # a view
        self.pool_price = pr.vram_per_GB / GB
        self.slack_disk = _SLACK * np.maximum(1.0, self.disk_cap)
        self.slack_ram = _SLACK * np.maximum(1.0, self.ram_cap)
        self.slack_gpu = _SLACK * np.maximum(1.0, self.gpu_cap)
        self.slack_comp = _SLACK * np.maximum(1.0, self.comp_cap)

        # an option that cannot fit even on an empty host is never offered
        fits = self.avail & (self.s[:, None] <= self.disk_cap + self.slack_disk)
        fits &= self.h <= self.gpu_cap * (1 + _SLACK)
        fits &= self.nI <= self.comp_cap * (1 + _SLACK)
        fits3 = np.repeat(fits[:, :, None], 3, axis=2)
        fits3[:, :, CACHED] &= self.s[:, None] <= self.ram_cap * (1 + _SLACK)
        self.fits_alone = np.concatenate(
            [fits3.reshape(M, 3 * E), np.ones((M, 1), dtype=bool)], axis=1
        )

    # -- conversions --------------------------------------------------------------------

    def option(self, k: int) -> Option:
        if k == self.cloud_k:
            return CLOUD
        return Option(self.host_ids[k // 3], LEVELS[k % 3])

    def to_assignment(self, opt: IntArray) -> dict[str, Option]:
        return {m: self.option(int(k)) for m, k in zip(self.model_ids, opt, strict=True)}

    def from_assignment(self, assignment: dict[str, Option]) -> IntArray:
        opt = np.full(self.M, self.cloud_k, dtype=np.int64)
        for m, o in assignment.items():
            if o.host is not None and o.level is not None:
                opt[self.midx[m]] = 3 * self.hidx[o.host] + LEVELS.index(o.level)
        return opt

    def all_cloud(self) -> IntArray:
        return np.full(self.M, self.cloud_k, dtype=np.int64)

    # -- whole-vector evaluation (GA, checks) -----------------------------------------------

    def usage(self, opt: IntArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Per host: disk, RAM, GPU (residents + pool) and compute used by `opt`."""
        E = self.E
        placed = opt < self.cloud_k
        m = np.flatnonzero(placed)
        e = opt[m] // 3
        lvl = opt[m] % 3
        c, res = lvl == CACHED, lvl == RESIDENT
        disk: FloatArray = np.bincount(e, weights=self.s[m], minlength=E).astype(np.float64)
        ram: FloatArray = np.bincount(e[c], weights=self.s[m[c]], minlength=E).astype(np.float64)
        comp: FloatArray = np.bincount(e, weights=self.nI[m, e], minlength=E).astype(np.float64)
        gpu: FloatArray = np.bincount(e[res], weights=self.h[m[res], e[res]], minlength=E).astype(
            np.float64
        )
        pool = np.zeros(E)
        np.maximum.at(pool, e[~res], self.h[m[~res], e[~res]])
        return disk, ram, gpu + pool, comp

    def pool_sizes(self, opt: IntArray) -> FloatArray:
        placed = opt < self.cloud_k
        pooled = placed & (opt % 3 != RESIDENT)
        m = np.flatnonzero(pooled)
        e = opt[m] // 3
        pool = np.zeros(self.E)
        np.maximum.at(pool, e, self.h[m, e])
        return pool

    def total(self, opt: IntArray) -> float:
        base = float(self.cost[np.arange(self.M), opt].sum())
        return base + self.pool_price * float(self.pool_sizes(opt).sum())

    def over(self, opt: IntArray) -> BoolArray:
        """Per host: True where `opt` breaks a capacity."""
        disk, ram, gpu, comp = self.usage(opt)
        return (
            (disk > self.disk_cap * (1 + _SLACK))
            | (ram > self.ram_cap * (1 + _SLACK))
            | (gpu > self.gpu_cap * (1 + _SLACK))
            | (comp > self.comp_cap * (1 + _SLACK))
        )

    def feasible(self, opt: IntArray) -> bool:
        return not bool(self.over(opt).any())


_STATE_ARRAYS = (
    "opt",
    "disk_u",
    "ram_u",
    "res_u",
    "comp_u",
    "pooled",
    "P",
    "top1_m",
    "top2",
    "top2_m",
    "own_s",
    "own_ram",
    "own_comp",
    "own_res",
    "pool_adj",
)


class State:
    """A mutable assignment (`opt`) with its per-host usage kept up to date."""

    def __init__(self, cm: Compiled, opt: IntArray | None = None) -> None:
        self.cm = cm
        E = cm.E
        self.opt = cm.all_cloud()
        self.disk_u = np.zeros(E)
        self.ram_u = np.zeros(E)
        self.res_u = np.zeros(E)
        self.comp_u = np.zeros(E)
        self.pooled = np.zeros((cm.M, E), dtype=bool)
        self.P = np.zeros(E)
        self.top1_m = np.full(E, -1, dtype=np.int64)
        self.top2 = np.zeros(E)
        self.top2_m = np.full(E, -1, dtype=np.int64)
        # Each model's own use of its current host ([M, E], one nonzero column per row), so
        # that "the host without this model" is one array operation for all models.
        self.own_s = np.zeros((cm.M, E))
        self.own_ram = np.zeros((cm.M, E))
        self.own_comp = np.zeros((cm.M, E))
        self.own_res = np.zeros((cm.M, E))
        # P_e(without m) − P_e: nonzero only for the model that sets its host's pool size
        self.pool_adj = np.zeros((cm.M, E))
        grid = 3 * np.arange(E)[None, None, :]
        self._ia = grid + np.arange(3)[:, None, None] + np.zeros((1, 3, 1), dtype=np.int64)
        self._ib = grid + np.arange(3)[None, :, None] + np.zeros((3, 1, 1), dtype=np.int64)
        if opt is not None:
            for m in np.flatnonzero(opt < cm.cloud_k):
                self.move(int(m), int(opt[m]))

    def copy(self) -> State:
        new = State.__new__(State)
        new.cm = self.cm
        new._ia, new._ib = self._ia, self._ib
        for name in _STATE_ARRAYS:
            setattr(new, name, getattr(self, name).copy())
        return new

    def resync(self) -> None:
        """Recompute the per-host sums from scratch (after many moves, float sums of
        compute seconds can drift by a few ulps)."""
        disk, ram, _, comp = self.cm.usage(self.opt)
        self.disk_u, self.ram_u, self.comp_u = disk, ram, comp
        self.res_u = self.own_res.sum(axis=0)

    def total(self) -> float:
        cm = self.cm
        return float(cm.cost[np.arange(cm.M), self.opt].sum()) + cm.pool_price * float(self.P.sum())

    # -- moves --------------------------------------------------------------------------

    def _recompute_pool(self, e: int) -> None:
        old_top = int(self.top1_m[e])
        if old_top >= 0:
            self.pool_adj[old_top, e] = 0.0
        members = np.flatnonzero(self.pooled[:, e])
        self.top2_m[e] = -1
        if members.size == 0:
            self.P[e], self.top1_m[e], self.top2[e] = 0.0, -1, 0.0
            return
        vals = self.cm.h[members, e]
        i = int(np.argmax(vals))
        self.P[e] = vals[i]
        self.top1_m[e] = members[i]
        if members.size > 1:
            vals[i] = -np.inf
            j = int(np.argmax(vals))
            self.top2[e] = float(vals[j])
            self.top2_m[e] = members[j]
        else:
            self.top2[e] = 0.0
        self.pool_adj[members[i], e] = self.top2[e] - self.P[e]

    def pair_lower_bounds(self) -> FloatArray:
        """Per model, a lower bound on its part of any two-model move's cost change: its
        cheapest option ignoring capacity and pool growth, minus its current cost, minus the
        whole pool of its host if it is one of the two largest pooled there (removing two
        models shrinks a pool only through its two largest members). A pair (a, b) with
        bound[a] + bound[b] ≥ 0 cannot improve."""
        cm = self.cm
        ar = np.arange(cm.M)
        best = np.where(cm.fits_alone, cm.cost, np.inf).min(axis=1)
        bound = best - cm.cost[ar, self.opt]
        for e in range(cm.E):
            for x in (self.top1_m[e], self.top2_m[e]):
                if x >= 0:
                    bound[x] -= cm.pool_price * self.P[e]
        return bound

    def pool_without(self, m: int, e: int) -> float:
        """P_e if model m left host e's pool."""
        return float(self.top2[e]) if self.top1_m[e] == m else float(self.P[e])

    def _apply(self, m: int, k: int, sign: float) -> int:
        cm = self.cm
        e, lvl = divmod(k, 3)
        on = sign > 0
        self.disk_u[e] += sign * cm.s[m]
        self.comp_u[e] += sign * cm.nI[m, e]
        self.own_s[m, e] = cm.s[m] if on else 0.0
        self.own_comp[m, e] = cm.nI[m, e] if on else 0.0
        if lvl == CACHED:
            self.ram_u[e] += sign * cm.s[m]
            self.own_ram[m, e] = cm.s[m] if on else 0.0
        if lvl == RESIDENT:
            self.res_u[e] += sign * cm.h[m, e]
            self.own_res[m, e] = cm.h[m, e] if on else 0.0
            return -1
        self.pooled[m, e] = on
        return e

    def move(self, m: int, k: int) -> None:
        """Give model m option k (no feasibility check)."""
        old = int(self.opt[m])
        if old == k:
            return
        dirty = set()
        if old != self.cm.cloud_k:
            dirty.add(self._apply(m, old, -1.0))
        if k != self.cm.cloud_k:
            dirty.add(self._apply(m, k, +1.0))
        self.opt[m] = k
        for e in dirty:
            if e >= 0:
                self._recompute_pool(e)

    def fits(self, m: int, k: int) -> bool:
        """Whether model m (now on the cloud) can take option k given everybody else."""
        cm = self.cm
        if k == cm.cloud_k:
            return True
        if not cm.fits_alone[m, k]:
            return False
        e, lvl = divmod(k, 3)
        if self.disk_u[e] + cm.s[m] > cm.disk_cap[e] * (1 + _SLACK):
            return False
        if self.comp_u[e] + cm.nI[m, e] > cm.comp_cap[e] * (1 + _SLACK):
            return False
        if lvl == CACHED and self.ram_u[e] + cm.s[m] > cm.ram_cap[e] * (1 + _SLACK):
            return False
        h = cm.h[m, e]
        gpu = self.res_u[e] + (self.P[e] + h if lvl == RESIDENT else max(self.P[e], h))
        return bool(gpu <= cm.gpu_cap[e] * (1 + _SLACK))

    def marginal_cost(self, m: int, k: int) -> float:
        """Cost of option k for model m now on the cloud, pool growth included."""
        cm = self.cm
        c = float(cm.cost[m, k])
        if k != cm.cloud_k and k % 3 != RESIDENT:
            e = k // 3
            c += cm.pool_price * max(0.0, cm.h[m, e] - self.P[e])
        return c

    # -- move tables --------------------------------------------------------------------

    def move_table(self, with_weights: bool = False) -> tuple[FloatArray, FloatArray | None]:
        """Cost change of moving each model to each option, +inf where it does not fit.

        Returns (delta[M, K], weight[M, K] or None). The weight of a move is its use of
        each host resource divided by what the host has left (without the moving model):
        the "price" of scarce resources, rising as a host fills. The current option of a
        model has delta +inf (it is not a move).
        """
        cm = self.cm
        M, E = cm.M, cm.E
        ar = np.arange(M)
        # each host as the moving model would find it (itself removed), slack included
        free_disk = (cm.disk_cap - self.disk_u + cm.slack_disk) + self.own_s
        free_comp = (cm.comp_cap - self.comp_u + cm.slack_comp) + self.own_comp
        free_ram = (cm.ram_cap - self.ram_u + cm.slack_ram) + self.own_ram
        pool = self.P + self.pool_adj
        room = (cm.gpu_cap - self.res_u - self.P + cm.slack_gpu) + self.own_res
        room -= self.pool_adj
        removal = cm.cost[ar, self.opt] - cm.pool_price * self.pool_adj.sum(axis=1)

        h, s = cm.h, cm.s[:, None]
        growth = h - pool
        np.maximum(growth, 0.0, out=growth)
        base_ok = cm.avail & (s <= free_disk)
        base_ok &= cm.nI <= free_comp
        ok_pool = base_ok & (growth <= room)
        ok_cached = ok_pool & (s <= free_ram)
        ok_res = base_ok & (h <= room)
        pool_cost = cm.pool_price * growth
        pool_cost -= removal[:, None]

        delta = np.empty((M, cm.K))
        d3 = delta[:, : 3 * E].reshape(M, E, 3)
        c3 = cm.cost3
        d3[:, :, STORED] = np.where(ok_pool, c3[:, :, STORED] + pool_cost, np.inf)
        d3[:, :, CACHED] = np.where(ok_cached, c3[:, :, CACHED] + pool_cost, np.inf)
        d3[:, :, RESIDENT] = np.where(ok_res, c3[:, :, RESIDENT] - removal[:, None], np.inf)
        delta[:, cm.cloud_k] = cm.cost[:, cm.cloud_k] - removal
        delta[ar, self.opt] = np.inf

        weight = None
        if with_weights:
            tiny = 1.0  # one byte: avoids 0/0 on full hosts
            base_w = s / np.maximum(free_disk, tiny) + cm.nI / np.maximum(free_comp, 1e-9)
            fg = np.maximum(room, tiny)
            weight = np.zeros((M, cm.K))
            w3 = weight[:, : 3 * E].reshape(M, E, 3)
            w3[:, :, STORED] = base_w + growth / fg
            w3[:, :, CACHED] = w3[:, :, STORED] + s / np.maximum(free_ram, tiny)
            w3[:, :, RESIDENT] = base_w + h / fg
        return delta, weight

    def pool_adj_rows(self) -> FloatArray:
        """Per model: P_e(without it) − P_e on its own host (0 unless it sets the pool)."""
        out = np.zeros(self.cm.M)
        has = np.flatnonzero(self.top1_m >= 0)
        out[self.top1_m[has]] = self.top2[has] - self.P[has]
        return out

    def sub_table(self, rows: IntArray | None, hosts: IntArray | None) -> FloatArray:
        """`move_table` restricted to some models (rows; None = all) and some hosts (None =
        all): a [rows, 3·hosts + 1] array, the last column the cloud. Used to re-price only
        the moves a local change can have made improving."""
        cm = self.cm
        R = np.arange(cm.M) if rows is None else rows
        H = np.arange(cm.E) if hosts is None else hosts

        def pick(a: npt.NDArray[Any]) -> npt.NDArray[Any]:  # a[R][:, H], no whole copies
            if rows is None:
                return a if hosts is None else a[:, H]
            return a[R] if hosts is None else a[np.ix_(R, H)]

        opt = self.opt[R]
        free_disk = (cm.disk_cap[H] - self.disk_u[H] + cm.slack_disk[H]) + pick(self.own_s)
        free_comp = (cm.comp_cap[H] - self.comp_u[H] + cm.slack_comp[H]) + pick(self.own_comp)
        free_ram = (cm.ram_cap[H] - self.ram_u[H] + cm.slack_ram[H]) + pick(self.own_ram)
        adj = pick(self.pool_adj)
        pool = self.P[H] + adj
        room = (cm.gpu_cap[H] - self.res_u[H] - self.P[H] + cm.slack_gpu[H]) + pick(self.own_res)
        room -= adj
        removal = cm.cost[R, opt] - cm.pool_price * self.pool_adj_rows()[R]
        h, s, nI = pick(cm.h), cm.s[R][:, None], pick(cm.nI)
        growth = np.maximum(h - pool, 0.0)
        base_ok = pick(cm.avail) & (s <= free_disk) & (nI <= free_comp)
        ok_pool = base_ok & (growth <= room)
        ok_cached = ok_pool & (s <= free_ram)
        ok_res = base_ok & (h <= room)
        pool_cost = cm.pool_price * growth - removal[:, None]
        c3 = pick(cm.cost3)
        n_r, n_h = len(R), len(H)
        delta = np.empty((n_r, 3 * n_h + 1))
        d3 = delta[:, : 3 * n_h].reshape(n_r, n_h, 3)
        d3[:, :, STORED] = np.where(ok_pool, c3[:, :, STORED] + pool_cost, np.inf)
        d3[:, :, CACHED] = np.where(ok_cached, c3[:, :, CACHED] + pool_cost, np.inf)
        d3[:, :, RESIDENT] = np.where(ok_res, c3[:, :, RESIDENT] - removal[:, None], np.inf)
        delta[:, -1] = cm.cost[R, cm.cloud_k] - removal
        # the current option is not a move
        col = np.full(cm.E, -1, dtype=np.int64)
        col[H] = np.arange(n_h)
        on_cloud = opt == cm.cloud_k
        delta[np.flatnonzero(on_cloud), -1] = np.inf
        placed = np.flatnonzero(~on_cloud)
        j = col[opt[placed] // 3]
        inside = j >= 0
        delta[placed[inside], 3 * j[inside] + opt[placed[inside]] % 3] = np.inf
        return delta

    def _pair_parts(self, a: int, b: int) -> tuple[FloatArray, FloatArray, FloatArray, float]:
        """With models a and b both removed: the cost of adding each alone at each option
        (da, db: [K], +inf where it does not fit), of adding both to one host at levels
        (la, lb) ([3, 3, E]), and the cost their removal saves."""
        cm = self.cm
        E = cm.E
        opt = self.opt
        fd = cm.disk_cap - self.disk_u + cm.slack_disk
        fr = cm.ram_cap - self.ram_u + cm.slack_ram
        fc = cm.comp_cap - self.comp_u + cm.slack_comp
        res = self.res_u.copy()
        pool = self.P.copy()
        removal = float(cm.cost[a, opt[a]] + cm.cost[b, opt[b]])
        pool_hosts = set()
        for x in (a, b):
            k = int(opt[x])
            if k == cm.cloud_k:
                continue
            e, lvl = divmod(k, 3)
            fd[e] += cm.s[x]
            fc[e] += cm.nI[x, e]
            if lvl == CACHED:
                fr[e] += cm.s[x]
            if lvl == RESIDENT:
                res[e] -= cm.h[x, e]
            else:
                pool_hosts.add(e)
        for e in pool_hosts:
            members = self.pooled[:, e].copy()
            members[[a, b]] = False
            new_p = float(cm.h[members, e].max()) if members.any() else 0.0
            removal += cm.pool_price * (self.P[e] - new_p)
            pool[e] = new_p
        room = cm.gpu_cap - res - pool + cm.slack_gpu

        def single(x: int) -> FloatArray:
            h = cm.h[x]
            growth = np.maximum(h - pool, 0.0)
            add = cm.cost3[x].copy()
            add[:, STORED] += cm.pool_price * growth
            add[:, CACHED] += cm.pool_price * growth
            base_ok = cm.avail[x] & (cm.s[x] <= fd) & (cm.nI[x] <= fc)
            ok_pool = base_ok & (growth <= room)
            add[:, STORED][~ok_pool] = np.inf
            add[:, CACHED][~(ok_pool & (cm.s[x] <= fr))] = np.inf
            add[:, RESIDENT][~(base_ok & (h <= room))] = np.inf
            return np.append(add.reshape(3 * E), cm.cost[x, cm.cloud_k])

        # both on one host: the sums of their needs must fit together. Arrays [la, lb, e].
        lv = np.arange(3)[:, None]
        ha, hb = cm.h[a], cm.h[b]
        ra, rb = np.where(lv == RESIDENT, ha, 0.0), np.where(lv == RESIDENT, hb, 0.0)
        pa, pb = np.where(lv == RESIDENT, 0.0, ha), np.where(lv == RESIDENT, 0.0, hb)
        new_pool = np.maximum(np.maximum(pool, pa[:, None, :]), pb[None, :, :])
        resid = res + ra[:, None, :] + rb[None, :, :]
        ram_a = np.where(lv[:, 0] == CACHED, cm.s[a], 0.0)
        ram_b = np.where(lv[:, 0] == CACHED, cm.s[b], 0.0)
        ram = (ram_a[:, None] + ram_b[None, :])[:, :, None]
        ok = cm.avail[a] & cm.avail[b]
        ok &= cm.s[a] + cm.s[b] <= fd
        ok &= cm.nI[a] + cm.nI[b] <= fc
        ok3 = ok & (ram <= fr) & (resid + new_pool <= cm.gpu_cap + cm.slack_gpu)
        val = cm.cost3[a].T[:, None, :] + cm.cost3[b].T[None, :, :]
        val = val + cm.pool_price * (new_pool - pool)
        return single(a), single(b), np.where(ok3, val, np.inf), removal

    def pair_deltas(self, a: int, b: int) -> FloatArray:
        """Cost change of giving models a and b options (k_a, k_b) at once: a [K, K] array,
        +inf where the pair does not fit; (current, current) is 0."""
        da, db, same, removal = self._pair_parts(a, b)
        D = da[:, None] + db[None, :]
        D[self._ia, self._ib] = same
        D -= removal
        D[int(self.opt[a]), int(self.opt[b])] = 0.0
        return D

    def pair_best(self, a: int, b: int) -> tuple[float, int, int]:
        """The best entry of `pair_deltas(a, b)` as (delta, k_a, k_b), in O(K) instead of
        O(K²): on different hosts the two models' changes add up, so only each one's best
        and second-best host matter; on one host the [3, 3, E] block decides."""
        cm = self.cm
        E, cloud = cm.E, cm.cloud_k
        da, db, same, removal = self._pair_parts(a, b)
        # best option per host ([E]) for each model, plus the cloud
        la_best = da[:cloud].reshape(E, 3).argmin(axis=1)
        lb_best = db[:cloud].reshape(E, 3).argmin(axis=1)
        ka_h = 3 * np.arange(E) + la_best
        kb_h = 3 * np.arange(E) + lb_best
        va, vb = da[ka_h], db[kb_h]
        cands: list[tuple[float, int, int]] = []
        # one of them on the cloud (the other anywhere, the cloud included)
        kb_any = int(np.argmin(db))
        ka_any = int(np.argmin(da))
        cands.append((da[cloud] + db[kb_any], cloud, kb_any))
        cands.append((da[ka_any] + db[cloud], ka_any, cloud))
        # two different hosts
        if E >= 2:
            ia = np.argsort(va, kind="stable")[:2]
            ib = np.argsort(vb, kind="stable")[:2]
            for x in ia:
                for y in ib:
                    if x != y:
                        cands.append((va[x] + vb[y], int(ka_h[x]), int(kb_h[y])))
        # the same host
        j = int(np.argmin(same))
        la, lb, e = np.unravel_index(j, same.shape)
        cands.append((float(same.flat[j]), 3 * int(e) + int(la), 3 * int(e) + int(lb)))
        best = min(cands, key=lambda c: c[0])
        return float(best[0]) - removal, best[1], best[2]
