"""Turning a decision into commands: the difference between decided and actual levels, as
`PUT level` commands ordered so that no host exceeds a capacity mid-way (everything that
frees memory first, then what takes it, smaller steps before larger ones)."""

from __future__ import annotations

from dataclasses import dataclass, field

RANK = {"stored": 0, "cached": 1, "resident": 2}


@dataclass(frozen=True)
class Command:
    host: str
    model: str
    level: str  # the target level: stored | cached | resident
    was: str

    @property
    def frees(self) -> bool:
        return RANK[self.level] < RANK[self.was]


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
    target: dict[tuple[str, str], str], actual: dict[tuple[str, str], str]
) -> CommandPlan:
    """Commands that move `actual` ((model, host) -> level, for models on live hosts) to
    `target` ((model, host) -> level; pairs not in it should be `stored`)."""
    cmds = [
        Command(host, model, target.get((model, host), "stored"), level)
        for (model, host), level in sorted(actual.items())
        if level in RANK and target.get((model, host), "stored") != level
    ]
    frees = [c for c in cmds if c.frees]
    takes = sorted((c for c in cmds if not c.frees), key=lambda c: (RANK[c.level], c.host, c.model))
    return CommandPlan(frees, takes)
