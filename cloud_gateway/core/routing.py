"""Routing policy: for one request, the ordered list of backends to try.

With a decision (the routing table gives each model's routing weights: one per host and
one for the cloud, `docs/decisions.md`), smooth weighted round-robin (`genedge.weighted`)
over those weights, among the planned hosts that are ready and not suspect, decides
whether a request goes to the edge or the cloud; an edge request goes to the planned host
that would answer it first (its queue ahead times the measured inference, plus a preload
when the pool does not hold the model), and when even that one would answer later than the
cloud, behind the cloud: the live-queue correction of the plan.
When the cloud would go first (picked, or every planned host slower), an idle host (nothing
in flight or queued there, for any model) that would answer before the cloud goes first
instead: a planned host of the model (the split thins the traffic to keep queues short; an
idle server has none, so the correction works both ways), or a host that may serve the
model on demand (`RouteHost.on_demand`: on its disk, not planned there, its planned swap
pool big enough), as Ollama-style load-on-demand would; the quickest.
The rest follow as fallbacks: the other planned hosts that beat the cloud, the cloud, the
slower ones, then unplanned hosts that hold the model.

Without a decision yet (`cloud_fraction` is None), by level and queue alone: hosts where
the model is resident, least loaded first (unless the queue would keep the request longer
than the cloud would); then hosts whose swap pool holds it or where the decision serves it,
when their expected delay beats the cloud's; then the cloud.

Hosts that failed a moment ago go last, so a dead host costs one failed connection, not one
per request. Pure Python: no HTTP, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from genedge.contract import CloudRoute, RouteHost, RouteModel, RoutingTable
from genedge.weighted import SmoothWeighted

Route = Literal["resident", "pooled", "cloud"]
_UNMEASURED_PRELOAD_S = 5.0  # a host that has not measured the model yet: assume slow


@dataclass(frozen=True)
class Target:
    backend: str  # host id, or the cloud's id
    url: str
    route: Route
    expected_s: float | None = None
    api_key: str | None = None


@dataclass(frozen=True)
class CloudBackend:
    """A fixed OpenAI-compatible cloud backend from the settings."""

    id: str
    url: str
    api_key: str = ""


class Router:
    """Holds the last routing table and answers `candidates(model)`."""

    def __init__(
        self,
        cloud: CloudBackend | None,
        suspect_s: float = 5.0,
        remember_s: float = 600.0,
        agent_token: str = "",
    ) -> None:
        self.cloud = cloud
        # Every agent (edge or cloud role) wants the fleet's agent token.
        self.agent_key = agent_token or None
        self.suspect_s = suspect_s
        self.remember_s = remember_s
        self.table: RoutingTable | None = None
        self.fetched_at: float | None = None
        self._models: dict[str, RouteModel] = {}
        self._host_queued: dict[str, int] = {}  # host -> its requests, every model, last reported
        self._suspect: dict[str, float] = {}  # host -> until
        # What earlier tables said, for a table that briefly knows less (an orchestrator
        # restarting, every agent re-registering): such a model is not "unknown" (404), and
        # a cloud agent that vanished from the table is most likely still there.
        self._seen: dict[str, tuple[RouteModel, float]] = {}
        self._clouds: dict[str, tuple[CloudRoute, float]] = {}
        self._choosers: dict[str, SmoothWeighted[str | None]] = {}  # per model; None: cloud

    # ------------------------------------------------------------------ table
    def update(self, table: RoutingTable, fetched_at: float) -> None:
        self.table = table
        self.fetched_at = fetched_at
        self._models = {m.model: m for m in table.models}
        self._host_queued = {}
        for m in table.models:
            self._seen[m.model] = (m, fetched_at)
            for h in m.hosts:
                self._host_queued[h.host] = self._host_queued.get(h.host, 0) + h.queued
        for c in table.cloud:
            self._clouds[c.id] = (c, fetched_at)

    def remembered(self, model: str, now: float) -> RouteModel | None:
        """The model as an earlier table (within `remember_s`) described it."""
        seen = self._seen.get(model)
        return seen[0] if seen is not None and now - seen[1] < self.remember_s else None

    def age_s(self, now: float) -> float | None:
        return None if self.fetched_at is None else max(0.0, now - self.fetched_at)

    def entry(self, model: str) -> RouteModel | None:
        return self._models.get(model)

    def catalogue(self) -> list[RouteModel]:
        return list(self._models.values())

    # ------------------------------------------------------------------ faults
    def mark_failed(self, host: str, now: float) -> None:
        self._suspect[host] = now + self.suspect_s

    def _is_suspect(self, host: str, now: float) -> bool:
        until = self._suspect.get(host)
        if until is None:
            return False
        if until <= now:
            del self._suspect[host]
            return False
        return True

    # ------------------------------------------------------------------ routing
    def candidates(self, model: str, inflight: Mapping[str, int], now: float) -> list[Target]:
        """Backends to try in order; empty when the model is unknown and no cloud can take
        it (the caller decides between 404 and 503)."""
        entry = self._models.get(model)
        cloud = self._cloud_targets(model, entry)
        if entry is None:
            return cloud
        if entry.cloud_fraction is None:
            return self._by_level(entry, cloud, inflight, now)
        return self._by_split(entry, cloud, inflight, now)

    def _expected(self, h: RouteHost, inflight: Mapping[str, int]) -> float | None:
        """Seconds until a request sent to `h` now would be answered: the queue ahead and
        itself at the measured inference time, plus a preload unless the model is resident
        or in the pool already. None when the host has not measured the model."""
        if h.infer_s is None:
            return None
        queue = inflight.get(h.host, 0) + h.queued
        preload = 0.0
        if h.level != "resident" and not h.in_pool:
            preload = h.preload_s if h.preload_s is not None else _UNMEASURED_PRELOAD_S
        return preload + h.infer_s * (1 + queue)

    def _target(self, h: RouteHost, expected: float | None) -> Target:
        route: Route = "resident" if h.level == "resident" else "pooled"
        return Target(h.host, h.url, route, expected, self.agent_key)

    def _by_split(
        self, entry: RouteModel, cloud: list[Target], inflight: Mapping[str, int], now: float
    ) -> list[Target]:
        cloud_s = self._cloud_expected(entry)
        ready = [h for h in entry.hosts if h.state == "ready"]
        planned = [h for h in ready if h.fraction > 0 and not self._is_suspect(h.host, now)]
        planned_ids = {h.host for h in planned}
        weights: dict[str | None, float] = {h.host: h.fraction for h in planned}
        if cloud:
            weights[None] = entry.cloud_fraction or 0.0
        chooser = self._choosers.setdefault(entry.model, SmoothWeighted())
        pick = chooser.pick(weights)

        def slower_than_cloud(expected: float | None) -> bool:
            return (
                bool(cloud)
                and cloud_s is not None
                and expected is not None
                and (expected > cloud_s)
            )

        first: list[Target] = []
        if pick is None and not planned:
            pass  # nothing planned is reachable: fallbacks only
        elif pick is None:
            first = cloud
        else:
            # the pick chose the edge: the planned host that would answer first serves, the
            # picked one on a tie (so idle hosts share by the weights) or when none has
            # measured the model
            h = next(x for x in planned if x.host == pick)
            known = [(e, x) for x in planned if (e := self._expected(x, inflight)) is not None]
            exp = None
            if known:
                exp, h = min(known, key=lambda t: (t[0], t[1].host != pick, t[1].host))
            if not slower_than_cloud(exp):
                first = [self._target(h, exp)]
        if not first or first is cloud:
            idle = self._idle_first(entry, planned_ids, inflight, now, cloud_s if cloud else None)
            if idle is not None:
                first = [idle]
        chosen = {t.backend for t in first}
        edge: list[tuple[float, Target]] = []
        behind: list[tuple[float, Target]] = []
        for h in planned:
            if h.host in chosen:
                continue
            exp = self._expected(h, inflight)
            rank = exp if exp is not None else float("inf")
            (behind if slower_than_cloud(exp) else edge).append((rank, self._target(h, exp)))
        edge.sort(key=lambda p: (p[0], p[1].backend))
        behind.sort(key=lambda p: (p[0], p[1].backend))
        unplanned = sorted(
            (
                h
                for h in ready
                if h.host not in planned_ids
                and h.host not in chosen
                and (h.level == "resident" or h.in_pool)
            ),
            key=lambda h: (inflight.get(h.host, 0) + h.queued, h.host),
        )
        rest_cloud = [] if first is cloud else cloud
        order = [
            *first,
            *(t for _, t in edge),
            *rest_cloud,
            *(t for _, t in behind),
            *(self._target(h, self._expected(h, inflight)) for h in unplanned),
        ]
        fresh = [t for t in order if not self._is_suspect(t.backend, now)]
        stale = [
            self._target(h, self._expected(h, inflight))
            for h in ready
            if self._is_suspect(h.host, now)
        ]
        return fresh + stale

    def _idle_first(
        self,
        entry: RouteModel,
        planned_ids: set[str],
        inflight: Mapping[str, int],
        now: float,
        cloud_s: float | None,
    ) -> Target | None:
        """An idle host, planned for the model (`planned_ids`: ready, not suspect) or one
        that may serve it on demand (`RouteHost.on_demand`), that would answer before the
        cloud, the quickest; None when there is none."""
        best: tuple[float, str, RouteHost] | None = None
        for h in entry.hosts:
            if h.host not in planned_ids and (
                not h.on_demand or h.state != "ready" or self._is_suspect(h.host, now)
            ):
                continue
            if inflight.get(h.host, 0) + self._host_queued.get(h.host, 0) > 0:
                continue  # busy: serving it here would delay the planned traffic
            exp = self._expected(h, inflight)
            if exp is None or (cloud_s is not None and exp >= cloud_s):
                continue
            if best is None or (exp, h.host) < best[:2]:
                best = (exp, h.host, h)
        return None if best is None else self._target(best[2], best[0])

    def _by_level(
        self, entry: RouteModel, cloud: list[Target], inflight: Mapping[str, int], now: float
    ) -> list[Target]:
        cloud_s = self._cloud_expected(entry)

        def load(h_host: str, h_queued: int) -> int:
            return inflight.get(h_host, 0) + h_queued

        resident = sorted(
            (h for h in entry.hosts if h.level == "resident" and h.state == "ready"),
            key=lambda h: (load(h.host, h.queued), h.host),
        )
        pooled: list[tuple[float, Target]] = []
        for h in entry.hosts:
            if h.level == "resident" or h.state != "ready" or not (h.planned or h.in_pool):
                continue
            expected = self._expected(h, inflight)
            if expected is None:  # unmeasured: preload guess, no inference time
                expected = 0.0 if h.in_pool else (h.preload_s or _UNMEASURED_PRELOAD_S)
            if cloud_s is None or not cloud or expected < cloud_s:
                pooled.append((expected, self._target(h, expected)))
        pooled.sort(key=lambda p: (p[0], p[1].backend))
        # A resident host whose queue would make the request wait longer than the cloud
        # takes goes after the cloud (still a fallback), as the simulator assumes.
        edge: list[Target] = []
        behind_cloud: list[Target] = []
        for h in resident:
            wait = self._expected(h, inflight)
            t = self._target(h, wait)
            slower = bool(cloud) and cloud_s is not None and wait is not None and wait > cloud_s
            (behind_cloud if slower else edge).append(t)
        edge += [t for _, t in pooled]
        fresh = [t for t in edge if not self._is_suspect(t.backend, now)]
        stale = [t for t in edge + behind_cloud if self._is_suspect(t.backend, now)]
        later = [t for t in behind_cloud if not self._is_suspect(t.backend, now)]
        return fresh + cloud + later + stale

    def _cloud_expected(self, entry: RouteModel) -> float | None:
        if self.table is None:
            return None
        infer = entry.cloud_infer_s
        if infer is None:
            measured = [h.infer_s for h in entry.hosts if h.infer_s is not None]
            infer = min(measured) if measured else 0.0
        return self.table.wan_rtt_s + infer

    def _cloud_targets(self, model: str, entry: RouteModel | None) -> list[Target]:
        if self.cloud is not None:
            c = self.cloud
            return [Target(c.id, c.url, "cloud", api_key=c.api_key or None)]
        if self.table is None:
            return []
        clouds = self.table.cloud
        if not clouds and self.fetched_at is not None:
            recent = self.fetched_at - self.remember_s
            clouds = [c for c, at in self._clouds.values() if at > recent]
        return [
            Target(c.id, c.url, "cloud", api_key=self.agent_key)
            for c in clouds
            if model in c.models or (entry is None and not c.models)
        ]
