"""Request-rate estimation per model, and the pool-miss probability π per (model, host).

No I/O, and an injected clock, so a trace can be replayed with a fake clock (the Poisson tail
of the surge test is scipy's `pdtrc`).

`RateEstimator` turns arrivals (the gateway's batches, the agents' counters) into a rate
λ_m in requests per second:

- Arrivals accumulate in the current *slot* (default 60 s, the planning slot τ). When a slot
  ends, its observed rate ``count / slot_s`` is blended into an exponentially weighted moving
  average (EWMA) with ``alpha = 1 - 2 ** (-slot_s / half_life_s)``. The half-life means: an
  old rate keeps half its weight after ``half_life_s`` seconds of new slots. If the true rate
  changes from r1 to r2, the gap ``estimate - r2`` halves every ``half_life_s`` (exactly, at
  slot boundaries), and a model that stops being requested decays to half its rate after
  ``half_life_s`` of empty slots.
- *Which* half-life fits a model is measured, not assumed (`half_lives_s`, default 60, 300
  and 1,800 s): one EWMA per candidate is kept for every model, each is scored at every
  slot close by how well it predicted that slot's count (the Poisson log-likelihood of the
  count at the candidate's estimate from before the slot, the scores forgetting with a
  half-life of `score_half_life_slots`, 60 slots), and the model's estimate is the
  best-scored candidate's (the `half_life_s` one on a tie, e.g. a new model). A model
  used in sessions (busy for several slots, then silent) is then followed by a fast EWMA,
  whose estimate falls within minutes of a session's end; a steady one, or one whose
  bursts are single slots at random times (where the long-run average predicts best),
  keeps a slow, less noisy EWMA. (Before, one slow EWMA for every model also kept the
  placement from thrashing; the orchestrator's hysteresis does that now,
  `core/hysteresis.py`.) `half_lives_s = ()` is the single fixed `half_life_s` EWMA.
- A slow EWMA lags a rise, so *surges* are handled separately: when a model's rate in the
  still-open slot (its count divided by the elapsed time, once at least
  ``min(slot_s, 10 s)`` have elapsed, to avoid noise) exceeds ``surge_factor`` times
  its estimate at the start of the slot, and its count is at least
  ``surge_min_count``, and so many arrivals are unlikely at the estimate (a Poisson tail
  below ``surge_alpha``, 1e-4: the open slot is checked at every arrival report, and
  without it noise in the first seconds of a slot of a model at a steady rate passed the
  ratio test several times an hour on the Azure trace, each false surge a plan), the
  estimate jumps to the observed rate at once. The ratio and count tests (not the tail
  test: one check per slot, not one per arrival report) are
  applied to a whole slot when it closes (a surge nobody polled for is still caught); a model
  seen for the first time with enough requests therefore gets its real rate immediately
  instead of ramping up from zero.

`PoolStats` estimates π_{m,e}, the probability that a request for model m on host e finds the
host's swap pool holding another model (so it pays a preload), from the pool hits and misses
the agents report.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from scipy.special import pdtrc

__all__ = ["DEFAULT_SURGE_ALPHA", "PoolStats", "RateEstimator", "poisson_tail"]

SNAPSHOT_VERSION = 2
"""Version 2 added the per-candidate EWMAs and their scores; version 1 snapshots (one EWMA)
still restore, every candidate starting from the one rate."""

DEFAULT_HALF_LIVES_S = (60.0, 300.0, 1800.0)
"""The candidate half-lives: one slot (a burst forgotten within minutes), five slots (the
previous fixed default), half an hour (a steady model's noise averaged out)."""

DEFAULT_SCORE_HALF_LIFE_SLOTS = 60.0
"""The candidates' scores forget with this half-life (an hour of 60-s slots): dozens of
slots of evidence per model, while a change of regime is followed within hours."""

_MIN_PREDICTED = 1e-3
"""A candidate predicting fewer arrivals in a slot is scored as predicting this many (so one
arrival where none was predicted costs log(1e3) ≈ 6.9, not an infinite loss)."""

DEFAULT_SURGE_ALPHA = 1e-4
"""A surge must be this unlikely under the current estimate (Poisson arrivals): checked at
every arrival report, about once a second, so at 1e-4 a model whose rate has not changed
raises a false surge about once in 10,000 checks (for a model at 1 req/s, once in some
three hours of slots) instead of several times an hour with the ratio test alone."""

# Below this the open-slot rate is too noisy to call a surge (also capped by the slot length).
_MIN_SURGE_ELAPSED_S = 10.0


def _check_model_id(model_id: str) -> None:
    if not isinstance(model_id, str) or not model_id:
        raise ValueError("model_id must be a non-empty string")


def _check_host_id(host_id: str) -> None:
    if not isinstance(host_id, str) or not host_id:
        raise ValueError("host_id must be a non-empty string")


def _check_count(name: str, value: int) -> None:
    # bool is an int subclass; a True count is a bug in the caller, not one arrival.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


class RateEstimator:
    """Per-model request rates (req/s): slot counts, an EWMA across slots, fast surges.

    Time is the injected ``clock`` (seconds, e.g. ``time.time``) unless a method is given an
    explicit ``now``/``at``; explicit times are on the same clock. Time only moves forward:
    an arrival stamped before the open slot began counts in the open slot (its own slot is
    closed and cannot be revised).

    Thread-safe: every method takes one internal lock.
    """

    def __init__(
        self,
        slot_s: float = 60.0,
        half_life_s: float = 300.0,
        surge_factor: float = 3.0,
        surge_min_count: int = 5,
        clock: Callable[[], float] = time.time,
        surge_alpha: float = DEFAULT_SURGE_ALPHA,
        half_lives_s: tuple[float, ...] | None = DEFAULT_HALF_LIVES_S,
        score_half_life_slots: float = DEFAULT_SCORE_HALF_LIFE_SLOTS,
    ) -> None:
        if not (slot_s > 0 and math.isfinite(slot_s)):
            raise ValueError("slot_s must be a positive number of seconds")
        if not (half_life_s > 0 and math.isfinite(half_life_s)):
            raise ValueError("half_life_s must be a positive number of seconds")
        if not (surge_factor > 0 and math.isfinite(surge_factor)):
            raise ValueError("surge_factor must be positive")
        if isinstance(surge_min_count, bool) or not isinstance(surge_min_count, int):
            raise ValueError("surge_min_count must be an integer")
        if surge_min_count < 1:
            raise ValueError("surge_min_count must be at least 1")
        self.slot_s = float(slot_s)
        self.half_life_s = float(half_life_s)
        self.surge_factor = float(surge_factor)
        if not 0 < surge_alpha <= 1:
            raise ValueError("surge_alpha must be in (0, 1]")
        self.surge_min_count = surge_min_count
        self.surge_alpha = float(surge_alpha)
        self.clock = clock
        lives = tuple(float(h) for h in (half_lives_s or ()))
        if any(not (h > 0 and math.isfinite(h)) for h in lives):
            raise ValueError("half_lives_s must be positive numbers of seconds")
        if not (score_half_life_slots > 0 and math.isfinite(score_half_life_slots)):
            raise ValueError("score_half_life_slots must be positive")
        # the configured half-life is always a candidate, the first (it wins ties)
        self.half_lives_s = (self.half_life_s, *sorted(set(lives) - {self.half_life_s}))
        self.score_half_life_slots = float(score_half_life_slots)
        self._alphas = [1.0 - 2.0 ** (-self.slot_s / h) for h in self.half_lives_s]
        self._score_keep = 2.0 ** (-1.0 / self.score_half_life_slots)
        self.alpha = self._alphas[0]
        self._lock = threading.Lock()
        self._bank: dict[str, list[float]] = {}  # per model: one EWMA per candidate
        self._score: dict[str, list[float]] = {}  # per model: each candidate's score
        self._slot_start = float(clock())
        self._rate: dict[str, float] = {}  # current estimate (may have jumped in this slot)
        self._base: dict[str, float] = {}  # estimate when the open slot began
        self._counts: dict[str, int] = {}  # arrivals in the open slot
        self._surged: set[str] = set()  # surged in the open slot (reported or pending)
        self._pending: list[str] = []  # surged, not yet returned by roll/check_surges

    # ---------------------------------------------------------------- inputs

    def observe(self, model_id: str, count: int = 1, at: float | None = None) -> None:
        """Record ``count`` arrivals of ``model_id`` at time ``at`` (default: now).

        Slots that ended before ``at`` are closed first, so the arrivals land in the right
        slot. A zero count still makes the model known (rate 0).
        """
        _check_model_id(model_id)
        _check_count("count", count)
        with self._lock:
            when = self._now(at)
            self._advance(when)
            self._counts[model_id] = self._counts.get(model_id, 0) + count
            self._rate.setdefault(model_id, 0.0)
            self._base.setdefault(model_id, 0.0)
            if model_id not in self._bank:
                self._bank[model_id] = [0.0] * len(self.half_lives_s)
                self._score[model_id] = [0.0] * len(self.half_lives_s)

    def roll(self, now: float | None = None) -> list[str]:
        """Close every slot that has ended by ``now`` and update the rates.

        Several slots are closed if time jumped; the empty ones count as zero arrivals (the
        rates decay). Returns the models that surged and were not reported yet, whether the
        surge was seen when a slot closed or in the open slot at ``now`` (sorted).
        """
        with self._lock:
            when = self._now(now)
            self._advance(when)
            self._check_open(when)
            return self._take_pending()

    def check_surges(self, now: float | None = None) -> list[str]:
        """Models that newly surged (sorted), each reported once per slot.

        Cheap enough to call on every arrival batch; closes ended slots first, like `roll`.
        """
        return self.roll(now)

    # ---------------------------------------------------------------- reads

    def rate(self, model_id: str) -> float:
        """The estimated rate of ``model_id`` in requests per second (0 when unknown)."""
        with self._lock:
            return self._rate.get(model_id, 0.0)

    def rates(self) -> dict[str, float]:
        """Estimated rates (req/s) of every known model."""
        with self._lock:
            return dict(self._rate)

    def half_life_of(self, model_id: str) -> float:
        """The candidate half-life (s) whose EWMA gives ``model_id``'s estimate now."""
        with self._lock:
            return self.half_lives_s[self._best(model_id)]

    def counts_in_slot(self) -> dict[str, int]:
        """Arrivals per model in the open slot (models with none are left out)."""
        with self._lock:
            return {m: c for m, c in self._counts.items() if c > 0}

    def models(self) -> set[str]:
        """Every model ever observed (or restored)."""
        with self._lock:
            return set(self._rate)

    @property
    def slot_start(self) -> float:
        """When the open slot began (clock seconds)."""
        with self._lock:
            return self._slot_start

    # ---------------------------------------------------------------- persistence

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable copy of the state (settings, rates, the open slot)."""
        with self._lock:
            return {
                "version": SNAPSHOT_VERSION,
                "slot_s": self.slot_s,
                "half_life_s": self.half_life_s,
                "half_lives_s": list(self.half_lives_s),
                "score_half_life_slots": self.score_half_life_slots,
                "surge_factor": self.surge_factor,
                "surge_min_count": self.surge_min_count,
                "surge_alpha": self.surge_alpha,
                "slot_start": self._slot_start,
                "rates": dict(self._rate),
                "base": dict(self._base),
                "counts": dict(self._counts),
                "surged": sorted(self._surged),
                "pending": list(self._pending),
                "bank": {m: list(v) for m, v in self._bank.items()},
                "scores": {m: list(v) for m, v in self._score.items()},
            }

    @classmethod
    def restore(cls, snapshot: dict[str, Any], **kwargs: Any) -> RateEstimator:
        """Rebuild an estimator from `snapshot`; ``kwargs`` override its settings (and give
        the clock).

        If the clock is still inside the snapshot's open slot, that slot continues with its
        counts. Otherwise the rates are kept as they were and a fresh slot starts now: the
        time the orchestrator was down is *not* counted as silence (nobody was listening),
        and the partial slot's counts are dropped (their duration is unknown).
        """
        version = snapshot.get("version")
        if version not in (1, SNAPSHOT_VERSION):
            raise ValueError(f"unsupported rate snapshot version {version!r}")
        keys = (
            "slot_s",
            "half_life_s",
            "surge_factor",
            "surge_min_count",
            "surge_alpha",
            "score_half_life_slots",
        )
        params: dict[str, Any] = {k: snapshot[k] for k in keys if k in snapshot}
        if "half_lives_s" in snapshot:
            params["half_lives_s"] = tuple(float(h) for h in snapshot["half_lives_s"])
        params.update(kwargs)
        est = cls(**params)
        rates = {str(m): float(r) for m, r in snapshot.get("rates", {}).items()}
        base = {str(m): float(r) for m, r in snapshot.get("base", {}).items()}
        counts = {str(m): int(c) for m, c in snapshot.get("counts", {}).items()}
        slot_start = float(snapshot.get("slot_start", est._slot_start))
        now = est._slot_start  # the constructor read the clock
        with est._lock:
            for m in set(rates) | set(base) | set(counts):
                est._rate[m] = rates.get(m, base.get(m, 0.0))
                est._base[m] = base.get(m, est._rate[m])
            # The candidates carry over when the snapshot had the same ones; otherwise
            # (version 1, other settings) every candidate starts from the base rate.
            same = list(snapshot.get("half_lives_s", [])) == list(est.half_lives_s)
            bank = snapshot.get("bank", {}) if same else {}
            scores = snapshot.get("scores", {}) if same else {}
            n = len(est.half_lives_s)
            for m in est._rate:
                b, sc = bank.get(m), scores.get(m)
                if isinstance(b, list) and isinstance(sc, list) and len(b) == len(sc) == n:
                    est._bank[m] = [float(x) for x in b]
                    est._score[m] = [float(x) for x in sc]
                else:
                    est._bank[m] = [est._base[m]] * n
                    est._score[m] = [0.0] * n
            if slot_start <= now < slot_start + est.slot_s:
                est._slot_start = slot_start
                est._counts = counts
                est._surged = {str(m) for m in snapshot.get("surged", [])}
                est._pending = [str(m) for m in snapshot.get("pending", [])]
            else:
                # Fresh slot at `now`: jumps of the lost slot become the baseline.
                est._base = dict(est._rate)
                est._pending = [str(m) for m in snapshot.get("pending", [])]
        return est

    # ---------------------------------------------------------------- internals

    def _now(self, now: float | None) -> float:
        when = float(self.clock()) if now is None else float(now)
        if not math.isfinite(when):
            raise ValueError(f"time must be finite, got {when!r}")
        return when

    def _advance(self, now: float) -> None:
        """Close the slots that ended by ``now`` (lock held)."""
        end = self._slot_start + self.slot_s
        if now < end:
            return
        self._close_slot()
        self._slot_start = end
        # The remaining whole slots are empty: decay in closed form, whatever the gap.
        empty = int((now - self._slot_start) // self.slot_s)
        if empty > 0:
            self._skip_empty(empty)
            self._base = dict(self._rate)
            self._slot_start += empty * self.slot_s

    def _best(self, m: str) -> int:
        """The index of m's best-scored candidate (the first, `half_life_s`, on a tie)."""
        scores = self._score.get(m)
        if not scores:
            return 0
        return max(range(len(scores)), key=lambda j: (scores[j], -j))

    def _skip_empty(self, n: int) -> None:
        """n whole slots without arrivals (lock held): every candidate decays n times and is
        scored on n zero counts in closed form (log P(0) = −μ; the sum of γ^(n−1−i)·μ·k^i
        over i < n, μ the candidate's expected count, k its keep per slot, γ the score's)."""
        g = self._score_keep
        gn = g**n
        for m, bank in self._bank.items():
            scores = self._score[m]
            for j, a in enumerate(self._alphas):
                k = 1.0 - a
                mu = bank[j] * self.slot_s
                kn = k**n
                geo = n * g ** (n - 1) if abs(g - k) < 1e-12 else (gn - kn) / (g - k)
                scores[j] = gn * scores[j] - mu * geo
                bank[j] *= kn
            self._rate[m] = bank[self._best(m)]

    def _score_slot(self, m: str, count: int) -> None:
        """Score m's candidates on a closed slot's count, then fold it into each (lock held;
        every known model has its candidates: `observe` and `restore` make them)."""
        bank, scores = self._bank[m], self._score[m]
        observed = count / self.slot_s
        log_fact = math.lgamma(count + 1)
        for j, a in enumerate(self._alphas):
            mu = max(bank[j] * self.slot_s, _MIN_PREDICTED)
            scores[j] = self._score_keep * scores[j] + count * math.log(mu) - mu - log_fact
            bank[j] += a * (observed - bank[j])

    def _close_slot(self) -> None:
        """Score and fold the open slot into the EWMAs (lock held)."""
        for m in self._rate:
            count = self._counts.get(m, 0)
            observed = count / self.slot_s
            base = self._base.get(m, 0.0)
            self._score_slot(m, count)
            if self._is_surge(count, observed, base):
                new = observed
                self._bank[m] = [observed] * len(self._alphas)  # every candidate jumps
                if m not in self._surged:
                    self._surged.add(m)
                    self._pending.append(m)
            else:
                # A mid-slot jump the whole slot does not confirm is undone here.
                new = self._bank[m][self._best(m)]
            self._rate[m] = new
        self._base = dict(self._rate)
        self._counts = {}
        self._surged = set()

    def _check_open(self, now: float) -> None:
        """Jump the estimate of models surging in the open slot (lock held)."""
        elapsed = now - self._slot_start
        if elapsed < min(self.slot_s, _MIN_SURGE_ELAPSED_S):
            return
        for m, count in self._counts.items():
            observed = count / elapsed
            if not self._is_surge(count, observed, self._base.get(m, 0.0), elapsed):
                continue
            # Keep following a surge that is still growing, but report it only once.
            self._rate[m] = max(self._rate.get(m, 0.0), observed)
            if m not in self._surged:
                self._surged.add(m)
                self._pending.append(m)

    def _is_surge(
        self, count: int, observed: float, base: float, elapsed: float | None = None
    ) -> bool:
        """`count` arrivals are a surge over the estimate `base`: at least
        `surge_min_count` and above `surge_factor` times it; in the open slot (`elapsed`
        seconds of it, checked at every arrival report) also unlikely at the estimate
        (`poisson_tail(count, base * elapsed) < surge_alpha`). A closed slot is tested once,
        on its whole count, by the first two alone."""
        if count < self.surge_min_count or observed <= self.surge_factor * base:
            return False
        return elapsed is None or poisson_tail(count, base * elapsed) < self.surge_alpha

    def _take_pending(self) -> list[str]:
        out = sorted(set(self._pending))
        self._pending = []
        return out


def poisson_tail(count: int, mean: float) -> float:
    """P(N >= count) for N ~ Poisson(mean): the chance of at least `count` arrivals where
    `mean` are expected (1 for count <= 0; 0 for mean 0 and count >= 1)."""
    if count <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    return float(pdtrc(count - 1, mean))  # P(N > count - 1)


class PoolStats:
    """π_{m,e}: the probability that a request for model m on host e finds the swap pool
    holding another model, estimated from the pool hits and misses agents report.

    Keeps exponentially decayed counts of hits and misses per (model, host); the estimate is
    their ratio ``misses / (hits + misses)``, i.e. an EWMA-smoothed miss ratio weighted by
    traffic. Call `roll` once per slot: it decays the counts so that evidence ``half_life_slots``
    slots old has half the weight of new evidence. Without any evidence the estimate is 1.0
    (the cost model's pessimistic default: every pooled request pays a preload).

    Agents report cumulative counters (`ModelStatus.pool_hits`/`pool_misses`);
    `observe_totals` turns them into increments, `observe` takes increments directly.
    Thread-safe.
    """

    def __init__(self, half_life_slots: float = 5.0) -> None:
        if not (half_life_slots > 0 and math.isfinite(half_life_slots)):
            raise ValueError("half_life_slots must be positive")
        self.half_life_slots = float(half_life_slots)
        self.keep = 2.0 ** (-1.0 / self.half_life_slots)  # weight kept per roll
        self._lock = threading.Lock()
        self._hits: dict[tuple[str, str], float] = {}
        self._misses: dict[tuple[str, str], float] = {}
        self._totals: dict[tuple[str, str], tuple[int, int]] = {}

    def observe(self, model_id: str, host_id: str, hits: int, misses: int) -> None:
        """Add ``hits`` and ``misses`` seen since the previous observation of (model, host)."""
        _check_model_id(model_id)
        _check_host_id(host_id)
        _check_count("hits", hits)
        _check_count("misses", misses)
        if hits == 0 and misses == 0:
            return
        key = (model_id, host_id)
        with self._lock:
            self._hits[key] = self._hits.get(key, 0.0) + hits
            self._misses[key] = self._misses.get(key, 0.0) + misses

    def observe_totals(
        self, model_id: str, host_id: str, hits_total: int, misses_total: int
    ) -> None:
        """Observe an agent's cumulative counters; the increments since the last call count.

        The first report of a (model, host) only sets the baseline (its history is of unknown
        age). A counter that went down means the agent restarted: the new totals count whole.
        """
        _check_model_id(model_id)
        _check_host_id(host_id)
        _check_count("hits_total", hits_total)
        _check_count("misses_total", misses_total)
        key = (model_id, host_id)
        with self._lock:
            last = self._totals.get(key)
            self._totals[key] = (hits_total, misses_total)
        if last is None:
            return
        if hits_total < last[0] or misses_total < last[1]:
            self.observe(model_id, host_id, hits_total, misses_total)
        else:
            self.observe(model_id, host_id, hits_total - last[0], misses_total - last[1])

    def roll(self) -> None:
        """Age the evidence by one slot."""
        with self._lock:
            for key in self._hits:
                self._hits[key] *= self.keep
                self._misses[key] *= self.keep

    def miss_probability(self, model_id: str, host_id: str) -> float:
        """Estimated π for (model, host); 1.0 without evidence."""
        with self._lock:
            return self._ratio((model_id, host_id))

    def all(self) -> dict[tuple[str, str], float]:
        """π for every (model, host) with evidence."""
        with self._lock:
            return {key: self._ratio(key) for key in self._hits}

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable copy of the state."""
        with self._lock:
            entries = []
            for key in sorted(set(self._hits) | set(self._totals)):
                entry: dict[str, Any] = {"model": key[0], "host": key[1]}
                if key in self._hits:
                    entry["hits"] = self._hits[key]
                    entry["misses"] = self._misses[key]
                if key in self._totals:
                    entry["totals"] = list(self._totals[key])
                entries.append(entry)
            return {
                "version": SNAPSHOT_VERSION,
                "half_life_slots": self.half_life_slots,
                "entries": entries,
            }

    @classmethod
    def restore(cls, snapshot: dict[str, Any], **kwargs: Any) -> PoolStats:
        """Rebuild from `snapshot`; ``kwargs`` override its settings."""
        version = snapshot.get("version")
        if version != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported pool-stats snapshot version {version!r}")
        params: dict[str, Any] = {}
        if "half_life_slots" in snapshot:
            params["half_life_slots"] = snapshot["half_life_slots"]
        params.update(kwargs)
        stats = cls(**params)
        for entry in snapshot.get("entries", []):
            key = (str(entry["model"]), str(entry["host"]))
            if "hits" in entry:
                stats._hits[key] = float(entry["hits"])
                stats._misses[key] = float(entry["misses"])
            if "totals" in entry:
                h, m = entry["totals"]
                stats._totals[key] = (int(h), int(m))
        return stats

    def _ratio(self, key: tuple[str, str]) -> float:
        hits = self._hits.get(key, 0.0)
        misses = self._misses.get(key, 0.0)
        total = hits + misses
        # Decayed to nothing (e.g. after a very long idle) is the same as unknown.
        if total <= 1e-12:
            return 1.0
        return misses / total
