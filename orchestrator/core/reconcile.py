"""Turning a decision into commands: the difference between decided and actual levels, as
`PUT level` commands ordered so that no host exceeds a capacity mid-way (everything that
frees memory first, then what takes it, smaller steps before larger ones)."""

from __future__ import annotations

from dataclasses import dataclass

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


def plan_commands(
    target: dict[tuple[str, str], str], actual: dict[tuple[str, str], str]
) -> list[Command]:
    """Commands that move `actual` ((model, host) -> level, for models on live hosts) to
    `target` ((model, host) -> level; pairs not in it should be `stored`)."""
    cmds = [
        Command(host, model, target.get((model, host), "stored"), level)
        for (model, host), level in sorted(actual.items())
        if level in RANK and target.get((model, host), "stored") != level
    ]
    frees = [c for c in cmds if c.frees]
    takes = sorted((c for c in cmds if not c.frees), key=lambda c: (RANK[c.level], c.host, c.model))
    return frees + takes
