"""The fleet as the orchestrator knows it: the registered agents, each one's last model
statuses and the profiles measured on it, all in the contract's types.

The registry (SQLite) is what survives a restart; this keeps each agent's statuses in
memory as well, read from the registry at most once, because the planner, the reconciler,
the views and the routing table (fetched by every gateway every second) all read them.
A heartbeat replaces an agent's list whole, so a reader in another thread (the planner runs
off the event loop) sees either the old list or the new one, never half of each.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from genedge.contract import (
    AgentRegistration,
    Heartbeat,
    HostFacts,
    Level,
    ModelOrigin,
    ModelProfile,
    ModelState,
    ModelStatus,
)
from orchestrator.adapters.registry import AgentRecord, Registry
from orchestrator.core.reconcile import settled_level

log = logging.getLogger("orchestrator")

PLACEABLE = ("stored", "cached", "resident")
"""The levels a decision can ask for; a model at another (`absent`) is not on the host."""


def settled(m: ModelStatus) -> str:
    """A reported model's level as a decision would name it (`pooled` is stored or cached)."""
    return settled_level(m.level.value, m.host_ram_bytes)


class Fleet:
    """Agents, their model statuses and profiles, over the registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._models: dict[str, list[ModelStatus]] = {}
        # The profile last stored per (agent, model) by this process: a heartbeat repeats
        # every profile, and rewriting them all was most of a heartbeat's cost.
        self._profiles_stored: dict[tuple[str, str], ModelProfile] = {}
        # (model, host fingerprint) -> the profile last stored for that kind of host, read
        # from the registry on first use and kept up to date by `_store_profiles`.
        self._by_hardware: dict[tuple[str, str], ModelProfile] | None = None

    # ------------------------------------------------------------------ writes
    def register(self, reg: AgentRegistration, now: float) -> bool:
        """Record a (re-)registration with the models it reports; True if the agent was
        known before (a restart of either side)."""
        known = self.registry.agent(reg.agent_id) is not None
        self.registry.upsert_agent(reg.agent_id, reg.url, reg.role, reg.facts, now)
        self._record(reg.agent_id, None, reg.models, now)  # the facts went in just above
        return known

    def heartbeat(self, agent_id: str, hb: Heartbeat, now: float) -> AgentRecord | None:
        """Record a heartbeat of a live agent; None, recording nothing, when the agent is
        unknown or was marked down (it must register again)."""
        rec = self.registry.agent(agent_id)
        if rec is None or rec.status == "down":
            return None
        self._record(agent_id, hb.facts, hb.models, now)
        return rec

    def _record(
        self, agent_id: str, facts: HostFacts | None, models: list[ModelStatus], now: float
    ) -> None:
        self.registry.heartbeat(agent_id, facts, models, now)
        self._models[agent_id] = list(models)
        self._store_profiles(agent_id, models, now)

    def _store_profiles(self, agent_id: str, models: list[ModelStatus], now: float) -> None:
        """Store, in one transaction, the profiles that changed since this agent last sent
        them."""
        changed = [
            (m.id, m.profile)
            for m in models
            if m.profile is not None and self._profiles_stored.get((agent_id, m.id)) != m.profile
        ]
        if changed:
            self.registry.put_profiles(agent_id, changed, now)
            by_hardware = self._by_hardware
            for model_id, profile in changed:
                self._profiles_stored[(agent_id, model_id)] = profile
                if by_hardware is not None:
                    by_hardware[(model_id, profile.host_fingerprint)] = profile

    def mark_down(self, agent_id: str) -> None:
        self.registry.set_agent_status(agent_id, "down")

    # ------------------------------------------------------------------ reads
    def agents(self) -> list[AgentRecord]:
        """Every registered agent (up or down), by id."""
        return self.registry.agents()

    def agent(self, agent_id: str) -> AgentRecord | None:
        return self.registry.agent(agent_id)

    def live(self, role: str) -> list[AgentRecord]:
        """The agents of `role` (`edge` or `cloud`) that are up, by id."""
        return [a for a in self.registry.agents() if a.status == "up" and a.role == role]

    def models_of(self, agent_id: str) -> list[ModelStatus]:
        """An agent's last reported model statuses (read from the registry once)."""
        models = self._models.get(agent_id)
        if models is None:
            models = self._models[agent_id] = self.registry.agent_models(agent_id)
        return models

    def profile_of(self, agent_id: str, m: ModelStatus) -> ModelProfile | None:
        """The profile of model `m` on this agent: the one it reported, else the one stored
        (measured before; a status may leave it out), else None (not measured yet)."""
        return m.profile or self.registry.profile(agent_id, m.id)

    def profile_on_hardware(self, model_id: str, fingerprint: str) -> ModelProfile | None:
        """A profile of `model_id` measured on any host of this hardware `fingerprint` (the
        last one stored), or None: hosts of one kind share measurements, so a host that
        has not measured a model (or does not hold it yet) is planned with its twin's."""
        by_hardware = self._by_hardware
        if by_hardware is None:
            by_hardware = {(m, p.host_fingerprint): p for _, m, p in self.registry.profiles()}
            self._by_hardware = by_hardware
        return by_hardware.get((model_id, fingerprint))

    def repository_models(self, repository_url: str | None) -> list[ModelStatus]:
        """The models the repository at `repository_url` (a host's) offers, as far as
        the orchestrator knows: a repository is an agent (every agent serves its store),
        so the registered agent at that URL, when it is up, offers what it holds. A URL no
        registered agent has is taken for the cloud agent under a name only the host uses
        (a proxy, a network alias): the live cloud agents' models. None for a host that
        cannot fetch, or whose repository agent is down."""
        if not repository_url:
            return []
        url = _normalized(repository_url)
        agents = self.registry.agents()
        matched = [a for a in agents if _normalized(a.url) == url]
        sources = matched or [a for a in agents if a.role == "cloud"]
        offered: dict[str, ModelStatus] = {}
        for a in sources:
            if a.status != "up":
                continue
            for m in self.models_of(a.id):
                if m.level != Level.ABSENT:
                    offered.setdefault(m.id, m)
        return list(offered.values())

    def unplaceable(self) -> set[tuple[str, str]]:
        """(model, host) pairs a decision that no longer places them should mark `absent`
        on their live edge host, so the agent may reclaim their disk: models the agent
        fetched that it still counts as placed (`ModelStatus.placed`; an unplaced one needs
        no command), and fetches under way or failed. Never the operator's own
        (`user`) models, nor pinned ones (the agent refuses `absent` below a pin)."""
        out = set()
        for a in self.live("edge"):
            for m in self.models_of(a.id):
                if m.pinned_level is not None:
                    continue
                if m.level == Level.ABSENT or (m.origin == ModelOrigin.FETCHED and m.placed):
                    out.add((m.id, a.id))
        return out

    def known_models(self) -> set[str]:
        """Every model some registered agent (up or down) holds."""
        return {m.id for a in self.registry.agents() for m in self.models_of(a.id)}

    def actual_levels(self) -> dict[tuple[str, str], str]:
        """(model, host) -> the settled level now, on every live edge host."""
        return {(m.id, a.id): settled(m) for a in self.live("edge") for m in self.models_of(a.id)}


def fetch_failed(m: ModelStatus) -> bool:
    """A fetch of `m` that failed (the host still lacks it; the reason is in the status)."""
    return m.level == Level.ABSENT and m.state == ModelState.FAILED


def _normalized(url: str) -> tuple[str, str, int | None, str]:
    """A URL as (scheme, host, port, path) with defaults filled, to compare two spellings."""
    u = urlsplit(url.strip())
    scheme = (u.scheme or "http").lower()
    try:
        port = u.port
    except ValueError:
        port = None
    port = port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (u.hostname or "").lower(), port, u.path.rstrip("/")
