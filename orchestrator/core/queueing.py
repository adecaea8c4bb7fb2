"""The queueing wait of a host: the M/G/1 curve and its piecewise-linear outer approximation.

A host serves its requests one at a time (the agent runs one generation per GPU at a time;
batched throughput enters through the measured inference time). With Poisson arrivals at
utilisation ρ (the fraction of the slot the GPU is busy) and service times of squared
coefficient of variation c², the Pollaczek–Khinchine formula gives the mean number of
requests waiting

    L_q(ρ) = (1 + c²)/2 · g(ρ),   g(ρ) = ρ²/(1 − ρ),

and by Little's law the requests of a slot of τ seconds wait τ·L_q(ρ) seconds in all. The
total does not depend on the scale of the service times, only on ρ and c²: a host of slow
models waits longer per request but serves fewer of them.

The decision model prices the wait through the *linearised* curve

    G(ρ) = max_k [g(b_k) + g'(b_k)·(ρ − b_k)]

over the fixed breakpoints `BREAKPOINTS` (tangents, so G ≤ g: an outer approximation of the
convex epigraph, exact at every breakpoint, finite at ρ = 1). The MILP of `exact` carries
one row per tangent and host; `placement.evaluate` reports the same G, so `exact` is the
optimum of the model that every algorithm is judged by. `mg1_g` is the true curve, reported
beside it (`placement.host_loads`) so the approximation error stays visible.

Everything here is plain Python over floats; `compiled` vectorises the same knots.
"""

from __future__ import annotations

import bisect
import math
from typing import Final

BREAKPOINTS: Final = (
    *(round(0.05 * i, 2) for i in range(19)),  # 0, 0.05, ..., 0.9
    0.92,
    0.94,
    0.96,
    0.98,
    0.99,
)
"""Where the tangents of g touch it: every 0.05 up to 0.9, denser towards 1 where g bends.
Between breakpoints G underestimates g by at most 2.5% below ρ = 0.9."""

DEFAULT_SERVICE_SCV: Final = 1.0
"""c² of service times when a host does not say (`HostSpec.service_scv`): 1, as for
exponential service. The Azure LLM 2023 traces (`../shared/traces/azure_llm_2023`) have
squared coefficients of variation of the generated tokens of 0.60 (conversation) and 4.6
(code); 1 lies between them. Image generation at a fixed step count varies far less (c²
near 0), so an operator serving only images may set it lower."""


def mg1_g(rho: float) -> float:
    """g(ρ) = ρ²/(1 − ρ): the P-K queue length for c² = 1 (inf at ρ ≥ 1)."""
    if rho >= 1.0:
        return math.inf
    rho = max(rho, 0.0)
    return rho * rho / (1.0 - rho)


def _slope(b: float) -> float:
    return 1.0 / (1.0 - b) ** 2 - 1.0


SLOPES: Final = tuple(_slope(b) for b in BREAKPOINTS)
"""g'(b_k), increasing: the slope of G on the k-th segment."""

INTERCEPTS: Final = tuple(mg1_g(b) - _slope(b) * b for b in BREAKPOINTS)
"""g(b_k) − g'(b_k)·b_k: tangent k is INTERCEPTS[k] + SLOPES[k]·ρ."""


def _knots() -> tuple[tuple[float, ...], tuple[float, ...]]:
    xs = [0.0]
    for k in range(len(BREAKPOINTS) - 1):
        # where tangent k meets tangent k + 1
        xs.append((INTERCEPTS[k + 1] - INTERCEPTS[k]) / (SLOPES[k] - SLOPES[k + 1]))
    xs.append(1.0)
    ys = [
        INTERCEPTS[min(k, len(SLOPES) - 1)] + SLOPES[min(k, len(SLOPES) - 1)] * x
        for k, x in enumerate(xs)
    ]
    ys[0] = 0.0
    return tuple(xs), tuple(ys)


KNOTS_X, KNOTS_Y = _knots()
"""G as a piecewise-linear function on [0, 1]: segment k runs from KNOTS_X[k] to
KNOTS_X[k + 1] with slope SLOPES[k] (G(0) = 0, the tangent at 0 being the axis)."""


def linear_g(rho: float) -> float:
    """G(ρ): the maximum of the tangents (ρ clipped to [0, 1]; beyond 1 the last tangent)."""
    if rho <= 0.0:
        return 0.0
    k = min(bisect.bisect_right(KNOTS_X, rho) - 1, len(SLOPES) - 1)
    return INTERCEPTS[k] + SLOPES[k] * rho if k > 0 else 0.0


def linear_g_slope(rho: float) -> float:
    """G'(ρ): the slope of the segment ρ lies on (the right derivative at a knot; 0 below 0)."""
    if rho < 0.0:
        return 0.0
    k = min(bisect.bisect_right(KNOTS_X, rho) - 1, len(SLOPES) - 1)
    return SLOPES[k] if k > 0 else 0.0


def wait_scale(slot_s: float, scv: float) -> float:
    """κ = τ·(1 + c²)/2: the wait of a slot in seconds is κ·G(ρ)."""
    return slot_s * (1.0 + scv) / 2.0


def slot_wait_s(rho: float, slot_s: float, scv: float) -> float:
    """Seconds waited in all by a slot's requests on a host at utilisation ρ (linearised)."""
    return wait_scale(slot_s, scv) * linear_g(rho)


def mg1_slot_wait_s(rho: float, slot_s: float, scv: float) -> float:
    """The same on the true P-K curve (inf at ρ ≥ 1)."""
    return wait_scale(slot_s, scv) * mg1_g(rho)
