"""Liveness: an agent that misses `missed_heartbeats` heartbeat intervals is marked down
(its models leave the plan and the routing table until it registers again).

Agents known from before a restart get a full window from the orchestrator's start: they
heartbeat a restarted orchestrator within one interval, and marking them all down first
would empty the placement and the gateways' routing table meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from orchestrator.fleet import Fleet
from orchestrator.settings import OrchestratorSettings

log = logging.getLogger("orchestrator")


class Liveness:
    def __init__(
        self, settings: OrchestratorSettings, fleet: Fleet, clock: Callable[[], float]
    ) -> None:
        self._settings = settings
        self._fleet = fleet
        self._clock = clock
        self.started_at = clock()  # moved to the orchestrator's start by `start_window`

    def start_window(self) -> None:
        """Every agent's liveness window starts no earlier than now."""
        self.started_at = self._clock()

    def sweep(self) -> list[str]:
        """Mark down every live agent silent for too long; returns their ids."""
        limit = self._settings.heartbeat_interval_s * self._settings.missed_heartbeats
        now = self._clock()
        down = []
        for a in self._fleet.agents():
            seen = max(a.last_heartbeat or a.registered_at, self.started_at)
            if a.status == "up" and seen < now - limit:
                log.warning(
                    "agent %s missed %d heartbeats: marking it down",
                    a.id,
                    self._settings.missed_heartbeats,
                )
                self._fleet.mark_down(a.id)
                down.append(a.id)
        return down

    async def run(self, on_down: Callable[[str], None]) -> None:
        """Sweep every heartbeat interval (at least every second) until cancelled."""
        while True:
            await asyncio.sleep(min(self._settings.heartbeat_interval_s, 1.0))
            for agent_id in self.sweep():
                on_down(agent_id)
