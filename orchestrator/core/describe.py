"""Human-readable accounts of a decision: each model's cost and a one-line "why"."""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.core.placement import (
    CostBreakdown,
    Decision,
    Instance,
    Option,
    OptionCost,
    busy_seconds,
    explain,
    holding_cost,
    per_request_cost,
    wait_cost,
)


def _label(o: Option) -> str:
    return "cloud" if o.host is None else f"{o.level} on {o.host}"


def option_cost(
    instance: Instance, assignment: Mapping[str, Option], model_id: str
) -> tuple[CostBreakdown, str]:
    """The chosen option's cost (pool growth charged at the margin) and why it won."""
    rows = explain(instance, model_id, assignment)
    chosen = next(r for r in rows if r.chosen)
    others = sorted((r for r in rows if not r.chosen and r.fits), key=lambda r: r.total)
    rate = instance.rates.get(model_id, 0.0)
    if not others:
        blocked = [r for r in rows if not r.chosen and not r.fits]
        why = f"{_label(chosen.option)}: the only option that fits"
        if blocked:
            why += f" ({blocked[0].reasons[0] if blocked[0].reasons else 'others do not fit'})"
        return chosen.breakdown, why
    runner_up = others[0]
    why = (
        f"{_label(chosen.option)} at {rate:.3g} req/s costs {chosen.total:.3g}, "
        f"next best {_label(runner_up.option)} {runner_up.total:.3g}"
    )
    unfit = [r for r in rows if not r.fits and r.total < chosen.total]
    if unfit:
        why += f"; cheaper {_label(unfit[0].option)} does not fit"
    return chosen.breakdown, why


def rows(instance: Instance, assignment: Mapping[str, Option], model_id: str) -> list[OptionCost]:
    return explain(instance, model_id, assignment)


def split_cost(instance: Instance, decision: Decision, model_id: str) -> CostBreakdown:
    """One model's share of a split decision's cost: its requests on each option, the
    levels it holds, and of each host's pool and wait the part its busy seconds there bring
    (the pool term stays with the host: it is shared)."""
    fractions = decision.split.get(model_id, {})
    n = instance.requests(model_id)
    total = CostBreakdown()
    for o, x in fractions.items():
        total = total + per_request_cost(instance, model_id, o) * (x * n)
    for (m, e), level in decision.levels.items():
        if m == model_id:
            total = total + holding_cost(instance, m, e, level)
    busy = busy_seconds(instance, decision.split)
    for o, x in fractions.items():
        if o.host is None or busy[o.host] <= 0:
            continue
        mine = x * n * instance.perf[(model_id, o.host)].infer_s
        host_wait = wait_cost(instance, instance.host(o.host), busy[o.host])
        total = total + CostBreakdown(wait=host_wait * mine / busy[o.host])
    return total


def split_why(instance: Instance, decision: Decision, model_id: str) -> str:
    """Why a model's traffic is split: the shares, and the best one-option alternative."""
    fractions = sorted(decision.split[model_id].items(), key=lambda i: (-i[1], str(i[0])))
    rate = instance.rates.get(model_id, 0.0)
    parts = ", ".join(f"{100 * x:.0f}% {_label(o)}" for o, x in fractions)
    cost = split_cost(instance, decision, model_id).total
    rows = [r for r in explain(instance, model_id, decision.assignment) if r.fits]
    best = min(rows, key=lambda r: r.total)
    return (
        f"split at {rate:.3g} req/s: {parts}, costs {cost:.3g}; "
        f"the best single option {_label(best.option)} {best.total:.3g}"
    )
