"""Replay a request trace slot by slot through the decision core, on a fake clock.

`simulate(base, requests, policy)` plays one policy over a trace: every slot of
`base.slot_s` seconds it plans with `algorithms.solve(policy, instance)` (the same decision
core the orchestrator runs), carries the decision out on simulated hosts, then serves the
slot's requests with the edge agent's semantics, routed as the gateway routes them.
`simulate_all` runs every policy of `POLICIES` on the same trace. Pure Python and numpy;
deterministic for a seed.

What a planning policy sees (never the slot it plans)
-----------------------------------------------------
- rates: `rates.RateEstimator` (the orchestrator's EWMA with surge detection) fed with the
  arrivals of *earlier* slots only: the plan for slot t is made before any arrival of slot
  t is observed (`SlotRecord.planned_rates` keeps what each plan used). Requests stamped
  before the first slot are history: they train the estimator and are not served.
- π (pool-miss probability): when the decision core offers `placement.pool_miss_from`,
  π of slot t comes from the previous slot's decision (which models share each pool and
  the rates routed to them; first-in-first-out, or with `SimConfig.grouped_pi` for the
  pool grouped by model under `SimConfig.pool_max_wait_s`) on slot t's instance;
  otherwise (and for slot 0, and for custom planners that return a bare assignment)
  `rates.PoolStats` fed with the pool hits and misses the simulated hosts saw in earlier
  slots (1 without evidence, the cost model's default).
- `current`: the levels the previous slot's decision left on each host, plus, as level
  `stored`, every model still on a host's disk that the decision no longer places there
  (see "Disk retention": using it again costs no fetch).
- when (`SimConfig.replan_on_surge`, on by default): at every slot boundary, and, as the
  orchestrator does, at once within a slot when the estimator reports a surge
  (`RateEstimator.check_surges`, called at each arrival as the gateway's arrival reports
  reach the orchestrator): the arrivals up to the surge are counted, the requests before it
  are served with the plan they were routed by, and the new plan, which keeps every level
  of the one before (`placement.keeping`, as the orchestrator plans on a surge: it adds
  levels and shifts traffic, and takes nothing away), is carried out from the surge's
  instant (its transitions as at a slot boundary, below); the slot's resource cost
  is the time-weighted sum of its plans'. `exact-hindsight` plans once a slot (its rates
  are already the slot's true ones).
- what is carried out (`SimConfig.hysteresis`, on by default): as in the orchestrator, a
  named policy's decision replaces the levels the last one held only once what keeping
  them (re-split at the new rates) cost more, summed over the slots it kept them, reaches
  the new decision's transitions plus the loads of coming back (`hysteresis.settle`);
  `exact-hindsight` carries out its decisions as solved.
- `exact-hindsight` (`HINDSIGHT`), the yardstick, is the exact MILP given the *true* rates
  of the slot it plans (its arrival count / slot length); everything else is the same.

Decisions: splits and levels
----------------------------
A decision (`Plan`, or the decision core's `Decision`) splits each model's traffic over
options: fractions over the cloud and any number of (host, level) replicas, summing to 1
(`split_of`; a decision without a split sends all of a model's traffic to its one option),
and holds a level per (model, host) (`levels_of`; a replica may hold a level with no
traffic). The simulator carries out the levels per host (below) and routes each request:

Routing (the gateway's rule, `cloud_gateway/core/routing.py`)
-------------------------------------------------------------
- Per model, one smooth weighted round-robin chooser (`genedge.weighted.SmoothWeighted`, as
  the gateway keeps one per model, across slots) picks, in arrival order, among the cloud
  and the planned hosts, by the decision's routing weights (`placement.routing_weights`:
  the split, with each share of a host that sheds scaled up by what it will pass on to
  the cloud, as the orchestrator's routing table carries them) where the model is *ready* at
  the request's arrival (on disk; loaded, for a resident replica): a host still fetching
  or loading it is left out of the pick, as the gateway skips hosts whose model state is
  not `ready`. Nothing ready and no cloud fraction: the cloud.
- Live-queue correction (`SimConfig.overflow`, on by default): the pick only decides edge
  or cloud; an edge request goes to the ready planned host that would finish it first (the
  picked host on a tie), and to the cloud when even that one would finish it later than the
  cloud; and a request the pick sends to the cloud goes instead to an idle planned host
  (nothing in service or waiting there, the model ready) that would finish it before the
  cloud, as the gateway does (the split thins traffic to keep queues short; an idle
  server has none). **The router does not know a request's size**: as the gateway (`infer_s × (1 +
  queue)`), it estimates every request, the one in service, the queued ones and the new
  one, at its model's mean inference time I (the instance's, what the planner uses), with
  the pool switches the queue implies, and the cloud at T^wan + I^cloud; each request is
  then served at its own work. (Before this was so, the simulator routed with each
  request's true size: a router that knew which requests were long, which favoured the
  load-on-demand baselines on the LLM traces.) With the pool grouped by model the order can
  differ from the estimate's (within the starvation bound).
- On demand (`SimConfig.on_demand`, on by default, with overflow on): a request the pick
  sends to the cloud goes instead to a host that holds the model on its disk but is not
  planned for it, when that host is idle (nothing served or waiting), its planned swap pool
  is at least the model's GPU memory, and a pool load plus the request would finish before
  the cloud (estimated as above; the quickest such host); it is served through the pool
  (a switch, as any pool miss). The gateway does the same with the table's
  `RouteHost.on_demand`. This is what
  Ollama-style loading on demand does, within the memory the decision already holds.
- Overflow off: the pick is over every planned option (ready or not) and the request is
  served there however long it waits (for a fetch or load, then in the host's queue).
  The compute cap ρ_max is a planning constraint only.

Serving (the edge agent's semantics)
------------------------------------
- One server per host GPU: requests are served one at a time, each once it is eligible
  (its arrival, or later when it waits for a transition, see below); a request of `work` w
  takes w·I_{m,e} seconds (w = 1 is the measured generation).
- Swap pool: a request for a pooled (stored or cached) model that finds the pool holding
  another model first loads it (L^disk, or L^ram when cached) on the same server, replacing
  the previous pooled model (whose requests have drained: the server is sequential). That
  is a *switch*; a pool load is delay, as in the cost model (π·L is delay there too).
- Order, the agent's (`genedge.pool_schedule.next_model`, the rule the edge agent's manager
  runs): whenever the server is free it takes, among the eligible pooled requests, those of
  a request that has waited `SimConfig.pool_max_wait_s` (30 s, the agent's default) first,
  oldest first; else the model the pool holds (its waiting requests go before a switch);
  else the oldest. Resident requests are served first-in-first-out, and the oldest of them
  goes before the pool's choice when it arrived earlier (the two share the one server).
  `pool_max_wait_s = 0` is first-in-first-out throughout (the simulator before the agent
  grouped its pool). Each host drains its queue before the next slot's requests.
- Cloud: latency T^wan + w·I^cloud_m, unlimited capacity, `cloud_per_request` each.

Transitions at a slot boundary t0 (the orchestrator reconciles at once)
-----------------------------------------------------------------------
- a model placed on a host whose disk lacks it is fetched over the backhaul from t0, for
  s_m / B_e seconds (`bytes_fetched`; charged fetch_weight·s/B as transition cost, like the
  cost model); models a decision drops from a host stay on its disk (see below);
- a model becoming resident pays one load (L^ram if it was cached there, else L^disk;
  charged load_weight·L, and it is a switch). The load starts when the model is on disk and
  the GPU memory it needs is free: when the residents and pool content the decision evicts
  on that host have drained (their queued requests finished). Until then the replica is
  not ready: with overflow on its share goes to the model's other ready options (see
  "Routing"); with overflow off its requests wait until it is ready (other models keep
  being served meanwhile), never to the pool.
- the pool keeps its content when that model stays pooled on the host, else it is emptied
  (after draining). Filling the RAM tier (cached) is free and instant, as in the cost model;
  evictions take no time.
- Disk retention (the edge agent never deletes model files on its own): a model the
  decision drops from a host (to the cloud, or to another host) leaves its GPU memory and
  RAM tier but its files stay on that host's disk, as `stored` in the next plan's
  `current`, so placing it there again needs no fetch. Retained models are evicted only
  when a fetch needs the space: at the slot boundary, least recently used first (last
  placed there or last served there), until the decision's models and the retained ones fit
  the disk. The decision's disk constraint counts only the models it places (retained ones
  are evictable, so every feasible decision can be carried out).
- GPU memory is tracked as intervals (resident loads and pool contents, from load start to
  eviction) and `SimResult.peak_gpu_bytes` is the largest sum at any instant; the
  decisions are feasible (checked every slot by `placement.violations_split`: fractions
  that sum to 1 over valid options, levels that match, and each host's disk, RAM, GPU
  memory and compute cap over the split traffic) and the order
  above keeps the peak within each host's GPU memory.

`lru` and `keep-alive` (no planning, per-request loading)
---------------------------------------------------------
The planner form of `lru` in `algorithms.py` can only say "pooled from disk", which is a
single-model pool, not an LRU cache. The simulator therefore serves `lru` directly, like
Ollama or Ray Serve model multiplexing: every request goes to the edge if some host can hold
the model (else the cloud), to the host that would finish it first (its backlog, plus a
fetch and a load where it lacks the model, every request at its model's mean I as above: a
router that knows the queues and the cached models, kinder to `lru` than routing by cache
affinity alone); a model not loaded is loaded on
demand (L^disk, on the request's server, a switch), evicting least recently used models
until it fits in GPU memory; a model not on disk is fetched on demand (from the request's
arrival), evicting least recently used models from disk (and from the GPU) until it fits;
a victim leaves the GPU and the disk once its queued requests have finished, while the new
download starts at once (so the disk, never the GPU, may briefly hold both).
No RAM tier, no compute cap, no planning, no idle unloading. With overflow on, a request
goes to the cloud when the chosen host's backlog and the request (at mean I) would finish
later than the cloud: the overflow sheds a busy server's queue, it does not weigh the
model's own fetch and load (an Ollama-style server always loads what it is asked for; were
the load weighed against the cloud, a mean request would never pay a multi-second load on
the LLM traces and these baselines would become cloud-only).

`keep-alive` (`KEEP_ALIVE`) is Ollama's default scheduler on the same hosts, router and
overflow: loads on demand as `lru`, but a model idle for `SimConfig.keep_alive_s` (300 s,
Ollama's `OLLAMA_KEEP_ALIVE` of 5 minutes, counted from the end of its last request) is
unloaded from the GPU, and at most `SimConfig.max_loaded_per_gpu` (3, Ollama's
`OLLAMA_MAX_LOADED_MODELS` per GPU) are loaded at once; a 4th, or one that does not fit the
GPU memory, evicts the least recently used. Idle unloading is checked at each request's
arrival (and at the end, for the cost), with the unload stamped at the expiry itself.
The resource cost of both is the time-average of the disk and GPU bytes held over each
slot, at the cost model's prices.

Cost (the cost model's units, seconds-equivalent; `placement.Prices`)
---------------------------------------------------------------------
Per slot: delay = delay_weight·Σ latency of the slot's requests (queueing, waits for
transitions, pool loads and inference included); resource = the bytes the decision holds
for the slot at the cost model's prices (disk per model and host it places, RAM per cached
copy, VRAM per resident copy and per host for its pool's largest member: the resource term
of `placement.evaluate` for a decision without a split, every replica counted for a split)
plus disk_per_GB·(bytes retained on disk beyond the decision; they change only at slot
boundaries, so this is their time-average, as for `lru`: every byte on a disk is charged,
whatever the policy); cloud = cloud_per_request·(cloud requests); transition = fetch and
resident-load seconds weighted. Totals and request statistics count the slots from
`SimConfig.warmup_slots` on.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np

from genedge.pool_schedule import DEFAULT_MAX_WAIT_S, Waiter, next_model
from genedge.weighted import SmoothWeighted
from orchestrator.core import placement
from orchestrator.core.algorithms import ALGORITHMS, solve
from orchestrator.core.hysteresis import settle
from orchestrator.core.placement import (
    GB,
    CostBreakdown,
    HostSpec,
    Instance,
    Level,
    Option,
    Perf,
    keeping,
    levels_of_split,
    routing_weights,
    split_of_assignment,
    violations_split,
)
from orchestrator.core.rates import (
    DEFAULT_HALF_LIVES_S,
    DEFAULT_SURGE_ALPHA,
    PoolStats,
    RateEstimator,
)

__all__ = [
    "HINDSIGHT",
    "KEEP_ALIVE",
    "POLICIES",
    "Plan",
    "Planner",
    "Request",
    "SimConfig",
    "SimResult",
    "SimulationError",
    "SlotRecord",
    "feasible_start",
    "levels_of",
    "poisson_requests",
    "simulate",
    "simulate_all",
    "split_of",
]

HINDSIGHT: Final = "exact-hindsight"
"""The yardstick policy: the exact MILP planned with each slot's true rates."""

LRU: Final = "lru"

KEEP_ALIVE: Final = "keep-alive"
"""Ollama's default scheduler: load on demand, unload after 5 idle minutes, 3 per GPU."""

POLICIES: Final[tuple[str, ...]] = (*ALGORITHMS, KEEP_ALIVE, HINDSIGHT)
"""Every policy `simulate` knows by name: the registered algorithms, `keep-alive` and the
yardstick."""


@dataclass(frozen=True)
class Plan:
    """A decision as the simulator carries it out: per model the fraction of its traffic
    each option gets (`split`, > 0, summing to 1), the level held per (model, host)
    (`levels`, every host of the split included, replicas without traffic allowed) and the
    one-option view (`assignment`: each model's heaviest option). `source` is the
    decision object it was read from (a `Decision`), if any."""

    split: Mapping[str, Mapping[Option, float]]
    levels: Mapping[tuple[str, str], str]
    assignment: Mapping[str, Option]
    source: object | None = None
    weights: Mapping[str, Mapping[Option, float]] | None = None
    """What the gateway sends each option (`placement.routing_weights`); None: the split."""

    @classmethod
    def of(cls, decision: object) -> Plan:
        """A `Plan` from a `Plan`, a decision (anything with `.assignment`, optionally
        `.split` and `.levels`) or a bare assignment (model -> option)."""
        if isinstance(decision, Plan):
            return decision
        if isinstance(decision, Mapping):
            assignment = dict(decision)
            split = split_of_assignment(assignment)
            return cls(split, levels_of_split(split), assignment)
        split = split_of(decision)
        assignment = {m: max(fr, key=lambda o: (fr[o], str(o))) for m, fr in split.items()}
        return cls(split, levels_of(decision), assignment, decision)

    @property
    def has_split(self) -> bool:
        """True when some model's traffic goes to more than one option."""
        return any(len(fr) > 1 for fr in self.split.values())

    def on_host(self, host: str) -> dict[str, str]:
        """Model -> level of what this decision holds on one host."""
        return {m: level for (m, e), level in self.levels.items() if e == host}


def split_of(decision: Any) -> dict[str, dict[Option, float]]:
    """Model -> option -> fraction of a decision: its `split` when it has one, else each
    model's one option of `assignment` at 1."""
    split = getattr(decision, "split", None)
    if split is not None:
        return {m: {o: float(x) for o, x in fr.items() if x > 0.0} for m, fr in split.items()}
    return split_of_assignment(decision.assignment)


def levels_of(decision: Any) -> dict[tuple[str, str], str]:
    """(model, host) -> level a decision holds: its `levels` when it has them, else the
    levels of its split's (or assignment's) edge options."""
    levels = getattr(decision, "levels", None)
    if levels is not None:
        return dict(levels)
    return levels_of_split(split_of(decision))


Planner = Callable[[Instance, int], "Mapping[str, Option] | Plan | Any"]
"""A custom policy: (instance of the slot, slot index) -> one option per model, a `Plan`,
or a decision object (`.assignment`, optionally `.split` and `.levels`)."""


class SimulationError(RuntimeError):
    """A policy returned an infeasible decision, or a request names an unknown model."""


@dataclass(frozen=True)
class Request:
    """One request: arrival time `t` (seconds, trace clock), model id, and its `work`,
    a multiplier of the measured inference time (1 = the measured generation)."""

    t: float
    model: str
    work: float = 1.0


@dataclass(frozen=True)
class SimConfig:
    """How to run a simulation.

    `start_s`: when slot 0 begins (default: the first request); earlier requests are
    history (estimator only). `n_slots`: how many slots to play (default: up to the last
    request). `warmup_slots`: played but left out of the totals. `overflow`: the gateway's
    live-queue correction and readiness rule (a request goes past a host that would finish
    it later than the cloud; see the module docstring). The estimator settings are the
    orchestrator's defaults (`half_lives_s`: the candidate half-lives, `()` for the one fixed
    `half_life_s`); `time_limit_s` bounds each solve; `seed + slot` seeds it.
    `keep_alive_s`, `max_loaded_per_gpu`: the `keep-alive` baseline's (Ollama's defaults).
    `pool_max_wait_s`: the swap pool's starvation bound, as the agent's
    `EDGE_POOL_MAX_WAIT_S` (30 s): a planned host's pool serves its waiting requests by
    `genedge.pool_schedule.next_model`; 0 is first-in-first-out (the simulator before the
    agent grouped its pool). `replan_on_surge`: plan again within a slot as soon as a
    model's rate surges, as the orchestrator does (see the module docstring); off: plans at
    slot boundaries only (the simulator before it followed the orchestrator there).
    `hysteresis`: a named policy's new decision replaces the last one's levels only when
    it pays for the switch there and back (`hysteresis.settle`, as the orchestrator does;
    not for `exact-hindsight`); off: every decision is carried out as solved.
    `on_demand`: idle hosts serve models on their disk that the decision sends to the cloud
    (see the module docstring); off: such requests go to the cloud.
    `grouped_pi`: derive the decision's π for the pool grouped
    under that bound (`placement.pool_miss_from`) rather than first-in-first-out; off by
    default, as the FIFO value gave the online policies the lower cost on every replay
    (docs/benchmarks.md), while the grouped one predicts the misses better.
    """

    start_s: float | None = None
    n_slots: int | None = None
    warmup_slots: int = 0
    overflow: bool = True
    seed: int = 0
    time_limit_s: float = 10.0
    half_life_s: float = 300.0
    half_lives_s: tuple[float, ...] = DEFAULT_HALF_LIVES_S
    surge_factor: float = 3.0
    surge_min_count: int = 5
    surge_alpha: float = DEFAULT_SURGE_ALPHA
    pool_half_life_slots: float = 5.0
    keep_alive_s: float = 300.0
    max_loaded_per_gpu: int = 3
    pool_max_wait_s: float = DEFAULT_MAX_WAIT_S
    grouped_pi: bool = False
    replan_on_surge: bool = True
    on_demand: bool = True
    hysteresis: bool = True


@dataclass(frozen=True)
class SlotRecord:
    """One played slot: what the plan used, what came, what it cost, and where each
    model's requests were served (`served`: model -> "cloud" or host id -> count).
    `planned_rates` are those of the slot's first plan; `assignment` (each model's
    heaviest option) and `split` (the fractions), both as text, those of its last;
    `replans`: the plans made within the slot on a surge."""

    index: int
    start_s: float
    counted: bool
    planned_rates: Mapping[str, float]
    arrivals: Mapping[str, int]
    cost: CostBreakdown
    assignment: Mapping[str, str]
    split: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    served: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    replans: int = 0


@dataclass
class SimResult:
    """Outcome of one policy over the counted slots (see the module docstring)."""

    policy: str
    cost: CostBreakdown
    latencies: list[float]
    cloud_requests: int
    pool_loads: int
    resident_loads: int
    bytes_fetched: int
    peak_gpu_bytes: dict[str, int]
    plan_seconds: float
    slots: list[SlotRecord] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def switches(self) -> int:
        """Pool loads plus resident loads (every load of a model into GPU memory)."""
        return self.pool_loads + self.resident_loads

    @property
    def replans(self) -> int:
        """Plans made within the counted slots on a rate surge (beyond one per slot)."""
        return sum(rec.replans for rec in self.slots if rec.counted)

    @property
    def mean_latency_s(self) -> float:
        return float(np.mean(self.latencies)) if self.latencies else 0.0

    @property
    def p95_latency_s(self) -> float:
        return float(np.percentile(self.latencies, 95)) if self.latencies else 0.0

    @property
    def cloud_share(self) -> float:
        return self.cloud_requests / self.requests if self.latencies else 0.0

    def summary(self) -> dict[str, float | int | dict[str, float]]:
        """The headline numbers (the replay JSON's per-policy object)."""
        return {
            "total_cost": self.cost.total,
            "mean_latency_s": self.mean_latency_s,
            "p95_latency_s": self.p95_latency_s,
            "cloud_share": self.cloud_share,
            "switches": self.switches,
            "replans": self.replans,
            "bytes_fetched": self.bytes_fetched,
            "requests": self.requests,
            "pool_loads": self.pool_loads,
            "resident_loads": self.resident_loads,
            "cost_breakdown": self.cost.as_dict(),
            "plan_seconds": self.plan_seconds,
        }


# ---------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------


def simulate(
    base: Instance,
    requests: Iterable[Request],
    policy: str | Planner,
    config: SimConfig | None = None,
) -> SimResult:
    """Play `policy` (a name of `POLICIES`, or a `Planner`) over `requests` on the hosts,
    models and prices of `base` (its rates and pool_miss are ignored; its `current` is
    the state at the start).
    """
    cfg = config or SimConfig()
    # the hosts shed to the cloud exactly when the gateway's live-queue correction is on
    cloud = replace(base.cloud, overflow=cfg.overflow)
    base = replace(base, cloud=cloud, current=feasible_start(base))
    reqs = sorted(requests, key=lambda r: r.t)
    known = {m.id for m in base.models}
    for r in reqs:
        if r.model not in known:
            raise SimulationError(f"request for unknown model {r.model!r}")
    history, slots, start = _split_slots(reqs, base.slot_s, cfg)
    if policy == LRU:
        return _LruSim(base, cfg, start, LRU).run(history, slots)
    if policy == KEEP_ALIVE:
        return _LruSim(base, cfg, start, KEEP_ALIVE).run(history, slots)
    if isinstance(policy, str) and policy not in POLICIES:
        raise KeyError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    return _PlannedSim(base, cfg, start, policy).run(history, slots)


def simulate_all(
    base: Instance,
    requests: Sequence[Request],
    policies: Iterable[str] = POLICIES,
    config: SimConfig | None = None,
) -> dict[str, SimResult]:
    """`simulate` every policy on the same trace."""
    return {p: simulate(base, requests, p, config) for p in policies}


def feasible_start(base: Instance) -> dict[tuple[str, str], str]:
    """`base.current` cut to what the hosts can hold: per host, in model order, a copy that
    would overflow the disk is dropped, a cached one that would overflow the RAM is only
    stored, a resident one that would overflow the GPU is only stored."""
    out: dict[tuple[str, str], str] = {}
    order = {m.id: i for i, m in enumerate(base.models)}
    for h in base.hosts:
        disk = ram = gpu = 0
        here = sorted((order[m], m, lvl) for (m, e), lvl in base.current.items() if e == h.id)
        for _, m, level in here:
            perf = base.perf.get((m, h.id))
            size = base.model(m).storage_bytes
            if perf is None or disk + size > h.disk_bytes:
                continue
            disk += size
            if level == Level.CACHED and ram + size > h.ram_bytes:
                level = Level.STORED
            if level == Level.RESIDENT and gpu + perf.vram_bytes > h.gpu_bytes:
                level = Level.STORED
            ram += size if level == Level.CACHED else 0
            gpu += perf.vram_bytes if level == Level.RESIDENT else 0
            out[(m, h.id)] = level
    return out


def poisson_requests(
    rates: Mapping[str, float],
    n_slots: int,
    slot_s: float,
    seed: int,
    *,
    start_s: float = 0.0,
    work: Callable[[np.random.Generator, str], float] | None = None,
) -> list[Request]:
    """Stationary Poisson arrivals at `rates` (req/s) over `n_slots` slots from `start_s`,
    sorted by time; `work(rng, model)` draws each request's work (default 1)."""
    rng = np.random.default_rng(seed)
    out: list[Request] = []
    models = sorted(rates)
    for k in range(n_slots):
        t0 = start_s + k * slot_s
        for m in models:
            n = int(rng.poisson(rates[m] * slot_s))
            for t in np.sort(rng.uniform(t0, t0 + slot_s, size=n)):
                out.append(Request(float(t), m, 1.0 if work is None else work(rng, m)))
    out.sort(key=lambda r: r.t)
    return out


# ---------------------------------------------------------------------------------------
# Slots, tallies and GPU-memory ledger
# ---------------------------------------------------------------------------------------


def _split_slots(
    reqs: list[Request], slot_s: float, cfg: SimConfig
) -> tuple[list[Request], list[list[Request]], float]:
    """(history before slot 0, requests per slot, start of slot 0)."""
    if cfg.start_s is not None:
        start = cfg.start_s
    elif reqs:
        start = reqs[0].t
    else:
        start = 0.0
    if cfg.n_slots is not None:
        n = cfg.n_slots
    elif reqs and reqs[-1].t >= start:
        n = int((reqs[-1].t - start) // slot_s) + 1
    else:
        n = 0
    history = [r for r in reqs if r.t < start]
    slots: list[list[Request]] = [[] for _ in range(n)]
    for r in reqs:
        if r.t < start:
            continue
        k = int((r.t - start) // slot_s)
        if k >= n:
            break
        slots[k].append(r)
    return history, slots, start


class _Ledger:
    """Bytes held over time: intervals [start, end) (end +inf while held)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.sizes: list[float] = []

    def hold(self, start: float, size: float) -> int:
        self.starts.append(start)
        self.ends.append(math.inf)
        self.sizes.append(size)
        return len(self.sizes) - 1

    def release(self, handle: int, end: float) -> None:
        self.ends[handle] = max(end, self.starts[handle])

    def peak(self) -> float:
        """The largest total held at any instant (a release at t frees before a hold at t)."""
        events = [(s, 1, z) for s, z in zip(self.starts, self.sizes, strict=True)]
        events += [(e, 0, -z) for e, z in zip(self.ends, self.sizes, strict=True) if e < math.inf]
        held = best = 0.0
        for _, _, dz in sorted(events):
            held += dz
            best = max(best, held)
        return best

    def mean_over(self, a: float, b: float) -> float:
        """Time-average of the bytes held over [a, b)."""
        if not self.sizes or b <= a:
            return 0.0
        s = np.array(self.starts)
        e = np.array(self.ends)
        overlap = np.clip(np.minimum(e, b) - np.maximum(s, a), 0.0, None)
        return float(np.dot(overlap, self.sizes) / (b - a))


@dataclass
class _Tally:
    """Per-slot accumulators of one simulation."""

    delay: float = 0.0
    cloud: int = 0
    transition: float = 0.0
    latencies: list[float] = field(default_factory=list)
    pool_loads: int = 0
    resident_loads: int = 0
    bytes_fetched: int = 0
    served: dict[str, dict[str, int]] = field(default_factory=dict)

    def serve(
        self, latency: float, cloud: bool, delay_weight: float, model: str, where: str
    ) -> None:
        """One request served (`where`: a host id, or "cloud")."""
        self.latencies.append(latency)
        self.delay += delay_weight * latency
        self.cloud += cloud
        per = self.served.setdefault(model, {})
        per[where] = per.get(where, 0) + 1


def _finish(
    policy: str,
    tallies: list[_Tally],
    slots: list[SlotRecord],
    peaks: dict[str, int],
    plan_seconds: float,
    warmup: int,
) -> SimResult:
    counted = [t for k, t in enumerate(tallies) if k >= warmup]
    total = CostBreakdown()
    for rec in slots:
        if rec.counted:
            total = total + rec.cost
    return SimResult(
        policy=policy,
        cost=total,
        latencies=[x for t in counted for x in t.latencies],
        cloud_requests=sum(t.cloud for t in counted),
        pool_loads=sum(t.pool_loads for t in counted),
        resident_loads=sum(t.resident_loads for t in counted),
        bytes_fetched=sum(t.bytes_fetched for t in counted),
        peak_gpu_bytes=peaks,
        plan_seconds=plan_seconds,
        slots=slots,
    )


def _over_cap(used: float, cap: float) -> bool:
    """`placement`'s capacity test (a relative slack so float sums never flip it)."""
    return used > cap + 1e-9 * max(1.0, abs(cap))


def _cloud_latency(base: Instance, r: Request) -> float:
    """What the cloud takes to serve `r` (its own work)."""
    return base.cloud.wan_rtt_s + r.work * base.cloud_infer_s(r.model)


def _cloud_estimate(base: Instance, m: str) -> float:
    """The router's estimate of the cloud's latency for a request for m: the round trip and
    one mean request (the gateway does not know a request's size before it is served)."""
    return base.cloud.wan_rtt_s + base.cloud_infer_s(m)


# ---------------------------------------------------------------------------------------
# Planning policies
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Waiting:
    """A request routed to a planned host, waiting for its server: `ticket` is its place in
    eligibility order (the FIFO order), `ready` when it became eligible."""

    ticket: int
    request: Request
    ready: float


@dataclass(frozen=True)
class _Served:
    """A request a planned host served: its latency and pool hit (None: not pooled)."""

    request: Request
    host: str
    latency: float
    hit: bool | None


class _PlannedHost:
    """One host carrying out decisions: levels, readiness, one server, swap pool.

    The server takes the next request whenever it is free, among those eligible by then:
    the swap pool's waiting requests are ordered by the agent's own rule
    (`genedge.pool_schedule.next_model`: overdue first, then the model the pool holds, then
    the oldest), resident requests first-in-first-out, and between the pool's choice and the
    oldest resident request the earlier arrival goes first. With `max_wait_s = 0` that is
    one FIFO server in eligibility order."""

    def __init__(
        self, spec: HostSpec, base: Instance, start: float, max_wait_s: float = 0.0
    ) -> None:
        self.spec = spec
        self.base = base
        self.max_wait_s = max_wait_s
        self.waiting: list[_Waiting] = []
        self.busy_until = start
        self.serving: tuple[str, float] | None = None  # last served: (model, inference start)
        self.levels: dict[str, str] = {}  # what the decision placed here
        self.disk_ready: dict[str, float] = {}  # every model on disk: on disk from then
        self.last_used: dict[str, float] = {}  # on disk: last placed or served (LRU order)
        self.res_ready: dict[str, float] = {}  # resident and loaded from then
        self.res_handle: dict[str, int] = {}
        self.last_done: dict[str, float] = {}
        self.pool_model: str | None = None
        self.pool_handle = -1
        self.gpu = _Ledger()
        for (m, e), level in base.current.items():
            if e != spec.id:
                continue
            self.levels[m] = level
            self.disk_ready[m] = start
            self.last_used[m] = start
            if level == Level.RESIDENT:
                self.res_ready[m] = start
                self.res_handle[m] = self.gpu.hold(start, self._perf(m).vram_bytes)

    def _perf(self, m: str) -> Perf:
        return self.base.perf[(m, self.spec.id)]

    def _drained(self, m: str, t0: float) -> float:
        return max(t0, self.last_done.get(m, t0), self.res_ready.get(m, t0))

    def apply(self, new: dict[str, str], t0: float, tally: _Tally) -> None:
        """Move from the current levels to `new` at t0 (see the module docstring)."""
        pr = self.base.prices
        drain = t0
        for m, level in self.levels.items():
            if level == Level.RESIDENT and new.get(m) != Level.RESIDENT:
                end = self._drained(m, t0)
                self.gpu.release(self.res_handle.pop(m), end)
                del self.res_ready[m]
                drain = max(drain, end)
        if self.pool_model is not None and new.get(self.pool_model) not in Level.POOLED:
            end = self._drained(self.pool_model, t0)
            self.gpu.release(self.pool_handle, end)
            self.pool_model = None
            drain = max(drain, end)
        self._make_room(new)
        for m, level in new.items():
            was = self.levels.get(m)
            self.last_used[m] = t0
            if m not in self.disk_ready:
                size = self.base.model(m).storage_bytes
                fetch_s = size / self.spec.backhaul_Bps
                self.disk_ready[m] = t0 + fetch_s
                tally.bytes_fetched += size
                tally.transition += pr.fetch_weight * fetch_s
            if level == Level.RESIDENT and was != Level.RESIDENT:
                perf = self._perf(m)
                load = perf.load_ram_s if was == Level.CACHED else perf.load_disk_s
                begin = max(self.disk_ready[m], drain)
                self.res_ready[m] = begin + load
                self.res_handle[m] = self.gpu.hold(begin, perf.vram_bytes)
                tally.transition += pr.load_weight * load
                tally.resident_loads += 1
        self.levels = dict(new)

    def retained(self) -> list[str]:
        """Models on this host's disk that the decision did not place here (level stored
        for the planner: using them again needs no fetch)."""
        return [m for m in self.disk_ready if m not in self.levels]

    def retained_bytes(self) -> int:
        return sum(self.base.model(m).storage_bytes for m in self.retained())

    def _make_room(self, new: Mapping[str, str]) -> None:
        """Evict retained models (not in `new`), least recently used first, until the
        models of `new` and the retained ones fit on the disk. A retained model's files
        stay otherwise, as the edge agent keeps them; the models `new` places here fit
        (the decision is feasible), so evicting every retained one always suffices."""
        need = sum(self.base.model(m).storage_bytes for m in new)
        kept = sorted(
            (self.last_used.get(m, -math.inf), m) for m in self.disk_ready if m not in new
        )
        held = need + sum(self.base.model(m).storage_bytes for _, m in kept)
        for _, m in kept:
            if not _over_cap(held, self.spec.disk_bytes):
                break
            held -= self.base.model(m).storage_bytes
            del self.disk_ready[m]
            self.last_used.pop(m, None)

    def level_of(self, m: str) -> str:
        """The level m is served at here: the decision's, or, for a model on disk that the
        decision does not place here (served on demand), stored (through the pool)."""
        return self.levels.get(m, Level.STORED)

    def is_idle(self, t: float) -> bool:
        """Nothing in service or waiting here at t (for any model)."""
        return not self.waiting and self.busy_until <= t

    def takes_on_demand(self, m: str, t: float) -> bool:
        """Whether this host would serve m on demand at t: m is on its disk but not placed
        here, the server is idle, and the planned pool is big enough to load it."""
        if m in self.levels or self.disk_ready.get(m, math.inf) > t:
            return False
        if not self.is_idle(t):
            return False
        pool = [self._perf(x).vram_bytes for x, lv in self.levels.items() if lv in Level.POOLED]
        return bool(pool) and max(pool) >= self._perf(m).vram_bytes

    def is_ready(self, m: str, t: float) -> bool:
        """Whether the model is held here and can be served at t (the gateway's `ready`)."""
        return m in self.levels and self.eligible(m, t) <= t

    def eligible(self, m: str, t: float) -> float:
        """When a request for m arriving at t can be served (it waits for transitions)."""
        if self.level_of(m) == Level.RESIDENT:
            return max(t, self.res_ready[m])
        return max(t, self.disk_ready[m])

    def enqueue(self, ticket: int, r: Request, ready: float) -> None:
        """A request routed here, eligible from `ready` (tickets come in increasing order)."""
        self.waiting.append(_Waiting(ticket, r, ready))

    def finish(self, m: str, ready: float, now: float) -> float:
        """The router's estimate at `now` of when a request for m eligible at `ready` would
        finish if it joined this host's queue: the request in service, the queue in arrival
        order (its pool switches included) and then this request, each (the one in service
        too, from `now` or from the end of its load) at its model's mean inference time I,
        as the gateway estimates (`infer_s × (1 + queue)`): it knows how many requests are
        in flight and queued, not how long each will take. The estimate for requests of
        mean size; with the pool grouped by model the real order can differ (m is the
        pool's holder, or others go first, up to the bound)."""
        end = self.busy_until
        if self.serving is not None and self.busy_until > now:
            model, started = self.serving
            end = max(now, started) + self._perf(model).infer_s
        state: tuple[float, str | None] = (end, self.pool_model)
        for w in self.waiting:
            state = self._project(state, w.request.model, w.ready)
        return self._project(state, m, ready)[0]

    def _project(
        self, state: tuple[float, str | None], m: str, ready: float
    ) -> tuple[float, str | None]:
        end, pool = state
        perf = self._perf(m)
        begin = max(ready, end)
        level = self.level_of(m)
        if level in Level.POOLED and pool != m:
            begin += perf.load_ram_s if level == Level.CACHED else perf.load_disk_s
            pool = m
        return begin + perf.infer_s, pool

    def advance(self, until: float) -> list[_Served]:
        """Serve every waiting request whose turn comes before `until` (all: `math.inf`)."""
        served: list[_Served] = []
        while self.waiting:
            now = max(self.busy_until, min(w.ready for w in self.waiting))
            if now >= until:
                break
            w = self._next(now)
            self.waiting.remove(w)
            r = w.request
            latency, hit = self._serve_one(r.model, r.t, w.ready, r.work)
            served.append(_Served(r, self.spec.id, latency, hit))
        return served

    def _next(self, now: float) -> _Waiting:
        """The request the free server takes at `now` (see the class docstring)."""
        eligible = [w for w in self.waiting if w.ready <= now]
        pooled = [w for w in eligible if self.level_of(w.request.model) in Level.POOLED]
        resident = [w for w in eligible if self.level_of(w.request.model) not in Level.POOLED]
        best = min(resident, key=lambda w: w.ticket) if resident else None
        if pooled:
            waiters = [Waiter(w.ticket, w.request.model, "normal", w.ready) for w in pooled]
            chosen = next_model(waiters, self.pool_model, now, self.max_wait_s)
            first = min((w for w in pooled if w.request.model == chosen), key=lambda w: w.ticket)
            if best is None or first.ticket < best.ticket:
                best = first
        assert best is not None  # `now` is at least the earliest ready
        return best

    def _serve_one(self, m: str, t: float, ready: float, work: float) -> tuple[float, bool | None]:
        """Serve one request now; returns (its latency, pool hit True / miss False / None)."""
        perf = self._perf(m)
        begin = max(ready, self.busy_until)
        hit: bool | None = None
        level = self.level_of(m)
        if level in Level.POOLED:
            hit = self.pool_model == m
            if not hit:
                if self.pool_model is not None:
                    self.gpu.release(self.pool_handle, begin)
                self.pool_handle = self.gpu.hold(begin, perf.vram_bytes)
                self.pool_model = m
                begin += perf.load_ram_s if level == Level.CACHED else perf.load_disk_s
        end = begin + work * perf.infer_s
        self.busy_until = end
        self.serving = (m, begin)
        self.last_done[m] = end
        self.last_used[m] = end
        return end - t, hit


class _PlannedSim:
    """A planning policy over the slots."""

    def __init__(self, base: Instance, cfg: SimConfig, start: float, policy: str | Planner):
        self.base = base
        self.cfg = cfg
        self.start = start
        self.policy = policy
        self.name = policy if isinstance(policy, str) else getattr(policy, "__name__", "custom")
        self.hosts = {h.id: _PlannedHost(h, base, start, cfg.pool_max_wait_s) for h in base.hosts}
        self.model_ids = [m.id for m in base.models]
        self.estimator = self._estimator(start)
        self.pool = PoolStats(half_life_slots=cfg.pool_half_life_slots)
        self.choosers: dict[str, SmoothWeighted[str | None]] = {}  # per model; None: cloud
        self.previous: Plan | None = None
        self.regret = 0.0  # what keeping the last levels has cost more so far (`settle`)

    def _estimator(self, first_slot: float) -> RateEstimator:
        """The orchestrator's estimator on a fake clock whose first slot starts then."""
        return RateEstimator(
            slot_s=self.base.slot_s,
            half_life_s=self.cfg.half_life_s,
            half_lives_s=self.cfg.half_lives_s,
            surge_factor=self.cfg.surge_factor,
            surge_min_count=self.cfg.surge_min_count,
            surge_alpha=self.cfg.surge_alpha,
            clock=lambda: first_slot,
        )

    def run(self, history: list[Request], slots: list[list[Request]]) -> SimResult:
        tau = self.base.slot_s
        if history:
            # history fills whole slots before `start`: the estimator's clock starts there
            self.estimator = self._estimator(
                self.start - tau * math.ceil((self.start - history[0].t) / tau)
            )
            for r in history:
                self.estimator.observe(r.model, 1, at=r.t)
        records: list[SlotRecord] = []
        tallies: list[_Tally] = []
        plan_seconds = 0.0
        replan = self.cfg.replan_on_surge and self.policy != HINDSIGHT
        for k, reqs in enumerate(slots):
            t0 = self.start + k * tau
            counted = k >= self.cfg.warmup_slots
            inst, planned = self._instance(t0, reqs)
            t_plan = time.perf_counter()
            plan = self._plan(inst, k)
            if counted:
                plan_seconds += time.perf_counter() - t_plan
            tally = _Tally()
            self._apply(plan, t0, tally)
            stats: dict[tuple[str, str], list[int]] = {}
            resource = 0.0
            since, segment, replans = t0, 0, 0
            # the orchestrator counts arrivals as the gateway reports them and plans at
            # once when a rate surges (`Orchestrator._check_surges`)
            for i, r in enumerate(reqs if replan else []):
                self.estimator.observe(r.model, 1, at=r.t)
                if not self.estimator.check_surges(now=r.t):
                    continue
                self._serve(reqs[segment : i + 1], plan, tally, stats)
                resource += self._held(inst, plan) * (r.t - since) / tau
                self.previous = plan
                inst, _ = self._instance(r.t, [])
                inst = keeping(inst, plan.levels)  # as the orchestrator: add, never take
                t_plan = time.perf_counter()
                plan = self._plan(inst, k)
                if counted:
                    plan_seconds += time.perf_counter() - t_plan
                self._apply(plan, r.t, tally)
                since, segment, replans = r.t, i + 1, replans + 1
            self._serve(reqs[segment:], plan, tally, stats)
            resource += self._held(inst, plan) * (t0 + tau - since) / tau
            self._observe_pool(stats)
            cost = CostBreakdown(
                delay=tally.delay,
                resource=resource,
                cloud=tally.cloud * self.base.prices.cloud_per_request,
                transition=tally.transition,
            )
            records.append(
                SlotRecord(
                    index=k,
                    start_s=t0,
                    counted=counted,
                    planned_rates=planned,
                    arrivals=_counts(reqs),
                    cost=cost,
                    assignment={m: str(o) for m, o in plan.assignment.items()},
                    split={m: {str(o): x for o, x in fr.items()} for m, fr in plan.split.items()},
                    served=tally.served,
                    replans=replans,
                )
            )
            tallies.append(tally)
            self.previous = plan
            if not replan:  # only now does the estimator learn this slot's arrivals
                for r in reqs:
                    self.estimator.observe(r.model, 1, at=r.t)
        peaks = {e: round(h.gpu.peak()) for e, h in self.hosts.items()}
        return _finish(self.name, tallies, records, peaks, plan_seconds, self.cfg.warmup_slots)

    def _held(self, inst: Instance, plan: Plan) -> float:
        """The resource term of a whole slot under `plan`: the bytes the decision holds,
        plus the disk bytes retained beyond it (they change only when a plan is applied)."""
        retained = sum(h.retained_bytes() for h in self.hosts.values())
        return _resource(inst, plan.levels) + self.base.prices.disk_per_GB * retained / GB

    def _instance(self, t0: float, reqs: list[Request]) -> tuple[Instance, dict[str, float]]:
        """The decision problem at t0 (a slot's start, or a surge within it): estimated
        (or, for hindsight, true) rates, π, state."""
        self.estimator.roll(now=t0)
        known = self.estimator.rates()
        rates = {m: known.get(m, 0.0) for m in self.model_ids}
        if self.policy == HINDSIGHT:
            counts = _counts(reqs)
            rates = {m: counts.get(m, 0) / self.base.slot_s for m in self.model_ids}
        pool_miss = {key: p for key, p in self.pool.all().items() if key in self.base.perf}
        current: dict[tuple[str, str], str] = {}
        for e, h in self.hosts.items():
            current.update({(m, e): Level.STORED for m in h.retained()})
            current.update({(m, e): level for m, level in h.levels.items()})
        inst = replace(self.base, rates=rates, pool_miss=pool_miss, current=current)
        derived = self._pool_miss_from_previous(inst)
        if derived is not None:
            inst = replace(inst, pool_miss=derived)
        return inst, rates

    def _pool_miss_from_previous(self, inst: Instance) -> dict[tuple[str, str], float] | None:
        """π from the previous slot's decision on this slot's instance, when the decision
        core offers `placement.pool_miss_from` and that decision came from it."""
        derive = getattr(placement, "pool_miss_from", None)
        prev = self.previous
        if derive is None or prev is None or prev.source is None:
            return None
        bound = self.cfg.pool_max_wait_s if self.cfg.grouped_pi else 0.0
        got = derive(inst, prev.source, max_wait_s=bound)
        return {key: float(p) for key, p in got.items() if key in self.base.perf}

    def _plan(self, inst: Instance, k: int) -> Plan:
        if callable(self.policy):
            plan = Plan.of(self.policy(inst, k))
        else:
            name = "exact" if self.policy == HINDSIGHT else self.policy
            seed = self.cfg.seed + k
            decision = solve(name, inst, seed=seed, time_limit_s=self.cfg.time_limit_s)
            if self.cfg.hysteresis and self.policy != HINDSIGHT and self.previous is not None:
                # as the orchestrator: switch only when it pays for the way there and back
                decision, self.regret = settle(inst, decision, self.previous.levels, self.regret)
            plan = Plan.of(decision)
        problems = violations_split(inst, plan.split, plan.levels)
        if problems:
            raise SimulationError(f"{self.name}: infeasible decision in slot {k}: {problems}")
        return replace(plan, weights=routing_weights(inst, plan.split))

    def _apply(self, plan: Plan, t0: float, tally: _Tally) -> None:
        for e, host in self.hosts.items():
            host.apply(plan.on_host(e), t0, tally)

    def _pick(self, r: Request, plan: Plan) -> str | None:
        """The gateway's weighted pick for one request: a host id, or None (the cloud)."""
        fractions = (plan.weights or plan.split)[r.model]
        weights: dict[str | None, float] = {}
        for o, x in fractions.items():
            if o.host is None:
                weights[None] = weights.get(None, 0.0) + x
            elif not self.cfg.overflow or self.hosts[o.host].is_ready(r.model, r.t):
                weights[o.host] = weights.get(o.host, 0.0) + x
        weights.setdefault(None, 0.0)  # the cloud is always a backend (weight 0 if unplanned)
        chooser = self.choosers.setdefault(r.model, SmoothWeighted())
        return chooser.pick(weights)

    def _serve(
        self,
        reqs: list[Request],
        plan: Plan,
        tally: _Tally,
        stats: dict[tuple[str, str], list[int]],
    ) -> None:
        """Every request picked in arrival order; cloud requests at once, edge requests
        routed in order of eligibility (with the live-queue correction when overflow is on:
        a cloud pick goes to an idle planned host, or an idle host on demand, that would
        beat the cloud) and served by their host's server as it frees (`_PlannedHost`);
        every host drains its queue before the next plan's requests. Pool hits and misses
        per (model, host) are added to `stats`."""
        w = self.base.prices.delay_weight
        queue: list[tuple[float, float, int, Request, str]] = []
        on_demand = self.cfg.overflow and self.cfg.on_demand
        hosts = self.hosts.values()
        for i, r in enumerate(reqs):
            e = self._pick(r, plan)
            planned = self.cfg.overflow and any(o.host is not None for o in plan.split[r.model])
            if e is None and (
                planned or (on_demand and any(r.model in h.disk_ready for h in hosts))
            ):
                queue.append((r.t, r.t, i, r, ""))  # the cloud, or an idle host first
            elif e is None:
                tally.serve(_cloud_latency(self.base, r), True, w, r.model, "cloud")
            else:
                ready = self.hosts[e].eligible(r.model, r.t)
                queue.append((ready, r.t, i, r, e))
        queue.sort(key=lambda q: (q[0], q[1], q[2]))
        served: list[_Served] = []
        for ticket, (ready, _, _, r, e) in enumerate(queue):
            for h in self.hosts.values():
                served += h.advance(ready)
            if not e:
                cloud_s = _cloud_estimate(self.base, r.model)
                planned_here = {o.host for o in plan.split[r.model]}
                idle = [
                    (h.finish(r.model, r.t, r.t), h.spec.id)
                    for h in self.hosts.values()
                    if (h.spec.id in planned_here and h.is_ready(r.model, r.t) and h.is_idle(r.t))
                    or (on_demand and h.takes_on_demand(r.model, r.t))
                ]
                if not idle or min(idle)[0] > r.t + cloud_s:
                    tally.serve(_cloud_latency(self.base, r), True, w, r.model, "cloud")
                    continue
                e = min(idle)[1]
            elif self.cfg.overflow:
                # the pick chose the edge; the planned ready host that finishes first serves
                cloud_s = _cloud_estimate(self.base, r.model)
                first = self._fastest(r, plan, e)
                if first is None or first[0] > r.t + cloud_s:
                    tally.serve(_cloud_latency(self.base, r), True, w, r.model, "cloud")
                    continue
                e, ready = first[1], first[2]
            self.hosts[e].enqueue(ticket, r, ready)
        for h in self.hosts.values():
            served += h.advance(math.inf)
        for done in served:
            tally.serve(done.latency, False, w, done.request.model, done.host)
            if done.hit is not None:
                hm = stats.setdefault((done.request.model, done.host), [0, 0])
                hm[0 if done.hit else 1] += 1
                tally.pool_loads += not done.hit

    def _observe_pool(self, stats: Mapping[tuple[str, str], list[int]]) -> None:
        """A slot's pool hits and misses into `PoolStats` (aged once per slot)."""
        self.pool.roll()
        for (m, e), (hits, misses) in sorted(stats.items()):
            self.pool.observe(m, e, hits, misses)

    def _fastest(self, r: Request, plan: Plan, picked: str) -> tuple[float, str, float] | None:
        """(finish, host, ready) of the ready planned host that would finish `r` first
        (ties: the picked host, then by host id); None when there is none."""
        best: tuple[float, str, float] | None = None
        for o in plan.split[r.model]:
            if o.host is None:
                continue
            host = self.hosts[o.host]
            if not host.is_ready(r.model, r.t):
                continue
            ready = host.eligible(r.model, r.t)
            cand = (host.finish(r.model, ready, r.t), o.host, ready)
            if best is None or _rank(cand, picked) < _rank(best, picked):
                best = cand
        return best


def _rank(cand: tuple[float, str, float], picked: str) -> tuple[float, bool, str]:
    return cand[0], cand[1] != picked, cand[1]


def _resource(inst: Instance, levels: Mapping[tuple[str, str], str]) -> float:
    """The resource term of the bytes a decision holds for one slot (see the module
    docstring): disk per placed copy, RAM per cached one, VRAM per resident one and per
    host for its pool's largest member."""
    pr = inst.prices
    total = 0.0
    pool: dict[str, int] = {}
    for (m, e), level in levels.items():
        size = inst.model(m).storage_bytes
        vram = inst.perf[(m, e)].vram_bytes
        total += pr.disk_per_GB * size / GB
        if level == Level.CACHED:
            total += pr.ram_per_GB * size / GB
        if level == Level.RESIDENT:
            total += pr.vram_per_GB * vram / GB
        else:
            pool[e] = max(pool.get(e, 0), vram)
    return total + pr.vram_per_GB * sum(pool.values()) / GB


def _counts(reqs: Iterable[Request]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reqs:
        out[r.model] = out.get(r.model, 0) + 1
    return out


# ---------------------------------------------------------------------------------------
# lru: load on demand, evict least recently used
# ---------------------------------------------------------------------------------------


class _LruHost:
    """A host caching models LRU in GPU memory and on disk. `max_loaded` bounds how many
    models are loaded at once, `keep_alive_s` unloads a model idle that long (`keep-alive`;
    `lru` has neither)."""

    def __init__(
        self,
        spec: HostSpec,
        base: Instance,
        start: float,
        max_loaded: int | None = None,
        keep_alive_s: float | None = None,
    ) -> None:
        self.spec = spec
        self.base = base
        self.max_loaded = max_loaded
        self.keep_alive_s = keep_alive_s
        self.busy_until = start
        self.pending: deque[tuple[str, float, float, float]] = deque()  # see `_backlog_end`
        self.gpu: OrderedDict[str, int] = OrderedDict()  # model -> ledger handle, LRU first
        self.disk: OrderedDict[str, int] = OrderedDict()
        self.disk_ready: dict[str, float] = {}
        self.last_done: dict[str, float] = {}
        self.gpu_used = 0
        self.disk_used = 0
        self.gpu_ledger = _Ledger()
        self.disk_ledger = _Ledger()
        for (m, e), level in sorted(base.current.items()):
            if e != spec.id:
                continue
            size = base.model(m).storage_bytes
            if self.disk_used + size <= spec.disk_bytes:
                self.disk[m] = self.disk_ledger.hold(start, size)
                self.disk_used += size
                self.disk_ready[m] = start
                h = self._perf(m).vram_bytes
                full = max_loaded is not None and len(self.gpu) >= max_loaded
                if level == Level.RESIDENT and self.gpu_used + h <= spec.gpu_bytes and not full:
                    self.gpu[m] = self.gpu_ledger.hold(start, h)
                    self.gpu_used += h
                    self.last_done[m] = start

    def _perf(self, m: str) -> Perf:
        return self.base.perf[(m, self.spec.id)]

    def can_hold(self, m: str) -> bool:
        perf = self.base.perf.get((m, self.spec.id))
        return (
            perf is not None
            and perf.vram_bytes <= self.spec.gpu_bytes
            and self.base.model(m).storage_bytes <= self.spec.disk_bytes
        )

    def _unload(self, m: str, at: float) -> None:
        self.gpu_ledger.release(self.gpu.pop(m), at)
        self.gpu_used -= self._perf(m).vram_bytes

    def expire(self, t: float) -> None:
        """Unload every model idle for `keep_alive_s` by t, at its expiry (keep-alive)."""
        if self.keep_alive_s is None:
            return
        for m in list(self.gpu):
            expiry = self.last_done.get(m, -math.inf) + self.keep_alive_s
            if expiry <= t:
                self._unload(m, expiry)

    def _full(self, vram: int) -> bool:
        """Whether loading a model of `vram` bytes needs an eviction first."""
        if self.max_loaded is not None and len(self.gpu) >= self.max_loaded:
            return True
        return self.gpu_used + vram > self.spec.gpu_bytes

    def _fetch(self, m: str, t: float, tally: _Tally) -> None:
        size = self.base.model(m).storage_bytes
        while self.disk_used + size > self.spec.disk_bytes:
            victim = next(iter(self.disk))
            end = max(t, self.last_done.get(victim, t))
            if victim in self.gpu:
                self._unload(victim, end)
            self.disk_ledger.release(self.disk.pop(victim), end)
            self.disk_used -= self.base.model(victim).storage_bytes
            del self.disk_ready[victim]
        fetch_s = size / self.spec.backhaul_Bps
        self.disk[m] = self.disk_ledger.hold(t, size)
        self.disk_used += size
        self.disk_ready[m] = t + fetch_s
        tally.bytes_fetched += size
        tally.transition += self.base.prices.fetch_weight * fetch_s

    def _backlog_end(self, t: float) -> float:
        """The router's estimate at t of when this host's server is free: the requests
        given to it and not finished (`pending`: model, inference start, end, load
        seconds), each at its model's mean inference time I (the gateway's
        `infer_s × (1 + queue)`: it knows how many are in flight, not how long each
        takes), the one in service from t or from the end of its load, the queued ones
        with their loads."""
        while self.pending and self.pending[0][2] <= t:
            self.pending.popleft()
        end = t
        for k, (m, started, _, load_s) in enumerate(self.pending):
            infer_s = self._perf(m).infer_s
            end = max(t, started) + infer_s if k == 0 else end + load_s + infer_s
        return end

    def expected_finish(self, r: Request) -> float:
        """When this host would finish `r` if it got it now (the router's estimate, at mean
        inference times, `_backlog_end`): the backlog, a fetch and a load where this host
        lacks the model, then the request."""
        m = r.model
        perf = self._perf(m)
        size = self.base.model(m).storage_bytes
        on_disk = self.disk_ready.get(m, r.t + size / self.spec.backhaul_Bps)
        begin = max(self._backlog_end(r.t), on_disk)
        if m not in self.gpu:
            begin += perf.load_disk_s
        return begin + perf.infer_s

    def queue_finish(self, r: Request) -> float:
        """When `r` would finish here counting the backlog and the request at its mean time
        but not the fetch and load of its own model: what the overflow of a load-on-demand
        server sheds (see `_LruSim`)."""
        return self._backlog_end(r.t) + self._perf(r.model).infer_s

    def serve(self, r: Request, tally: _Tally) -> float:
        """Serve one request on this host; returns its latency."""
        m = r.model
        perf = self._perf(m)
        if m not in self.disk:
            self._fetch(m, r.t, tally)
        self.disk.move_to_end(m)
        begin = max(r.t, self.busy_until, self.disk_ready[m])
        load_s = 0.0
        if m not in self.gpu:
            while self.gpu and self._full(perf.vram_bytes):
                self._unload(next(iter(self.gpu)), begin)
            self.gpu[m] = self.gpu_ledger.hold(begin, perf.vram_bytes)
            self.gpu_used += perf.vram_bytes
            load_s = perf.load_disk_s
            begin += load_s
            tally.pool_loads += 1
        self.gpu.move_to_end(m)
        end = begin + r.work * perf.infer_s
        self.busy_until = end
        self.pending.append((m, begin, end, load_s))
        self.last_done[m] = end
        return end - r.t


class _LruSim:
    """`lru` or `keep-alive` over the slots: no planning, load on demand on every host."""

    def __init__(self, base: Instance, cfg: SimConfig, start: float, name: str) -> None:
        self.base = base
        self.cfg = cfg
        self.start = start
        self.name = name
        keep = name == KEEP_ALIVE
        self.hosts = [
            _LruHost(
                h,
                base,
                start,
                max_loaded=cfg.max_loaded_per_gpu if keep else None,
                keep_alive_s=cfg.keep_alive_s if keep else None,
            )
            for h in base.hosts
        ]

    def _pick(self, r: Request) -> _LruHost | None:
        """The host that would finish the request first (the first such host on ties);
        None when no host can hold the model."""
        able = [h for h in self.hosts if h.can_hold(r.model)]
        return min(able, key=lambda h: h.expected_finish(r)) if able else None

    def run(self, history: list[Request], slots: list[list[Request]]) -> SimResult:
        tau = self.base.slot_s
        pr = self.base.prices
        tallies: list[_Tally] = []
        for reqs in slots:
            tally = _Tally()
            for r in reqs:
                for h in self.hosts:
                    h.expire(r.t)
                host = self._pick(r)
                cloud_s = _cloud_estimate(self.base, r.model)
                if host is None or (self.cfg.overflow and host.queue_finish(r) > r.t + cloud_s):
                    cloud = _cloud_latency(self.base, r)
                    tally.serve(cloud, True, pr.delay_weight, r.model, "cloud")
                else:
                    latency = host.serve(r, tally)
                    tally.serve(latency, False, pr.delay_weight, r.model, host.spec.id)
            tallies.append(tally)
        for h in self.hosts:
            h.expire(math.inf)
        records = []
        for k, (reqs, tally) in enumerate(zip(slots, tallies, strict=True)):
            t0 = self.start + k * tau
            disk = sum(h.disk_ledger.mean_over(t0, t0 + tau) for h in self.hosts)
            gpu = sum(h.gpu_ledger.mean_over(t0, t0 + tau) for h in self.hosts)
            cost = CostBreakdown(
                delay=tally.delay,
                resource=(pr.disk_per_GB * disk + pr.vram_per_GB * gpu) / GB,
                cloud=tally.cloud * pr.cloud_per_request,
                transition=tally.transition,
            )
            records.append(
                SlotRecord(
                    index=k,
                    start_s=t0,
                    counted=k >= self.cfg.warmup_slots,
                    planned_rates={},
                    arrivals=_counts(reqs),
                    cost=cost,
                    assignment={},
                    served=tally.served,
                )
            )
        peaks = {h.spec.id: round(h.gpu_ledger.peak()) for h in self.hosts}
        return _finish(self.name, tallies, records, peaks, 0.0, self.cfg.warmup_slots)
