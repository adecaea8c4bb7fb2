"""The queueing wait of a host: the M/G/1 curve, the curve of a host that sheds to the cloud,
and their piecewise-linear outer approximations.

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

A host behind the gateway does not queue without bound: the router sends a request past a
host whose queue would take longer than the cloud. So the decision prices each host's wait on
`shed_g(ρ, d)`, the curve of an M/M/1 queue whose arrivals join only while the work ahead of
them is at most d mean service times (d: the cloud's head start over the host's models, set
per host by `placement`; `quantise_threshold` rounds it so curves are shared), linearised the
same way (`wait_curve(d)`); `offered_factor` is how much more traffic the router must send
such a host for it to serve ρ. Without shedding (d = None) the curve is the M/G/1 one above.

Everything here is plain Python over floats; `compiled` vectorises the same knots.
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass
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
"""g'(b_k), increasing: the slope of the M/G/1 G on the k-th segment."""

INTERCEPTS: Final = tuple(mg1_g(b) - _slope(b) * b for b in BREAKPOINTS)
"""g(b_k) − g'(b_k)·b_k: tangent k of the M/G/1 G is INTERCEPTS[k] + SLOPES[k]·ρ."""


# ---------------------------------------------------------------------------------------
# Shedding: the gateway sends a request past a host whose queue would outlast the cloud
# ---------------------------------------------------------------------------------------

MAX_THRESHOLD: Final = 50.0
"""Shedding thresholds beyond this many mean service times are treated as none (the
bounded curve is then within 2% of the M/G/1 one below ρ = 0.9)."""

_A_MAX_EXP: Final = 600.0


def _shed_state(a: float, d: float) -> tuple[float, float]:
    """(served utilisation, g) of an M/M/1 queue offered load `a` whose arrivals join only
    while the work ahead of them is at most `d` mean service times (see `shed_g`)."""
    b = 1.0 - a
    bd = b * d
    e = math.exp(-bd)
    grow = a * d if abs(bd) < 1e-12 else a * -math.expm1(-bd) / b
    j = d * d / 2.0 - b * d**3 / 3.0 if abs(bd) < 0.0001 else (1.0 - e * (1.0 + bd)) / (b * b)
    p0 = 1.0 / (1.0 + grow + a * e)
    return 1.0 - p0, a * a * p0 * j


def _offered_for(rho: float, d: float) -> float:
    """The offered load whose served utilisation is ρ at threshold d (bisection; the
    served utilisation grows with the offered load towards 1)."""
    d = max(d, 1e-6)
    hi = 1.0
    top = 1.0 + _A_MAX_EXP / d
    while _shed_state(hi, d)[0] < rho and hi < top:
        hi = min(hi * 2.0, top)
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if _shed_state(mid, d)[0] < rho:
            lo = mid
        else:
            hi = mid
    return hi


def shed_g(rho: float, d: float) -> float:
    """g_d(ρ): the total wait of a slot in units of τ (c² = 1) at *served* utilisation ρ
    when arrivals that would wait more than d mean service times go elsewhere.

    The work ahead of an arrival (the virtual waiting time V) of an M/M/1 queue with rate
    1 whose arrivals join only when V ≤ d has, by level crossing, an atom p0 at 0, density
    a·p0·e^{−(1−a)v} on (0, d] and a·p0·e^{−(1−a)d}·e^{−(v−d)} above d, so
    p0 = 1/(1 + a(1 − e^{−(1−a)d})/(1 − a) + a·e^{−(1−a)d}); the served utilisation is
    1 − p0, and the slot's joined requests wait τ·a·E[V; V ≤ d] = τ·a²·p0·∫₀^d v·e^{−(1−a)v} dv
    in all. As d → ∞ this is the M/G/1 g(ρ) = ρ²/(1 − ρ); for finite d it stays below d
    as ρ → 1 (a host that sheds never queues without bound)."""
    if rho <= 0.0:
        return 0.0
    rho = min(rho, 1.0 - 1e-12)
    return _shed_state(_offered_for(rho, d), d)[1]


def offered_factor(rho: float, d: float | None) -> float:
    """Offered load / served utilisation at a host that sheds at threshold d (1 without
    shedding): how much more traffic the router must send the host for it to *serve* ρ,
    the arrivals it sheds going to the cloud."""
    if d is None or rho <= 0.0:
        return 1.0
    rho = min(rho, 1.0 - 1e-9)
    return _offered_for(rho, d) / rho


@dataclass(frozen=True)
class WaitCurve:
    """G(ρ) of one host: the maximum of the tangents of its true curve (`g`, M/G/1 or
    shedding at `threshold` mean service times) at `BREAKPOINTS`; segment k runs from
    `knots_x[k]` to `knots_x[k + 1]` with slope `slopes[k]` (G(0) = 0, the tangent at 0
    being the axis)."""

    threshold: float | None
    slopes: tuple[float, ...]
    intercepts: tuple[float, ...]
    knots_x: tuple[float, ...]

    def g(self, rho: float) -> float:
        """The true curve this one approximates (inf at ρ ≥ 1 without shedding)."""
        return mg1_g(rho) if self.threshold is None else shed_g(rho, self.threshold)

    def linear(self, rho: float) -> float:
        """G(ρ) (ρ clipped at 0; beyond the last knot, the last tangent)."""
        if rho <= 0.0:
            return 0.0
        k = min(bisect.bisect_right(self.knots_x, rho) - 1, len(self.slopes) - 1)
        return self.intercepts[k] + self.slopes[k] * rho if k > 0 else 0.0

    def slope(self, rho: float) -> float:
        """G'(ρ): the slope of the segment ρ lies on (the right derivative at a knot)."""
        if rho < 0.0:
            return 0.0
        k = min(bisect.bisect_right(self.knots_x, rho) - 1, len(self.slopes) - 1)
        return self.slopes[k] if k > 0 else 0.0


def _build(threshold: float | None) -> WaitCurve:
    if threshold is None:
        slopes, intercepts = SLOPES, INTERCEPTS
    else:
        h = 1e-5
        sl, ic = [0.0], [0.0]
        for b in BREAKPOINTS[1:]:
            s = (shed_g(b + h, threshold) - shed_g(b - h, threshold)) / (2 * h)
            s = max(s, sl[-1] + 1e-9)  # convex: slopes increase (guards rounding)
            sl.append(s)
            ic.append(shed_g(b, threshold) - s * b)
        slopes, intercepts = tuple(sl), tuple(ic)
    xs = [0.0]
    for k in range(len(slopes) - 1):  # where tangent k meets tangent k + 1
        xs.append((intercepts[k + 1] - intercepts[k]) / (slopes[k] - slopes[k + 1]))
    xs.append(1.0)
    return WaitCurve(threshold, slopes, intercepts, tuple(xs))


def quantise_threshold(threshold: float | None) -> float | None:
    """Thresholds rounded to two significant digits (curves are cached by them), at least
    0.01; None (no shedding) beyond `MAX_THRESHOLD`."""
    if threshold is None or not math.isfinite(threshold) or threshold >= MAX_THRESHOLD:
        return None
    return max(0.01, float(f"{threshold:.2g}"))


@functools.lru_cache(maxsize=512)
def _cached(threshold: float | None) -> WaitCurve:
    return _build(threshold)


def wait_curve(threshold: float | None = None) -> WaitCurve:
    """The linearised curve for a shedding threshold (mean service times; None: none)."""
    return _cached(quantise_threshold(threshold))


MG1: Final = wait_curve(None)
"""The M/G/1 G (no shedding)."""


def linear_g(rho: float) -> float:
    """The M/G/1 G(ρ): the maximum of the tangents (beyond 1 the last tangent)."""
    return MG1.linear(rho)


def wait_scale(slot_s: float, scv: float) -> float:
    """κ = τ·(1 + c²)/2: the wait of a slot in seconds is κ·G(ρ)."""
    return slot_s * (1.0 + scv) / 2.0


def slot_wait_s(rho: float, slot_s: float, scv: float) -> float:
    """Seconds waited in all by a slot's requests on a host at utilisation ρ (linearised)."""
    return wait_scale(slot_s, scv) * linear_g(rho)


def mg1_slot_wait_s(rho: float, slot_s: float, scv: float) -> float:
    """The same on the true P-K curve (inf at ρ ≥ 1)."""
    return wait_scale(slot_s, scv) * mg1_g(rho)
