"""The placement decision model: data types, cost model, feasibility and explanations.

This is `../shared/DESIGN.md`, "The decision model", written as code. Every algorithm in
`orchestrator.core.algorithms` is judged by `evaluate` and `violations` below; they are the
reference implementation (plain Python, no numpy) and deliberately simple.

Notation (one slot of length τ = `Instance.slot_s` seconds; GB = 1e9 bytes)
-------------------------------------------------------------------------
- host e: disk S_e, host RAM R_e, GPU memory G_e (net of any reserve), utilisation cap
  ρ_e = `rho_max`, backhaul bandwidth B_e (bytes/s);
- model m: storage s_m bytes, rate λ_m req/s, requests in the slot n_m = λ_m·τ;
- model m measured on host e (`Perf`): peak VRAM h_{m,e}, preload from disk L^disk_{m,e} and
  from host RAM L^ram_{m,e}, one inference I_{m,e}; a missing pair cannot run on e;
- cloud: round trip T^wan, inference I^cloud_m (default 1.5 × the mean edge I_{m,e});
- π_{m,e}: probability that a request for pooled m finds the pool holding another model
  (`Instance.pool_miss`, default 1);
- prices (`Prices`), all in seconds-equivalent per slot: w_d (delay), p_disk, p_ram, p_vram
  (per GB held for the slot), p_cloud (per cloud request), w_f (per second of backhaul
  fetch), w_l (per second of a load when a model becomes resident).

Options and their cost
----------------------
Each model takes exactly one option: `CLOUD`, or (host e, level ℓ) with ℓ ∈ {stored, cached,
resident}. Stored and cached models are *pooled*: a request for one is served by loading it
on demand into the host's single shared swap-pool region of GPU memory.

    cloud:        delay      = n_m·(T^wan + I^cloud_m)·w_d
                  cloud      = n_m·p_cloud
    (e, ℓ):       delay      = n_m·(I_{m,e} + switch)·w_d,
                                 switch = 0                    if ℓ = resident
                                          π_{m,e}·L^disk_{m,e} if ℓ = stored
                                          π_{m,e}·L^ram_{m,e}  if ℓ = cached
                  resource   = p_disk·s_m + [ℓ = cached]·p_ram·s_m + [ℓ = resident]·p_vram·h_{m,e}
                  transition = [m not on e's disk now]·w_f·s_m/B_e
                             + [ℓ = resident, m not resident on e now]·w_l·(L^ram_{m,e} if m is
                               cached on e now, else L^disk_{m,e})
    pool, per host e:  resource += p_vram·P_e,  P_e = max{h_{m,e} : m pooled on e} (0 if none)

(byte quantities enter prices in GB). The pool term is charged once per host, whatever the
number of pooled models: that is the pooled sharing of GPU memory.

Constraints per host e
----------------------
    Σ_{m on e, any level} s_m ≤ S_e            (disk)
    Σ_{m cached on e} s_m ≤ R_e                (host RAM)
    Σ_{m resident on e} h_{m,e} + P_e ≤ G_e    (GPU memory: residents plus the pool)
    Σ_{m on e} n_m·I_{m,e} ≤ ρ_e·τ             (compute time in the slot)

The cloud is always feasible, so every instance has a feasible assignment (all-cloud).

Priorities and pins (the operator's controls)
---------------------------------------------
A model's priority class weighs its own per-request terms: its delay (inference, switch,
round trip) and its cloud price are multiplied by w_m (`PRIORITY_WEIGHTS`: low 0.5, normal 1,
high 2; `Instance.priority`), so when capacity binds the decision keeps a high-priority
model at the edge before a normal one with the same numbers. The hosts' queueing wait is
shared by every model on a host and stays unweighted (an approximation: a high-priority
model's requests wait as long as the others' in the agent's queue, which serves them first
only within its starvation bound). A pin `Instance.pins[(m, e)] = ℓ` is the operator's
minimum level of m on e: a constraint, carried by `pinned_instance` (see there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Final, Literal, cast

from genedge.pool_schedule import DEFAULT_MAX_WAIT_S

from .queueing import (
    DEFAULT_SERVICE_SCV,
    WaitCurve,
    offered_factor,
    quantise_threshold,
    wait_curve,
    wait_scale,
)

GB: Final = 1e9
"""Bytes per GB in every price (decimal, like the disk and GPU vendors)."""

_REL_TOL: Final = 1e-9
"""Relative slack on capacity checks, so float sums of exact integers never flip a verdict."""


class Level:
    """The edge levels a model can be assigned to on a host (`LevelName` values)."""

    STORED: Final = "stored"
    CACHED: Final = "cached"
    RESIDENT: Final = "resident"
    ALL: Final = ("stored", "cached", "resident")
    POOLED: Final = ("stored", "cached")
    """Levels served through the host's shared swap pool (loaded on demand)."""


LevelName = Literal["stored", "cached", "resident"]

PRIORITY_WEIGHTS: Final = {"low": 0.5, "normal": 1.0, "high": 2.0}
"""The weight w_m of each priority class on a model's own delay and cloud price: a second a
high-priority request waits counts as two of a normal one, a low one's as half. A policy
choice of the operator's scale, not a measurement; the default class is `normal`."""


# ---------------------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostSpec:
    """An edge host's capacities for placement.

    `gpu_bytes` is already net of any reserve; `rho_max` caps the fraction of the slot the
    GPU spends on inference; `backhaul_Bps` is the bandwidth for fetching weights to the host;
    `service_scv` is c², the squared coefficient of variation of its service times, which
    scales its queueing wait (`queueing`).
    """

    id: str
    disk_bytes: int
    ram_bytes: int
    gpu_bytes: int
    rho_max: float = 0.9
    backhaul_Bps: float = 1.25e9
    service_scv: float = DEFAULT_SERVICE_SCV

    def __post_init__(self) -> None:
        if min(self.disk_bytes, self.ram_bytes, self.gpu_bytes) < 0:
            raise ValueError(f"host {self.id!r}: capacities must be >= 0")
        if not 0.0 <= self.service_scv < math.inf:
            raise ValueError(f"host {self.id!r}: service_scv must be finite and >= 0")
        if not 0.0 <= self.rho_max <= 1.0:
            raise ValueError(f"host {self.id!r}: rho_max must be in [0, 1]")
        if self.backhaul_Bps <= 0:
            raise ValueError(f"host {self.id!r}: backhaul_Bps must be > 0")


@dataclass(frozen=True)
class ModelSpec:
    """A model: its id, its kind ("text", "image", ...) and its bytes on disk."""

    id: str
    kind: str
    storage_bytes: int

    def __post_init__(self) -> None:
        if self.storage_bytes < 0:
            raise ValueError(f"model {self.id!r}: storage_bytes must be >= 0")


@dataclass(frozen=True)
class Perf:
    """Model m measured on host e: peak VRAM h_{m,e} (bytes), preload seconds from disk
    (L^disk) and from host RAM (L^ram), and the host seconds one inference uses (I, the
    compute cap's term). A model that batches uses less host time per request than one
    request takes (`orchestrator.core.batching`): then `latency_s` is what a request waits
    at that batch (the delay term), else the delay is `infer_s`."""

    vram_bytes: int
    load_disk_s: float
    load_ram_s: float
    infer_s: float
    latency_s: float | None = None

    def __post_init__(self) -> None:
        lat = self.latency_s if self.latency_s is not None else 0.0
        if self.vram_bytes < 0 or min(self.load_disk_s, self.load_ram_s, self.infer_s, lat) < 0:
            raise ValueError("Perf values must be >= 0")

    @property
    def delay_s(self) -> float:
        """Seconds one request takes on the host (the delay term's inference)."""
        return self.infer_s if self.latency_s is None else self.latency_s


@dataclass(frozen=True)
class CloudSpec:
    """The cloud backend: WAN round trip and per-model inference seconds.

    A model missing from `infer_s` takes `edge_factor` × the mean of its edge inference
    times (1.5 × by default), or `fallback_infer_s` when it has no edge measurement at all.
    """

    wan_rtt_s: float = 0.08
    infer_s: Mapping[str, float] = field(default_factory=dict)
    edge_factor: float = 1.5
    fallback_infer_s: float = 2.0
    overflow: bool = True
    """The gateway sends a request to the cloud rather than to a host whose queue would
    make it finish later (`cloud_gateway.core.routing`), so a host's queue sheds: its wait
    is priced on `queueing.shed_g` at the threshold `Instance.shed_threshold`. False: the
    hosts queue without bound (the M/G/1 curve)."""


@dataclass(frozen=True)
class Prices:
    """Weights and prices of the cost model, all in seconds-equivalent per slot.

    One unit of cost is one second of user-visible delay (`delay_weight` = 1); a price per
    GB is charged for every slot the bytes are held. The defaults come from the five models
    measured on an H200 (`../shared/measured/`: peak VRAM 0.29-16.1 GB, cold load 0.36-10.7
    s, one generation 1.3-3.3 s) under realistic rates (0.005-0.5 req/s per model, 60 s
    slots, so n = 0.3-30 requests a slot), with the cloud at its default 1.5 × the edge
    inference time behind an 80 ms round trip. Reasoning, per request and slot:

    - edge vs cloud: a request served by a resident copy saves T^wan + 0.5·I + p_cloud =
      0.8-1.8 s against the cloud (sd-1.5 0.77 s ... qwen2.5-1.5B 1.77 s).
    - resident (`vram_per_GB` = 0.2): holding the peak VRAM costs 0.06 s/slot (gpt2) to
      3.2 s/slot (llama-3.1-8B), so residency beats the cloud from 0.05-3 requests a slot;
      against a pooled copy loaded from RAM (π·L^ram = 0.1-0.4 s a request, π = 1) it pays
      from under 1 (gpt2) to about 8 (sdxl, llama) requests a slot: popular models go
      resident (before the one-off load; see below).
    - cached (`ram_per_GB` = 0.02, 10× cheaper than VRAM): pinned host RAM costs 0.005-0.32
      s/slot and saves π·(L^disk − L^ram) = 0.25-10 s a request against `stored`, so a
      pooled model goes to RAM whenever RAM is free; the pool's VRAM is shared, charged once
      for its largest member. Mid-popularity models go here.
    - stored (pooled from disk): the switch π·L^disk = 0.4-11 s beats the cloud only for
      small, quick-loading models (gpt2 always; qwen2.5-1.5B below π ≈ 0.6; sd-1.5 below
      π ≈ 0.3), so it is chosen when host RAM is full. The long tail goes to the cloud.
    - `disk_per_GB` = 0.002 makes holding bytes cheap but not free, so idle models (λ = 0)
      go to the cloud; `cloud_per_request` = 0.05 s is the cloud's bill per request
      expressed as delay.
    - `fetch_weight` = `load_weight` = 1: a second spent fetching weights over the backhaul
      or loading them into the GPU costs a second, once. This is the hysteresis that keeps
      the decision from thrashing between slots: a model already on disk, in RAM or
      resident is cheaper to keep there.

    `tests/test_placement.py::test_measured_instances_use_every_option_type` checks that
    every option type is chosen on measured instances with these defaults.
    """

    delay_weight: float = 1.0
    disk_per_GB: float = 0.002
    ram_per_GB: float = 0.02
    vram_per_GB: float = 0.2
    cloud_per_request: float = 0.05
    fetch_weight: float = 1.0
    load_weight: float = 1.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 0 or not math.isfinite(value):
                raise ValueError(f"price {name} must be finite and >= 0")


@dataclass(frozen=True)
class Option:
    """Where one model goes: the cloud (`host is None`) or a level on an edge host."""

    host: str | None
    level: str | None

    def __post_init__(self) -> None:
        if (self.host is None) != (self.level is None):
            raise ValueError("an Option names both host and level, or neither (cloud)")
        if self.level is not None and self.level not in Level.ALL:
            raise ValueError(f"unknown level {self.level!r}; levels: {', '.join(Level.ALL)}")

    @property
    def is_cloud(self) -> bool:
        return self.host is None

    @property
    def pooled(self) -> bool:
        """True for stored and cached: served through the host's swap pool."""
        return self.level in Level.POOLED

    @classmethod
    def parse(cls, text: str) -> Option:
        """`"cloud"` or `"HOST:LEVEL"` (the inverse of `str(option)`)."""
        if text == "cloud":
            return CLOUD
        host, sep, level = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"not an option: {text!r} (expected 'cloud' or 'HOST:LEVEL')")
        return cls(host, level)

    def __str__(self) -> str:
        return "cloud" if self.host is None else f"{self.host}:{self.level}"


CLOUD: Final = Option(None, None)


@dataclass(frozen=True)
class Instance:
    """One decision problem: hosts, models, measurements, rates and the current state.

    `perf[(model, host)]` is the measured performance of a model on a host; a missing pair
    means the model cannot run there. `rates` (req/s) default to 0 for missing models.
    `pool_miss[(model, host)]` is π_{m,e} (default 1). `current[(model, host)]` is the level
    a model has on a host now (absent pairs are not on that host's disk).
    """

    hosts: list[HostSpec]
    models: list[ModelSpec]
    perf: Mapping[tuple[str, str], Perf]
    rates: Mapping[str, float]
    slot_s: float = 60.0
    cloud: CloudSpec = field(default_factory=CloudSpec)
    prices: Prices = field(default_factory=Prices)
    pool_miss: Mapping[tuple[str, str], float] = field(default_factory=dict)
    current: Mapping[tuple[str, str], str] = field(default_factory=dict)
    priority: Mapping[str, float] = field(default_factory=dict)
    """w_m per model (`PRIORITY_WEIGHTS`); 1 for models not listed."""
    pins: Mapping[tuple[str, str], LevelName] = field(default_factory=dict)
    """The operator's minimum level per (model, host): the model is held there at least so."""

    def __post_init__(self) -> None:
        host_ids = [h.id for h in self.hosts]
        model_ids = [m.id for m in self.models]
        if len(set(host_ids)) != len(host_ids):
            raise ValueError("duplicate host ids")
        if len(set(model_ids)) != len(model_ids):
            raise ValueError("duplicate model ids")
        if self.slot_s <= 0:
            raise ValueError("slot_s must be > 0")
        hosts, models = set(host_ids), set(model_ids)
        for m, e in self.perf:
            if m not in models or e not in hosts:
                raise ValueError(f"perf for unknown pair ({m!r}, {e!r})")
        for m, rate in self.rates.items():
            if m not in models:
                raise ValueError(f"rate for unknown model {m!r}")
            if rate < 0 or not math.isfinite(rate):
                raise ValueError(f"rate of {m!r} must be finite and >= 0")
        for (m, e), p in self.pool_miss.items():
            if m not in models or e not in hosts:
                raise ValueError(f"pool_miss for unknown pair ({m!r}, {e!r})")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"pool_miss of ({m!r}, {e!r}) must be in [0, 1]")
        for (m, e), level in self.current.items():
            if m not in models or e not in hosts:
                raise ValueError(f"current level for unknown pair ({m!r}, {e!r})")
            if level not in Level.ALL:
                raise ValueError(f"current level of ({m!r}, {e!r}) is {level!r}")
        for m, w in self.priority.items():
            if m not in models:
                raise ValueError(f"priority for unknown model {m!r}")
            if not 0.0 < w < math.inf:
                raise ValueError(f"priority weight of {m!r} must be finite and > 0")
        for (m, e), level in self.pins.items():
            if (m, e) not in self.perf:
                raise ValueError(f"pin of ({m!r}, {e!r}): the model cannot run on that host")
            if level not in Level.ALL:
                raise ValueError(f"pin of ({m!r}, {e!r}) is {level!r}; levels: {Level.ALL}")

    def weight(self, model_id: str) -> float:
        """w_m: the model's priority weight on its own delay and cloud price."""
        return self.priority.get(model_id, 1.0)

    # -- lookups (indexes built once: an Instance is treated as immutable) ----------------

    @cached_property
    def _model_index(self) -> dict[str, ModelSpec]:
        return {m.id: m for m in self.models}

    @cached_property
    def _host_index(self) -> dict[str, HostSpec]:
        return {h.id: h for h in self.hosts}

    @cached_property
    def _cloud_infer(self) -> dict[str, float]:
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for (m, _), p in self.perf.items():
            if m in sums:
                sums[m] += p.delay_s
                counts[m] += 1
            else:
                sums[m] = p.delay_s
                counts[m] = 1
        out = {}
        for spec in self.models:
            mid = spec.id
            if mid in self.cloud.infer_s:
                out[mid] = float(self.cloud.infer_s[mid])
            elif mid in sums:
                out[mid] = self.cloud.edge_factor * sums[mid] / counts[mid]
            else:
                out[mid] = self.cloud.fallback_infer_s
        return out

    @cached_property
    def _timed_by_host(self) -> dict[str, list[tuple[str, float]]]:
        """Host -> (model, inference seconds > 0) of the models it can run."""
        out: dict[str, list[tuple[str, float]]] = {}
        for (m, e), p in self.perf.items():
            if p.infer_s > 0:
                out.setdefault(e, []).append((m, p.infer_s))
        return out

    @cached_property
    def _thresholds(self) -> dict[str, float | None]:
        return {h.id: self._shed_threshold(h.id) for h in self.hosts}

    @cached_property
    def _wait_curves(self) -> dict[str, WaitCurve]:
        return {e: wait_curve(d) for e, d in self._thresholds.items()}

    def shed_threshold(self, host_id: str) -> float | None:
        """d_e: how many of its own service times a request may wait on the host before
        the cloud would finish it sooner, (T^wan + I^cloud_m − I_{m,e})/I_{m,e}, averaged
        over the models the host can run weighted by the busy seconds they would bring
        (n_m·I_{m,e}; equally without rates). None without `CloudSpec.overflow` or models.

        Approximation: one threshold per host although each model has its own, fixed
        for the slot from the rates before the split is known."""
        return self._thresholds.get(host_id)

    def _shed_threshold(self, host_id: str) -> float | None:
        if not self.cloud.overflow:
            return None
        pairs = self._timed_by_host.get(host_id, [])
        if not pairs:
            return None
        busy = [self.requests(m) * i for m, i in pairs]
        weights = busy if sum(busy) > 0 else [1.0] * len(pairs)
        total = 0.0
        for (m, i), w in zip(pairs, weights, strict=True):
            total += w * max(0.0, self.cloud.wan_rtt_s + self.cloud_infer_s(m) - i) / i
        # as the curves are built: two significant digits, at least 0.01 (a host the cloud
        # beats outright still serves an arrival that finds it idle)
        return quantise_threshold(total / sum(weights))

    def wait_curve(self, host_id: str) -> WaitCurve:
        """The host's linearised wait curve G (`queueing.WaitCurve`)."""
        return self._wait_curves[host_id]

    def host(self, host_id: str) -> HostSpec:
        return self._host_index[host_id]

    def model(self, model_id: str) -> ModelSpec:
        return self._model_index[model_id]

    def requests(self, model_id: str) -> float:
        """n_m = λ_m·τ, the expected requests for the model in the slot."""
        return self.rates.get(model_id, 0.0) * self.slot_s

    def cloud_infer_s(self, model_id: str) -> float:
        """I^cloud_m: given, else `edge_factor` × the mean edge inference time."""
        return self._cloud_infer[model_id]

    def options(self, model_id: str) -> list[Option]:
        """Every option of a model: the cloud, then each (host, level) it has a Perf for."""
        out = [CLOUD]
        for h in self.hosts:
            if (model_id, h.id) in self.perf:
                out.extend(Option(h.id, level) for level in Level.ALL)
        return out

    def all_cloud(self) -> dict[str, Option]:
        return {m.id: CLOUD for m in self.models}


# ---------------------------------------------------------------------------------------
# Costs and decisions
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostBreakdown:
    """Cost of a decision (or one option) split by term; `total` is their sum. `delay` is
    service (inference, pool switches, the cloud's round trip), `wait` the queueing at the
    hosts (delay_weight·Σ_e κ_e·G(ρ_e), see `queueing`)."""

    delay: float = 0.0
    resource: float = 0.0
    cloud: float = 0.0
    transition: float = 0.0
    wait: float = 0.0

    @property
    def total(self) -> float:
        return self.delay + self.resource + self.cloud + self.transition + self.wait

    def __add__(self, other: CostBreakdown) -> CostBreakdown:
        return CostBreakdown(
            self.delay + other.delay,
            self.resource + other.resource,
            self.cloud + other.cloud,
            self.transition + other.transition,
            self.wait + other.wait,
        )

    def __mul__(self, k: float) -> CostBreakdown:
        return CostBreakdown(
            k * self.delay, k * self.resource, k * self.cloud, k * self.transition, k * self.wait
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "delay": self.delay,
            "resource": self.resource,
            "cloud": self.cloud,
            "transition": self.transition,
            "wait": self.wait,
            "total": self.total,
        }


Split = Mapping[str, Mapping[Option, float]]
"""Model -> option -> fraction of its requests (each model's fractions are > 0, sum to 1)."""

Levels = Mapping[tuple[str, str], str]
"""(model, host) -> the level held there (a replica may hold a level and serve nothing)."""


def split_of_assignment(assignment: Mapping[str, Option]) -> dict[str, dict[Option, float]]:
    """The split of a one-option decision: every model's traffic to its one option."""
    return {m: {o: 1.0} for m, o in assignment.items()}


def levels_of_split(split: Split) -> dict[tuple[str, str], str]:
    """The levels a split's edge options name (no replica without traffic)."""
    return {
        (m, o.host): o.level
        for m, fractions in split.items()
        for o in fractions
        if o.host is not None and o.level is not None
    }


def primary_of(split: Split) -> dict[str, Option]:
    """Each model's heaviest option (ties: the edge before the cloud, then by name)."""
    return {
        m: max(fr, key=lambda o: (fr[o], o.host is not None, str(o))) for m, fr in split.items()
    }


@dataclass(frozen=True)
class Decision:
    """An algorithm's answer: per model a split of its traffic over options (`split`), the
    level held per (model, host) (`levels`), its cost, and how it was found.

    `assignment` is each model's heaviest option (the one-option view, and the whole of a
    decision that splits nothing). Built from an assignment alone, `split` and `levels`
    follow from it. `optimal` is True only when the algorithm proved optimality (the
    `exact` MILP), False when it knows it may not be optimal, None when it does not say.
    """

    assignment: Mapping[str, Option]
    cost: CostBreakdown
    algorithm: str
    seconds: float
    optimal: bool | None = None
    notes: list[str] = field(default_factory=list)
    split: Split = field(default_factory=dict)
    levels: Levels = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.split:
            object.__setattr__(self, "split", split_of_assignment(self.assignment))
        if not self.levels and not any(len(fr) > 1 for fr in self.split.values()):
            object.__setattr__(self, "levels", levels_of_split(self.split))

    @classmethod
    def single(
        cls, instance: Instance, assignment: Mapping[str, Option], algorithm: str = "given"
    ) -> Decision:
        """A one-option decision priced by `evaluate` (for hand-made assignments)."""
        return cls(dict(assignment), evaluate(instance, assignment), algorithm, 0.0)

    def option(self, model_id: str) -> Option:
        return self.assignment[model_id]

    def fractions(self, model_id: str) -> Mapping[Option, float]:
        return self.split[model_id]

    def cloud_fraction(self, model_id: str) -> float:
        return float(self.split.get(model_id, {}).get(CLOUD, 0.0))

    def on_host(self, host_id: str) -> dict[str, str]:
        """Model id -> level of the models held on one host (serving or not)."""
        return {m: level for (m, e), level in self.levels.items() if e == host_id}

    def counts(self) -> dict[str, int]:
        """How many models take each option type (by their heaviest option): cloud,
        stored, cached, resident; and `replicas`, the levels held beyond one per model."""
        out = {"cloud": 0, **{level: 0 for level in Level.ALL}}
        for o in self.assignment.values():
            out[o.level or "cloud"] += 1
        held = {m for m, _ in self.levels}
        out["replicas"] = len(self.levels) - len(held)
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "algorithm": self.algorithm,
            "assignment": {m: str(o) for m, o in sorted(self.assignment.items())},
            "split": {
                m: {str(o): x for o, x in sorted(fr.items(), key=lambda i: -i[1])}
                for m, fr in sorted(self.split.items())
                if len(fr) > 1
            },
            "cost": self.cost.as_dict(),
            "seconds": self.seconds,
            "optimal": self.optimal,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class OptionCost:
    """One option of one model, priced against the rest of an assignment (`explain`).

    For a pooled option `resource` includes only the *growth* of the host's pool,
    p_vram·max(0, h − P_e), with P_e the pool size set by the other pooled models; `wait`
    is the growth of the host's queueing wait when the model's traffic joins the others'.
    `fits` says whether the option satisfies every host constraint given the others;
    `reasons` says which ones it breaks.
    """

    option: Option
    delay: float
    resource: float
    cloud: float
    transition: float
    fits: bool
    reasons: tuple[str, ...] = ()
    chosen: bool = False
    pool_growth_bytes: int = 0
    wait: float = 0.0

    @property
    def total(self) -> float:
        return self.delay + self.resource + self.cloud + self.transition + self.wait

    @property
    def breakdown(self) -> CostBreakdown:
        return CostBreakdown(self.delay, self.resource, self.cloud, self.transition, self.wait)


def keeping(instance: Instance, levels: Mapping[tuple[str, str], str]) -> Instance:
    """`instance` with every level of `levels` (a decision's) held as a pin, the operator's
    own pins first: the plan may add levels and shift traffic, and takes nothing away.

    The planner solves this on a mid-slot surge: a surge is evidence of more demand for
    one model, not of less for the others, so their levels wait for the slot boundary,
    where every rate is updated (docs/decisions.md, "When it plans")."""
    held: dict[tuple[str, str], LevelName] = {
        k: cast(LevelName, v) for k, v in levels.items() if k in instance.perf
    }
    return replace(instance, pins={**held, **instance.pins})


def pinned_instance(
    instance: Instance,
) -> tuple[Instance, dict[tuple[str, str], LevelName], list[str]]:
    """What the algorithms solve when pins are set: (the instance without the pinned pairs and
    with the pins' room taken from their hosts, the pins kept, notes on pins dropped).

    A pinned (m, e) at ℓ leaves the search: m cannot be given another level on e, and e's
    disk loses s_m, its RAM tier s_m when ℓ is cached, its GPU memory h_{m,e} when ℓ is
    resident and, for pooled pins, the largest of their h (the pool must be able to take
    them). Every algorithm then plans the rest as usual, and the pins come back as held
    levels whose traffic share the split's linear programme chooses with everything else
    (`algorithms.Algorithm`). Reserving the pool conservatively (as if the rest's pool were
    separate) keeps every decision feasible; the price is that `exact` is the optimum of
    the rest given the pins, not of the whole with pins as constraints. The cloud's
    inference times stay those of the full instance. A host whose pins do not fit together
    keeps none of them (a note says so): a pin never makes a decision infeasible.
    """
    if not instance.pins:
        return instance, {}, []
    by_host: dict[str, list[tuple[str, LevelName]]] = {}
    for (m, e), level in sorted(instance.pins.items()):
        by_host.setdefault(e, []).append((m, level))
    kept: dict[tuple[str, str], LevelName] = {}
    notes: list[str] = []
    hosts = []
    for h in instance.hosts:
        disk = ram = resident = pool = 0
        for m, level in by_host.get(h.id, []):
            size, vram = instance.model(m).storage_bytes, instance.perf[(m, h.id)].vram_bytes
            disk += size
            ram += size if level == Level.CACHED else 0
            resident += vram if level == Level.RESIDENT else 0
            pool = max(pool, 0 if level == Level.RESIDENT else vram)
        gpu = resident + pool
        if disk > h.disk_bytes or ram > h.ram_bytes or gpu > h.gpu_bytes:
            names = ", ".join(f"{m}:{level}" for m, level in by_host[h.id])
            notes.append(f"pins on {h.id} ({names}) do not fit its capacities; not held")
            hosts.append(h)
            continue
        for m, level in by_host.get(h.id, []):
            kept[(m, h.id)] = level
        hosts.append(
            replace(
                h,
                disk_bytes=h.disk_bytes - disk,
                ram_bytes=h.ram_bytes - ram,
                gpu_bytes=h.gpu_bytes - gpu,
            )
        )
    cloud = replace(
        instance.cloud, infer_s={m.id: instance.cloud_infer_s(m.id) for m in instance.models}
    )
    rest = replace(
        instance,
        hosts=hosts,
        perf={k: p for k, p in instance.perf.items() if k not in kept},
        pool_miss={k: p for k, p in instance.pool_miss.items() if k not in kept},
        cloud=cloud,
        pins={},
    )
    return rest, kept, notes


def per_request_cost(instance: Instance, model_id: str, option: Option) -> CostBreakdown:
    """What one request of a model costs on an option, queueing aside: delay (inference,
    the pool switch π·L for a pooled level, the round trip on the cloud) and the cloud's
    price. Raises ValueError when the model has no Perf on the option's host."""
    pr = instance.prices
    w = instance.weight(model_id)
    if option.host is None:
        delay = instance.cloud.wan_rtt_s + instance.cloud_infer_s(model_id)
        return CostBreakdown(delay=delay * pr.delay_weight * w, cloud=pr.cloud_per_request * w)
    key = (model_id, option.host)
    perf = instance.perf.get(key)
    if perf is None:
        raise ValueError(f"model {model_id!r} cannot run on host {option.host!r} (no Perf)")
    miss = instance.pool_miss.get(key, 1.0)
    if option.level == Level.RESIDENT:
        switch = 0.0
    elif option.level == Level.STORED:
        switch = miss * perf.load_disk_s
    else:
        switch = miss * perf.load_ram_s
    return CostBreakdown(delay=(perf.delay_s + switch) * pr.delay_weight * w)


def holding_cost(instance: Instance, model_id: str, host_id: str, level: str) -> CostBreakdown:
    """What holding a model at a level on a host costs for the slot, whatever traffic it
    serves, without the shared pool term: resource (disk, RAM if cached, VRAM if resident)
    and transition (fetch if not on the host's disk now, a load if it becomes resident)."""
    pr = instance.prices
    key = (model_id, host_id)
    perf = instance.perf.get(key)
    if perf is None:
        raise ValueError(f"model {model_id!r} cannot run on host {host_id!r} (no Perf)")
    size = instance.model(model_id).storage_bytes
    resource = pr.disk_per_GB * size / GB
    if level == Level.CACHED:
        resource += pr.ram_per_GB * size / GB
    elif level == Level.RESIDENT:
        resource += pr.vram_per_GB * perf.vram_bytes / GB
    now = instance.current.get(key)
    transition = 0.0
    if now is None:
        transition += pr.fetch_weight * size / instance.host(host_id).backhaul_Bps
    if level == Level.RESIDENT and now != Level.RESIDENT:
        load = perf.load_ram_s if now == Level.CACHED else perf.load_disk_s
        transition += pr.load_weight * load
    return CostBreakdown(resource=resource, transition=transition)


def option_cost(instance: Instance, model_id: str, option: Option) -> CostBreakdown:
    """Cost of one option of one model taking all its traffic, *without* the shared pool
    term and the queueing wait (see `evaluate`): n_m per-request costs plus the holding.

    Raises ValueError when the model cannot take the option (no Perf on that host).
    """
    c = per_request_cost(instance, model_id, option) * instance.requests(model_id)
    if option.host is None or option.level is None:
        return c
    return c + holding_cost(instance, model_id, option.host, option.level)


@dataclass
class HostUse:
    """What a host's held levels and served traffic take: bytes of disk, of the RAM tier,
    of resident GPU memory and of the pool, and busy seconds in the slot."""

    disk: int = 0
    ram: int = 0
    resident: int = 0
    pool: int = 0
    compute: float = 0.0


def _check_options(instance: Instance, assignment: Mapping[str, Option]) -> list[str]:
    """`_check_split` of a one-option assignment (each problem said once)."""
    split = split_of_assignment(assignment)
    return list(dict.fromkeys(_check_split(instance, split, levels_of_split(split))))


def _host_use(
    instance: Instance, assignment: Mapping[str, Option], skip: str | None = None
) -> dict[str, HostUse]:
    """Resource use per host of a *valid* assignment (models in `skip` left out)."""
    use = {h.id: HostUse() for h in instance.hosts}
    for m, o in assignment.items():
        if o.host is None or m == skip:
            continue
        u = use[o.host]
        perf = instance.perf[(m, o.host)]
        size = instance.model(m).storage_bytes
        u.disk += size
        u.compute += instance.requests(m) * perf.infer_s
        if o.level == Level.CACHED:
            u.ram += size
        if o.level == Level.RESIDENT:
            u.resident += perf.vram_bytes
        else:
            u.pool = max(u.pool, perf.vram_bytes)
    return use


def _over(used: float, cap: float) -> bool:
    return used > cap + _REL_TOL * max(1.0, abs(cap))


def _host_problems(host: HostSpec, u: HostUse, slot_s: float) -> list[str]:
    out = []
    if _over(u.disk, host.disk_bytes):
        out.append(f"host {host.id}: disk {u.disk} > {host.disk_bytes} bytes")
    if _over(u.ram, host.ram_bytes):
        out.append(f"host {host.id}: RAM {u.ram} > {host.ram_bytes} bytes")
    if _over(u.resident + u.pool, host.gpu_bytes):
        out.append(
            f"host {host.id}: GPU {u.resident} resident + {u.pool} pool > {host.gpu_bytes} bytes"
        )
    if _over(u.compute, host.rho_max * slot_s):
        out.append(
            f"host {host.id}: compute {u.compute:.6g} s > {host.rho_max * slot_s:.6g} s per slot"
        )
    return out


_SPLIT_TOL: Final = 1e-6
"""How far a model's fractions may sum from 1 (solvers answer to about 1e-9)."""


def _check_split(instance: Instance, split: Split, levels: Levels) -> list[str]:
    problems: list[str] = []
    models = {m.id for m in instance.models}
    hosts = {h.id for h in instance.hosts}
    for spec in instance.models:
        if spec.id not in split:
            problems.append(f"model {spec.id}: no option assigned")
    for (m, e), level in levels.items():
        if m not in models:
            problems.append(f"unknown model {m!r} in levels")
        elif e not in hosts:
            problems.append(f"model {m}: unknown host {e!r}")
        elif (m, e) not in instance.perf:
            problems.append(f"model {m}: cannot run on host {e} (no Perf)")
        elif level not in Level.ALL:
            problems.append(f"model {m}: unknown level {level!r} on host {e}")
    for m, fractions in split.items():
        if m not in models:
            problems.append(f"unknown model {m!r} in assignment")
            continue
        if any(not 0.0 <= x <= 1.0 + _SPLIT_TOL for x in fractions.values()):
            problems.append(f"model {m}: a fraction outside [0, 1]")
        elif abs(sum(fractions.values()) - 1.0) > _SPLIT_TOL:
            problems.append(f"model {m}: fractions sum to {sum(fractions.values()):.9g}, not 1")
        for o in fractions:
            if o.host is None:
                continue
            if o.host not in hosts:
                problems.append(f"model {m}: unknown host {o.host!r}")
            elif (m, o.host) not in instance.perf:
                problems.append(f"model {m}: cannot run on host {o.host} (no Perf)")
            elif levels.get((m, o.host)) != o.level:
                problems.append(
                    f"model {m}: option {o} but level {levels.get((m, o.host))} held there"
                )
    return problems


def busy_seconds(instance: Instance, split: Split) -> dict[str, float]:
    """Per host: the seconds of inference a (valid) split asks of it in the slot."""
    busy = {h.id: 0.0 for h in instance.hosts}
    for m, fractions in split.items():
        n = instance.requests(m)
        for o, x in fractions.items():
            if o.host is not None:
                busy[o.host] += x * n * instance.perf[(m, o.host)].infer_s
    return busy


def host_use_split(instance: Instance, split: Split, levels: Levels) -> dict[str, HostUse]:
    """Resource use per host of a *valid* split: memory from the levels held, compute from
    the traffic each host serves."""
    use = {h.id: HostUse() for h in instance.hosts}
    for (m, e), level in levels.items():
        u = use[e]
        perf = instance.perf[(m, e)]
        size = instance.model(m).storage_bytes
        u.disk += size
        if level == Level.CACHED:
            u.ram += size
        if level == Level.RESIDENT:
            u.resident += perf.vram_bytes
        else:
            u.pool = max(u.pool, perf.vram_bytes)
    for e, busy in busy_seconds(instance, split).items():
        use[e].compute = busy
    return use


def violations_split(instance: Instance, split: Split, levels: Levels) -> list[str]:
    """Every broken constraint of a split decision, as readable lines; empty: feasible."""
    problems = _check_split(instance, split, levels)
    if problems:
        return problems
    use = host_use_split(instance, split, levels)
    for h in instance.hosts:
        problems.extend(_host_problems(h, use[h.id], instance.slot_s))
    return problems


def violations(instance: Instance, assignment: Mapping[str, Option]) -> list[str]:
    """Every broken constraint of a one-option assignment; empty means feasible."""
    problems = _check_options(instance, assignment)
    if problems:
        return problems
    split = split_of_assignment(assignment)
    return violations_split(instance, split, levels_of_split(split))


def wait_cost(instance: Instance, host: HostSpec, busy_s: float) -> float:
    """delay_weight·κ_e·G(ρ_e): the linearised queueing wait of a slot's requests on a
    host busy `busy_s` seconds of the slot (`queueing`)."""
    rho = busy_s / instance.slot_s
    kappa = wait_scale(instance.slot_s, host.service_scv)
    return instance.prices.delay_weight * kappa * instance.wait_curve(host.id).linear(rho)


def evaluate_split(instance: Instance, split: Split, levels: Levels) -> CostBreakdown:
    """The cost of a split decision (the decision model v2):

        Σ_m Σ_o x_{m,o}·n_m·(per-request cost of o)   delay and cloud
      + Σ_{(m,e) held at ℓ} holding cost               resource and transition
      + Σ_e p_vram·P_e                                  the pool, per host
      + Σ_e w_d·κ_e·G(ρ_e)                             wait, ρ_e = Σ x·n·I / τ

    Feasibility is not checked (see `violations_split`); a split that misses a model, names
    an impossible option or an option whose level is not held raises ValueError."""
    problems = _check_split(instance, split, levels)
    if problems:
        raise ValueError("; ".join(problems))
    total = CostBreakdown()
    for m, fractions in split.items():
        n = instance.requests(m)
        for o, x in fractions.items():
            total = total + per_request_cost(instance, m, o) * (x * n)
    for (m, e), level in levels.items():
        total = total + holding_cost(instance, m, e, level)
    use = host_use_split(instance, split, levels)
    pool = sum(u.pool for u in use.values())
    wait = sum(wait_cost(instance, h, use[h.id].compute) for h in instance.hosts)
    return total + CostBreakdown(resource=instance.prices.vram_per_GB * pool / GB, wait=wait)


def evaluate(instance: Instance, assignment: Mapping[str, Option]) -> CostBreakdown:
    """The cost of a one-option assignment: `evaluate_split` of every model's traffic on
    its one option (Σ option costs + p_vram·P_e per host + the hosts' queueing wait).

    Feasibility is not checked (see `violations`); an assignment that misses a model or
    names an impossible option raises ValueError.
    """
    problems = _check_options(instance, assignment)
    if problems:
        raise ValueError("; ".join(problems))
    split = split_of_assignment(assignment)
    return evaluate_split(instance, split, levels_of_split(split))


def evaluate_decision(instance: Instance, decision: Decision) -> CostBreakdown:
    return evaluate_split(instance, decision.split, decision.levels)


@dataclass(frozen=True)
class HostLoad:
    """What a split asks of one host in the slot: utilisation ρ, requests, and the expected
    queueing wait per request on the linearised curve the decision is priced by
    (`wait_s`) and on the true curve it approximates (`true_wait_s`; M/G/1 without
    shedding, inf at ρ ≥ 1)."""

    host: str
    rho: float
    requests: float
    wait_s: float
    true_wait_s: float


def host_loads(instance: Instance, split: Split) -> dict[str, HostLoad]:
    """Per host: its load under a (valid) split and the expected wait per request."""
    busy = busy_seconds(instance, split)
    reqs = {h.id: 0.0 for h in instance.hosts}
    for m, fractions in split.items():
        for o, x in fractions.items():
            if o.host is not None:
                reqs[o.host] += x * instance.requests(m)
    out = {}
    for h in instance.hosts:
        rho = busy[h.id] / instance.slot_s
        kappa = wait_scale(instance.slot_s, h.service_scv)
        curve = instance.wait_curve(h.id)
        r = reqs[h.id]
        lin = kappa * curve.linear(rho) / r if r > 0 else 0.0
        true = kappa * curve.g(rho) / r if r > 0 else 0.0
        out[h.id] = HostLoad(h.id, rho, r, lin, true)
    return out


def routing_weights(instance: Instance, split: Split) -> dict[str, dict[Option, float]]:
    """What share of each model's requests the gateway should *send* each option for the
    hosts to *serve* the split. A host that sheds (`CloudSpec.overflow`) passes what would
    wait past its threshold on to the cloud, so to serve utilisation ρ_e it must be offered
    ρ_e·`queueing.offered_factor`(ρ_e, d_e): every edge share is scaled by its host's factor
    and the cloud gets the rest; when a model's scaled edge shares reach all of its
    traffic, they are scaled to sum to 1 and the cloud gets nothing (the hosts then serve
    less than planned, the cloud the overflow). Without shedding the weights are the split."""
    factor = {}
    for e, busy in busy_seconds(instance, split).items():
        d = instance.shed_threshold(e)
        factor[e] = offered_factor(busy / instance.slot_s, d) if d is not None else 1.0
    out: dict[str, dict[Option, float]] = {}
    for m, fractions in split.items():
        edge = {o: x * factor[o.host] for o, x in fractions.items() if o.host is not None}
        sent = sum(edge.values())
        if edge and sent >= 1.0 - _SPLIT_TOL:
            out[m] = {o: w / sent for o, w in edge.items()}
        else:
            out[m] = {**edge, CLOUD: 1.0 - sent}
    return out


def marginal_wait_price(instance: Instance, host: HostSpec, busy_s: float) -> float:
    """d(wait cost)/d(busy seconds) on a host busy `busy_s`: w_d·κ_e·G'(ρ)/τ, the slope of
    the segment of G that ρ lies on (the right derivative at a knot)."""
    kappa = wait_scale(instance.slot_s, host.service_scv)
    slope = instance.wait_curve(host.id).slope(busy_s / instance.slot_s)
    return instance.prices.delay_weight * kappa * slope / instance.slot_s


def pool_miss_from(
    instance: Instance, decision: Decision, max_wait_s: float = DEFAULT_MAX_WAIT_S
) -> dict[tuple[str, str], float]:
    """π_{m,e} for this slot's instance from a decision (normally the previous slot's):
    which models share each host's pool, the rates the decision routes to them, and how
    long the host keeps a request (the agent serves its pool grouped by model).

    Rates: λ_{m,e} = λ_m·x_{m,e}, the rate the decision routes to pooled m on e (λ_m, all
    of its traffic, for a model not pooled on e by that decision: the rate it would bring),
    Λ_{e,−m} the rate it routes to the other models pooled on e; the pool's requests are
    taken as independent Poisson streams.

    First in, first out (`max_wait_s` = 0): a request misses iff the pool request just
    before it was another model's, π = Λ_{e,−m} / (Λ_{e,−m} + λ_{m,e}).

    Grouped (`genedge.pool_schedule`, the agent's rule with starvation bound `max_wait_s`):
    the pool's waiting requests of the model it holds go before a switch, so a request for
    m rides along with any request for m still in the host (waiting, loading or being
    served: the switch that one pays, or has paid, serves both), and otherwise hits only
    when the pool still holds m, i.e. no other model's request came after m's last one.
    With T_{m,e} the time a request stays in the host, a request for m misses iff no
    request for m arrived in the last T and another model's request arrived after m's last
    one (`grouped_pool_miss`, the closed form of that event's probability: the FIFO value at
    T = 0, falling with T, 0 for a model alone in its pool).

    The stay T_{m,e} = W_e + π_{m,e}·L_{m,e} + I_{m,e}: the host's expected queueing wait,
    the switch the request pays on a miss (L^ram when the decision caches m on e, else
    L^disk) and one inference. W_e is the wait per request on the curve the decision is
    priced by (`host_loads`), at the utilisation of the decision's inference seconds *plus*
    the pool's switch seconds Σ λ_{m,e}·π_{m,e}·L_{m,e} (the decision's compute term counts
    inference only, but a switch holds the GPU too). π enters its own T and W, so it is a
    fixed point: iterated from the FIFO value, averaging each step (damped, as the two
    pull in opposite directions at high load), `_PI_ROUNDS` rounds. When W_e reaches
    `max_wait_s`, requests are served overdue, oldest first, whatever the pool holds:
    grouping is off and π is the FIFO value. Against the simulator's pool served by the
    agent's rule (tests/test_pool_miss.py) the overall miss rate is within 0.03 where the
    FIFO value errs by up to 0.13.

    Approximations: T is a mean taken as fixed; W is the host's mean for every model on
    it. π is an input of the decision (computed before solving), so `exact` stays the
    optimum of its linearised model; it lags one decision behind a change of pool
    membership. Without traffic π = 1 (no evidence)."""
    pooled_rate: dict[str, dict[str, float]] = {h.id: {} for h in instance.hosts}
    pooled_level: dict[tuple[str, str], str] = {}
    rates = {m.id: instance.rates.get(m.id, 0.0) for m in instance.models}
    for (m, e), level in decision.levels.items():
        if level in Level.POOLED and m in rates and e in pooled_rate:
            x = float(decision.split.get(m, {}).get(Option(e, level), 0.0))
            pooled_rate[e][m] = rates[m] * x
            pooled_level[(m, e)] = level
    split = {m: fr for m, fr in decision.split.items() if m in rates}
    busy = busy_seconds(instance, split)
    served = {h.id: 0.0 for h in instance.hosts}
    for m, fractions in split.items():
        for o, x in fractions.items():
            if o.host is not None:
                served[o.host] += x * instance.requests(m)

    def load_s(m: str, e: str) -> float:
        perf = instance.perf[(m, e)]
        return perf.load_ram_s if pooled_level.get((m, e)) == Level.CACHED else perf.load_disk_s

    def wait_s(e: str, switch_s: float) -> float:
        n = served[e]
        if n <= 0.0:
            return 0.0
        h = instance.host(e)
        rho = (busy[e] + switch_s) / instance.slot_s
        return wait_scale(instance.slot_s, h.service_scv) * instance.wait_curve(e).linear(rho) / n

    out: dict[tuple[str, str], float] = {}
    for e, pool in pooled_rate.items():
        total = sum(pool.values())
        pi = {m: grouped_pool_miss(r, total - r, 0.0) for m, r in pool.items()}
        wait = 0.0
        grouped = max_wait_s > 0.0
        for _ in range(_PI_ROUNDS if grouped else 0):
            switch = instance.slot_s * sum(r * pi[m] * load_s(m, e) for m, r in pool.items())
            wait = wait_s(e, switch)
            if wait >= max_wait_s:
                grouped = False
                break
            for m, r in pool.items():
                stay = wait + pi[m] * load_s(m, e) + instance.perf[(m, e)].infer_s
                pi[m] = 0.5 * (pi[m] + grouped_pool_miss(r, total - r, stay))
        for m, ee in instance.perf:
            if ee != e:
                continue
            own = pool.get(m, rates[m])
            others = total - pool.get(m, 0.0)
            if own <= 0.0:
                out[(m, e)] = 1.0
            elif not grouped:
                out[(m, e)] = grouped_pool_miss(own, others, 0.0)
            elif m in pool:
                out[(m, e)] = pi[m]
            else:  # a model the decision does not pool here: the same fixed point, alone
                p = grouped_pool_miss(own, others, 0.0)
                for _ in range(_PI_ROUNDS):
                    stay = wait + p * load_s(m, e) + instance.perf[(m, e)].infer_s
                    p = 0.5 * (p + grouped_pool_miss(own, others, stay))
                out[(m, e)] = p
    return out


_PI_ROUNDS: Final = 8
"""Rounds of the damped fixed point of `pool_miss_from` (from the FIFO value)."""


def grouped_pool_miss(own: float, others: float, stay_s: float) -> float:
    """π of a model at rate `own` sharing a grouped pool with others at rate `others`, its
    requests staying `stay_s` in the host (`pool_miss_from`); `stay_s` = 0 is FIFO."""
    total = own + others
    if total <= 0.0:
        return 1.0
    return math.exp(-own * stay_s) * -math.expm1(-others * stay_s) + (others / total) * math.exp(
        -total * stay_s
    )


def explain(
    instance: Instance, model_id: str, assignment: Mapping[str, Option] | None = None
) -> list[OptionCost]:
    """Every option of one model priced against the rest of `assignment` (default all-cloud).

    The rows are the cloud, then each host × level the model has a Perf for, each taking
    all of the model's traffic. A pooled option's resource term is charged the marginal
    pool cost p_vram·max(0, h − P_e) where P_e is the pool the *other* models need, and
    every edge row the growth of its host's wait, so for the chosen option o*:
    evaluate(A).total − evaluate(A with m on the cloud).total == row(o*).total − row(cloud).total.
    """
    instance.model(model_id)  # KeyError for an unknown model
    rest: dict[str, Option] = dict(assignment) if assignment is not None else {}
    chosen = rest.get(model_id, CLOUD)
    rest.pop(model_id, None)
    problems = _check_options(instance, {**instance.all_cloud(), **rest})
    problems = [p for p in problems if f"model {model_id}:" not in p]
    if problems:
        raise ValueError("; ".join(problems))
    use = _host_use(instance, rest)
    rows: list[OptionCost] = []
    for option in instance.options(model_id):
        c = option_cost(instance, model_id, option)
        growth = 0
        wait = 0.0
        reasons: list[str] = []
        if option.host is not None:
            host = instance.host(option.host)
            perf = instance.perf[(model_id, option.host)]
            size = instance.model(model_id).storage_bytes
            u = use[option.host]
            with_m = HostUse(
                disk=u.disk + size,
                ram=u.ram + (size if option.level == Level.CACHED else 0),
                resident=u.resident + (perf.vram_bytes if option.level == Level.RESIDENT else 0),
                pool=max(u.pool, perf.vram_bytes) if option.pooled else u.pool,
                compute=u.compute + instance.requests(model_id) * perf.infer_s,
            )
            growth = with_m.pool - u.pool
            reasons = _host_problems(host, with_m, instance.slot_s)
            wait = wait_cost(instance, host, with_m.compute) - wait_cost(instance, host, u.compute)
        rows.append(
            OptionCost(
                option=option,
                delay=c.delay,
                resource=c.resource + instance.prices.vram_per_GB * growth / GB,
                cloud=c.cloud,
                transition=c.transition,
                fits=not reasons,
                reasons=tuple(reasons),
                chosen=option == chosen,
                pool_growth_bytes=growth,
                wait=wait,
            )
        )
    return rows


def with_option(
    assignment: Mapping[str, Option], changes: Iterable[tuple[str, Option]]
) -> dict[str, Option]:
    """A copy of `assignment` with some models' options replaced."""
    out = dict(assignment)
    out.update(changes)
    return out
