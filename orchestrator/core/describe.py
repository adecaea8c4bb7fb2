"""Human-readable accounts of a decision: each model's cost and a one-line "why"."""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.core.placement import CostBreakdown, Instance, Option, OptionCost, explain


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
