"""Turning a decision into commands: the difference between decided and actual levels, as
`PUT level` commands ordered so that no host exceeds a capacity mid-way (everything that
frees memory first, then what takes it, smaller steps before larger ones).

A host may be told to take a model it lacks (`was` `absent`: the agent fetches it from its
repository first), and to mark `absent` a model it fetched that the decision no longer
places there (it goes down to stored, and the agent may reclaim its disk)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

RANK = {"absent": -1, "stored": 0, "cached": 1, "resident": 2}


@dataclass(frozen=True)
class Command:
    host: str
    model: str
    level: str  # the target level: absent | stored | cached | resident
    was: str  # absent: the host does not hold the model (yet)

    @property
    def frees(self) -> bool:
        """Goes down a level, or unplaces the model (which may cancel a fetch under way)."""
        return self.level == "absent" or RANK[self.level] < RANK[self.was]

    @property
    def fetches(self) -> bool:
        """The host lacks the model: carrying this out means fetching it first (minutes)."""
        return self.was == "absent" and self.level != "absent"


def settled_level(level: str, host_ram_bytes: int = 0) -> str:
    """An agent's reported level as a target level: a pooled model is stored (or cached when
    it also holds a host-RAM copy); `absent` models are not on the host at all."""
    if level == "pooled":
        return "cached" if host_ram_bytes > 0 else "stored"
    return level


@dataclass(frozen=True)
class CommandPlan:
    """The commands of one decision in the order they run: every command that frees memory
    (on every host) before any that takes it; within each phase, a host runs its commands
    in the order listed."""

    frees: list[Command] = field(default_factory=list)  # by model, then host
    takes: list[Command] = field(default_factory=list)  # smaller steps first

    @property
    def phases(self) -> tuple[list[Command], list[Command]]:
        return self.frees, self.takes

    def all(self) -> list[Command]:
        return [*self.frees, *self.takes]


def plan_commands(
    target: dict[tuple[str, str], str],
    actual: dict[tuple[str, str], str],
    unplace: Collection[tuple[str, str]] = (),
) -> CommandPlan:
    """Commands that move `actual` ((model, host) -> level, for models on live hosts;
    `absent` for one a host is still fetching) to `target` ((model, host) -> level).

    A target pair the host does not hold (not in `actual`, or `absent`) is a fetch. A held
    pair not in `target` goes to `stored`, or to `absent` when it is in `unplace` (fetched
    models, fetches under way); an `absent` pair outside `unplace` is left alone."""
    cmds = []
    for model, host in sorted(set(actual) | set(target)):
        now = actual.get((model, host), "absent")
        want = target.get((model, host))
        if want is None and (model, host) in unplace:
            cmds.append(Command(host, model, "absent", now))  # stops a fetch under way too
        elif want is None:
            if now in ("cached", "resident"):
                cmds.append(Command(host, model, "stored", now))
        elif want != now:
            cmds.append(Command(host, model, want, now))
    frees = [c for c in cmds if c.frees]
    takes = sorted((c for c in cmds if not c.frees), key=lambda c: (RANK[c.level], c.host, c.model))
    return CommandPlan(frees, takes)
