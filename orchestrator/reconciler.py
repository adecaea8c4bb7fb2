"""The reconciler: moves the fleet to a decision's levels with `PUT level` commands.

Each new decision replaces the commands of the last one still under way (a host's current
command finishes; the rest are dropped). The commands come ordered from
`core.reconcile.plan_commands`: everything that frees memory, on every host, before
anything that takes it, so that no host exceeds a capacity mid-way; hosts run in parallel,
each its own commands one after another. What is not done yet is `pending` (shown in
`GET /v1/placement` and as a metric).

A command to take a model the host lacks is a fetch, which may take minutes: the host's
other commands do not wait behind it (the decision's levels fit the host once every free
is done, whatever the order of the takes); it stays pending until the agent reports the
model at its level. A model the agent fetched that the decision no longer places there is
marked `absent` (`Fleet.unplaceable`), so the agent may reclaim its disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Protocol

from orchestrator.core.reconcile import Command, plan_commands
from orchestrator.fleet import Fleet


class CommandSender(Protocol):
    """What sends one command to an agent (`adapters.agent_commands.AgentCommands`, or a
    test's fake): True when the agent carried it out."""

    async def send(self, url: str, c: Command) -> bool: ...


class Reconciler:
    def __init__(self, fleet: Fleet, commands: CommandSender) -> None:
        self._fleet = fleet
        self._commands = commands
        self._task: asyncio.Task[None] | None = None
        self.pending: list[Command] = []

    def start(
        self,
        target: dict[tuple[str, str], str],
        actual: dict[tuple[str, str], str],
        unplace: Collection[tuple[str, str]] | None = None,
    ) -> None:
        """Start moving `actual` to `target` ((model, host) -> level), replacing the run of
        the previous decision; the pairs of `unplace` (default: the fleet's fetched models
        and fetches under way) go `absent` when the target does not place them."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if unplace is None:
            unplace = self._fleet.unplaceable()
        plan = plan_commands(target, actual, unplace)
        self.pending = plan.all()  # visible at once in GET /v1/placement
        self._task = asyncio.create_task(self._run(plan.phases), name="reconcile")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, phases: tuple[list[Command], ...]) -> None:
        for phase in phases:
            by_host: dict[str, list[Command]] = {}
            for c in phase:
                by_host.setdefault(c.host, []).append(c)
            await asyncio.gather(*(self._run_host(h, cs) for h, cs in sorted(by_host.items())))

    async def _run_host(self, host: str, cmds: list[Command]) -> None:
        rec = self._fleet.agent(host)
        if rec is None:
            return
        fetches: list[asyncio.Task[None]] = []
        try:
            for c in cmds:
                if c.fetches:  # minutes: the rest of the host's commands go on meanwhile
                    fetches.append(asyncio.create_task(self._send(rec.url, c)))
                else:
                    await self._send(rec.url, c)
            await asyncio.gather(*fetches)
        finally:
            for t in fetches:
                t.cancel()

    async def _send(self, url: str, c: Command) -> None:
        await self._commands.send(url, c)
        if c in self.pending:
            self.pending.remove(c)
