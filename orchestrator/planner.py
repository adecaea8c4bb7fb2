"""The planner: the decision problem of the next slot, from the live fleet, and when to solve it.

`build_instance` turns the live edge hosts' facts and model statuses (measured profiles, a
profile measured on a host of the same hardware fingerprint, or estimates from a model's
size and the host's bandwidths until it is measured) and the estimated rates into an
`Instance`. A host with a model repository may also be given the models the repository
offers that it lacks: those pairs are not `current`, so the decision pays their fetch over
the host's measured fetch bandwidth (`docs/decisions.md`, "Fetching models"). `solve` runs
the configured algorithm on it. `Planner` decides when: every slot, and at once on an event
(a host joins or goes down, a rate surges).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from genedge.contract import Level, ModelProfile, ModelStatus, TargetLevel
from orchestrator.controls import ControlsStore
from orchestrator.core import algorithms
from orchestrator.core.batching import planned_time
from orchestrator.core.placement import (
    PRIORITY_WEIGHTS,
    CloudSpec,
    Decision,
    HostSpec,
    Instance,
    ModelSpec,
    Perf,
    Prices,
)
from orchestrator.core.rates import PoolStats
from orchestrator.errors import InvalidRequest, NoHosts
from orchestrator.fleet import PLACEABLE, Fleet, fetch_failed, settled
from orchestrator.settings import OrchestratorSettings

log = logging.getLogger("orchestrator")

SURGE_TRIGGER = "rate surge of"
"""How a mid-slot plan on a rate surge is named (the models follow): such a plan keeps every
level of the last decision (`placement.keeping`)."""

_DEFAULT_INFER_S = 1.0
_DEFAULT_DISK_GBPS = 1.0
_DEFAULT_H2D_GBPS = 5.0
_PRICE_FIELDS = (
    "delay_weight",
    "disk_per_GB",
    "ram_per_GB",
    "vram_per_GB",
    "cloud_per_request",
    "fetch_weight",
    "load_weight",
)


@dataclass
class Plan:
    """A decision with the problem it solved: when, why, and each model's kind."""

    decision: Decision
    instance: Instance
    computed_at: float
    trigger: str
    kinds: dict[str, str] = field(default_factory=dict)


def prices(settings: OrchestratorSettings) -> Prices:
    """The settings' prices; those not set keep the decision core's defaults."""
    given = {f: getattr(settings, f) for f in _PRICE_FIELDS if getattr(settings, f) is not None}
    return Prices(**given)


def build_instance(
    settings: OrchestratorSettings,
    fleet: Fleet,
    rates: Mapping[str, float],
    pool: PoolStats,
    controls: ControlsStore | None = None,
) -> tuple[Instance, dict[str, str]]:
    """The decision problem for the next slot, from live hosts and measured profiles, and
    each model's kind, with the operator's pins (on live hosts, for models they can run)
    and priority classes. A host with a repository can also take the models it offers
    (`Fleet.repository_models`) that the host lacks, at the price of their fetch. Raises
    `NoHosts` when no edge agent is up."""
    hosts: list[HostSpec] = []
    models: dict[str, ModelSpec] = {}
    kinds: dict[str, str] = {}
    perf: dict[tuple[str, str], Perf] = {}
    current: dict[tuple[str, str], str] = {}
    offers: dict[str, list[ModelStatus]] = {}  # per repository URL
    for a in fleet.live("edge"):
        f = a.facts
        statuses = fleet.models_of(a.id)
        # Models mid-fetch (level `absent`) are not on its disk yet: only what it holds counts.
        held = [m for m in statuses if m.level != Level.ABSENT]
        hosts.append(
            HostSpec(
                id=a.id,
                disk_bytes=f.disk_free_bytes + sum(m.storage_bytes for m in held),
                ram_bytes=f.cache_budget_bytes,
                gpu_bytes=f.device_budget_bytes,
                rho_max=settings.rho_max,
                backhaul_Bps=f.fetch_Bps or settings.backhaul_Bps,
            )
        )
        disk_bw = (f.disk_read_GBps or _DEFAULT_DISK_GBPS) * 1e9
        h2d_bw = (f.h2d_GBps or _DEFAULT_H2D_GBPS) * 1e9
        for m in held:
            models.setdefault(
                m.id, ModelSpec(id=m.id, kind=m.kind.value, storage_bytes=m.storage_bytes)
            )
            kinds[m.id] = m.kind.value
            p = fleet.profile_of(a.id, m) or fleet.profile_on_hardware(m.id, f.fingerprint)
            perf[(m.id, a.id)] = _perf(p, m, disk_bw, h2d_bw, rates.get(m.id, 0.0))
            level = settled(m)
            if level in PLACEABLE:
                current[(m.id, a.id)] = level
        # What it could fetch: the models its repository offers that it does not hold, not
        # in `current`, so the decision pays the fetch over its backhaul. A fetch that failed
        # is left out of this plan; the reconciler then unplaces it, so the next plan retries.
        failed = {m.id for m in statuses if fetch_failed(m)}
        url = f.repository_url or ""
        if url and url not in offers:
            offers[url] = fleet.repository_models(url)
        for m in offers.get(url, []):
            if (m.id, a.id) in perf or m.id in failed:
                continue
            models.setdefault(
                m.id, ModelSpec(id=m.id, kind=m.kind.value, storage_bytes=m.storage_bytes)
            )
            kinds[m.id] = m.kind.value
            p = fleet.profile_on_hardware(m.id, f.fingerprint)  # its own, if it measured it before
            perf[(m.id, a.id)] = _perf(p, m, disk_bw, h2d_bw, rates.get(m.id, 0.0))
    if not hosts:
        raise NoHosts("no live edge agents to plan on")
    cloud_infer: dict[str, float] = {}
    for a in fleet.live("cloud"):
        for m in fleet.models_of(a.id):
            if m.profile is not None:
                cloud_infer[m.id] = m.profile.generation_s
    instance = Instance(
        hosts=hosts,
        models=sorted(models.values(), key=lambda m: m.id),
        perf=perf,
        rates={m: float(rates.get(m, 0.0)) for m in models},
        slot_s=settings.slot_s,
        cloud=CloudSpec(wan_rtt_s=settings.wan_rtt_s, infer_s=cloud_infer),
        prices=prices(settings),
        # Only pairs of this instance: evidence about hosts now down (or the cloud
        # agent, whose pool is not planned) stays in the statistics but out of the plan.
        pool_miss={k: v for k, v in pool.all().items() if k in perf},
        current=current,
        pins=_pins_in(controls, perf),
        priority=_weights_of(controls, models),
    )
    return instance, kinds


def profile_vram(p: ModelProfile) -> int:
    """A model's measured device memory: the larger of what it holds after loading and its
    peak during one generation (its batch's KV cache is counted apart)."""
    return max(p.peak_bytes, p.resident_bytes)


def _perf(
    p: ModelProfile | None, m: ModelStatus, disk_Bps: float, h2d_Bps: float, rate: float = 0.0
) -> Perf:
    """A model's Perf on a host: from its profile (measured there, or on a host of the same
    hardware fingerprint), else estimated from its size and the host's bandwidths. Its
    device memory includes its batch's KV cache (`ModelStatus.batch_cache_bytes`), which
    the agent budgets with the weights.

    A profile with throughput points gives the time at the batch the model's arrival
    `rate` (requests/s) implies (`planned_time`): the host seconds per request (compute)
    and the request's latency (delay) there, so a batching model carries more load than
    its batch-1 time says. The model's whole rate is used, as if one host served it:
    where the decision splits it, each host's batch is smaller than planned."""
    cache = m.batch_cache_bytes
    if p is not None:
        t = planned_time(p.generation_s, p.throughput, rate)
        return Perf(
            vram_bytes=profile_vram(p) + cache,
            load_disk_s=p.load_cold_s,
            load_ram_s=p.load_ram_s,
            infer_s=t.service_s,
            latency_s=t.latency_s if p.throughput else None,
        )
    size = m.storage_bytes
    return Perf(
        vram_bytes=size + cache,
        load_disk_s=size / disk_Bps,
        load_ram_s=size / h2d_Bps,
        infer_s=_DEFAULT_INFER_S,
    )


def _pins_in(
    controls: ControlsStore | None, perf: Mapping[tuple[str, str], Perf]
) -> dict[tuple[str, str], TargetLevel]:
    """The pins the instance can hold: a pin on a host that is down, or of a model the host
    cannot run (not held, not fetchable), waits until it can."""
    if controls is None:
        return {}
    return {(m, h): level for (h, m), level in controls.pins().items() if (m, h) in perf}


def _weights_of(controls: ControlsStore | None, models: Mapping[str, object]) -> dict[str, float]:
    if controls is None:
        return {}
    return {m: PRIORITY_WEIGHTS[p.value] for m, p in controls.priorities().items() if m in models}


def solve(settings: OrchestratorSettings, instance: Instance, algorithm: str | None) -> Decision:
    """Solve with `algorithm` (default: the configured one); an unknown name is a 422."""
    name = algorithm or settings.algorithm
    if name not in algorithms.ALGORITHMS:
        raise InvalidRequest(
            f"unknown algorithm {name!r}; known: {sorted(algorithms.ALGORITHMS)}",
            field="algorithm",
        )
    return algorithms.solve(name, instance, time_limit_s=settings.exact_time_limit_s)


def summary(d: Decision) -> str:
    """`model->host/level, ...` for the log."""
    return ", ".join(
        f"{m}->{o.host or 'cloud'}{'/' + o.level if o.level else ''}"
        for m, o in sorted(d.assignment.items())
    )


class Planner:
    """When to plan: every slot, or at once when `request` names a trigger."""

    def __init__(self, settings: OrchestratorSettings) -> None:
        self._settings = settings
        self._replan = asyncio.Event()
        self._trigger = "start"

    def request(self, trigger: str) -> None:
        """Plan as soon as the loop wakes (the last trigger named wins)."""
        self._trigger = trigger
        self._replan.set()

    async def run(self, plan_now: Callable[[str], Awaitable[object]]) -> None:
        """Call `plan_now(trigger)` every slot and on each request, until cancelled; a
        failed plan is logged and the loop goes on (no hosts is not a failure)."""
        while True:
            try:
                await asyncio.wait_for(self._replan.wait(), self._settings.slot_s)
                trigger = self._trigger
            except TimeoutError:
                trigger = "slot"
            self._replan.clear()
            try:
                await plan_now(trigger)
            except NoHosts:
                pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("planning failed")
