"""When a new decision replaces the levels held: only if it pays for the round trip.

Each plan is myopic: it compares the levels it could hold for the next slot at the rates
estimated now, and moving between levels is priced one way only (a fetch and a resident
load are transition costs; leaving a level is free). With rates that wander around a
boundary between two configurations, a plan can then swing back and forth every slot
(resident in one, pooled in the next, resident again), paying a load each time it comes
back: on the Azure replay (one host) the decision alternated between "conversation model
resident" and "both models pooled" for 25 loads in 60 slots.

`settle` applies the break-even rule of switching under uncertainty (ski rental): keep
the last decision's levels, with the traffic split anew at this slot's rates, and add up
what keeping them costs more than the new decision's levels would, slot after slot, the
switch itself left out (`regret`); switch once that sum reaches what the switch costs *both
ways*: the new decision's own transitions plus those of coming back to the held levels
(reloading the residents it gives up). A decision that is not cheaper than staying resets
the sum. (Until this was fixed, the gain was taken net of the new decision's transitions,
so a move that costs a load, such as making a model resident, paid for its load twice:
once in every slot's gain and once in the sum it had to reach; a gain of 1.5 loads a slot
waited two slots, one under a load never switched, however long it lasted.) A one-slot gain of
2 pays for a 30-s reload only after 15 slots; a gain larger than the switch pays at once.
No new parameter: every cost is the cost model's own. Without held levels, when the held
levels no longer fit the instance (a host left, a capacity shrank) or break a pin, the new
decision stands.
"""

from __future__ import annotations

from collections.abc import Mapping

from .placement import Decision, Instance, Level, evaluate_split, primary_of, violations_split
from .splitting import best_split

__all__ = ["return_cost", "settle"]


def return_cost(
    instance: Instance, held: Mapping[tuple[str, str], str], new: Mapping[tuple[str, str], str]
) -> float:
    """The transition cost of going back from `new`'s levels to `held`: a load for every
    resident level of `held` that `new` does not keep resident (from the RAM tier when
    `new` caches the model there, else from disk)."""
    pr = instance.prices
    total = 0.0
    for (m, e), level in held.items():
        if level != Level.RESIDENT or new.get((m, e)) == Level.RESIDENT:
            continue
        perf = instance.perf[(m, e)]
        load = perf.load_ram_s if new.get((m, e)) == Level.CACHED else perf.load_disk_s
        total += pr.load_weight * load
    return total


def settle(
    instance: Instance,
    new: Decision,
    held: Mapping[tuple[str, str], str] | None,
    regret: float = 0.0,
) -> tuple[Decision, float]:
    """(`new`, 0), or (the `held` levels re-split at this instance's rates, the regret so
    far) while the summed regret stays below the switch there and back (see the module
    docstring)."""
    if not held:
        return new, 0.0
    kept = {k: v for k, v in held.items() if k in instance.perf}
    if kept != dict(held) or dict(new.levels) == kept:
        return new, 0.0
    if any(kept.get(pair) != level for pair, level in instance.pins.items()):
        return new, 0.0
    stay = best_split(instance, kept)
    levels = {**stay.levels, **instance.pins}
    if violations_split(instance, stay.split, levels):
        return new, 0.0
    stay_cost = evaluate_split(instance, stay.split, levels)
    # what keeping costs more than the new levels would, the switch itself left out: it is
    # on the other side, once, with the way back
    gain = stay_cost.total - (new.cost.total - new.cost.transition)
    switch = new.cost.transition + return_cost(instance, kept, new.levels)
    if gain > 0 and regret + gain >= switch:
        return new, 0.0
    regret = regret + gain if gain > 0 else 0.0
    decision = Decision(
        assignment=primary_of(stay.split),
        cost=stay_cost,
        algorithm=new.algorithm,
        seconds=new.seconds,
        optimal=False,
        notes=[
            *new.notes,
            f"kept the last levels: switching would have saved {max(gain, 0.0):.2f} "
            f"({regret:.2f} so far) of the {switch:.2f} a switch there and back costs",
        ],
        split=stay.split,
        levels=levels,
    )
    return decision, regret
