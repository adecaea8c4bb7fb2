"""The model manager: levels, transitions, the shared swap pool and admission.

Pure Python on one asyncio event loop. All bookkeeping happens on the loop; the slow work
(reading weights, loading to the device, freeing it) runs in worker threads through the
`ModelLoader` port, so the loop keeps serving while a model moves.

Rules it keeps (DESIGN.md, "Model levels"):
- levels `stored -> cached -> resident`; a stored or cached model that gets a request is
  loaded into the single shared *swap pool*, replacing the previous pooled model once that
  model's in-flight requests have drained;
- a transition never interrupts a request in flight: going down waits for in-flight requests
  to finish (new requests for that model wait for the transition), then frees the memory;
- the pool is scheduled by `pool_schedule.next_model`: the waiting requests of the model the
  pool holds go before a switch, then the highest priority class, oldest first, and any
  request that has waited `pool_max_wait_s` goes first whatever the pool holds (the
  starvation bound; 0 is first-in-first-out);
- device memory: sum of resident models + the pooled model <= the device budget, each
  text model counted with its running batch's KV cache when text batching is on (the
  loader's `batch_cache_bytes`: up to `EDGE_BATCH_MAX_TOKENS` tokens, allocated when its
  batch starts); host RAM: sum of cached copies <= the cache budget;
- a failed load marks that model `failed` with the reason; other models keep serving; setting
  a level again retries;
- level `absent` (issue 15): setting a level on a model the host lacks, when a model
  repository is configured (`ModelFetcher`) and offers it, fetches it first (state
  `fetching`, progress in the status), then carries on to the level; a failed fetch marks the
  model `failed` and leaves it absent; setting a level again resumes;
- disk eviction: a fetch short of disk space deletes *evictable* models, least recently used
  first: fetched by the agent (or any, with `evict_user_models`), not placed by the last
  command (`placed`: last set to a level, not to `absent`), not pinned, not in use.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from edge_agent.core.batching import BatchLimits
from edge_agent.core.ports import HostCopy, LoadedModel, LoadReport, ModelFetcher, ModelLoader
from edge_agent.errors import (
    AgentError,
    DoesNotFit,
    FetchFailed,
    ModelUnavailable,
    Overloaded,
    TransitionConflict,
    UnknownModel,
    WrongModelKind,
)
from genedge.contract import (
    TARGET_LEVELS,
    FetchProgress,
    Level,
    ModelKind,
    ModelManifest,
    ModelOrigin,
    ModelProfile,
    ModelState,
    ModelStatus,
    Priority,
    ProfileStatus,
    TargetLevel,
    level_rank,
    merge_pins,
)
from genedge.pool_schedule import Waiter, next_model

log = logging.getLogger("edge_agent.manager")


PROFILER_ID = "__profiler__"


class Observer(Protocol):
    """Receives events for metrics; every method must be cheap and never raise."""

    def loaded(self, model_id: str, report: LoadReport) -> None: ...
    def load_failed(self, model_id: str, tier: str) -> None: ...
    def evicted(self, model_id: str, seconds: float) -> None: ...
    def pool_switched(self, old: str | None, new: str) -> None: ...
    def pool_waited(self, model_id: str, seconds: float) -> None: ...
    def depth(self, model_id: str, queued: int, in_flight: int) -> None: ...
    def device_used(self, used_bytes: int) -> None: ...
    def fetch_progress(self, model_id: str, progress: FetchProgress) -> None: ...
    def fetched(self, model_id: str, transferred_bytes: int, seconds: float) -> None: ...
    def fetch_failed(self, model_id: str) -> None: ...
    def disk_evicted(self, model_id: str, nbytes: int) -> None: ...


class NullObserver:
    def loaded(self, model_id: str, report: LoadReport) -> None:
        pass

    def load_failed(self, model_id: str, tier: str) -> None:
        pass

    def evicted(self, model_id: str, seconds: float) -> None:
        pass

    def pool_switched(self, old: str | None, new: str) -> None:
        pass

    def pool_waited(self, model_id: str, seconds: float) -> None:
        pass

    def depth(self, model_id: str, queued: int, in_flight: int) -> None:
        pass

    def device_used(self, used_bytes: int) -> None:
        pass

    def fetch_progress(self, model_id: str, progress: FetchProgress) -> None:
        pass

    def fetched(self, model_id: str, transferred_bytes: int, seconds: float) -> None:
        pass

    def fetch_failed(self, model_id: str) -> None:
        pass

    def disk_evicted(self, model_id: str, nbytes: int) -> None:
        pass


@dataclass
class Lease:
    """What a request holds while it runs: the loaded model, and what it paid to get it."""

    model: LoadedModel
    model_id: str
    served_from: Level  # RESIDENT or POOLED
    preload_s: float = 0.0
    preload_tier: str | None = None


@dataclass
class _Entry:
    manifest: ModelManifest
    sem: asyncio.Semaphore
    level: Level = Level.STORED
    target: Level = Level.STORED
    state: ModelState = ModelState.READY
    transitioning: bool = False
    progress: float = 1.0
    detail: str = ""
    failed_reason: str | None = None
    loaded: LoadedModel | None = None
    device_bytes: int = 0  # weights plus the batch cache, while loaded
    batch_cache: tuple[str, int] | None = None  # (manifest path, bytes) once sized
    host_copy: HostCopy | None = None
    in_flight: int = 0
    queued: int = 0
    pool_hits: int = 0
    pool_misses: int = 0
    pool_wait_s: float = 0.0  # seconds its requests waited for the swap pool, in all
    pool_max_wait_s: float = 0.0  # the longest of those waits
    priority: Priority = Priority.NORMAL
    requests_total: int = 0
    last_used: float | None = None
    profile: ModelProfile | None = None
    profile_status: ProfileStatus = ProfileStatus.PENDING
    profile_progress: float = 0.0
    profile_detail: str = ""
    placed: bool = False  # the last level command set a level (not `absent`)
    pinned_level: TargetLevel | None = None
    fetch: FetchProgress | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def id(self) -> str:
        return self.manifest.id

    def expected_weight_bytes(self) -> int:
        """Device memory a load's weights take: measured when profiled, else the checkpoint
        size (the batch cache comes on top: `ModelManager._need`)."""
        if self.profile is not None:
            return self.profile.resident_bytes
        return self.manifest.storage_bytes


@dataclass
class _Pool:
    holder: _Entry | None = None
    busy: bool = False  # a switch (or the profiler) owns the pool right now
    bytes: int = 0


class ModelManager:
    def __init__(
        self,
        manifests: list[ModelManifest],
        loader: ModelLoader,
        *,
        device_budget_bytes: int,
        cache_budget_bytes: int,
        max_concurrency: int = 1,
        max_queue: int = 8,
        retry_after_s: float = 1.0,
        drain_timeout_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
        fetcher: ModelFetcher | None = None,
        evict_user_models: bool = False,
        pool_max_wait_s: float = 30.0,
        batch_limits: BatchLimits | None = None,
    ) -> None:
        """`batch_limits`: how the agent batches requests, so each text model's batch cache
        is counted in the device budget; None counts weights only."""
        self.loader = loader
        self.batch_limits = batch_limits
        self.fetcher = fetcher
        self.evict_user_models = evict_user_models
        # Awaited once a fetched model is in place, before it moves on to its level (the
        # runtime profiles it there, as it does the store's models at start).
        self.after_fetch: Callable[[str], Awaitable[None]] | None = None
        self._pins: dict[str, TargetLevel] = {}
        self._priorities: dict[str, Priority] = {}
        self._pin_sources: dict[str, dict[str, TargetLevel]] = {}
        self.device_budget_bytes = device_budget_bytes
        self.cache_budget_bytes = cache_budget_bytes
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.drain_timeout_s = drain_timeout_s
        self.clock = clock
        self.observer: Observer = observer or NullObserver()
        self._entries: dict[str, _Entry] = {
            m.id: _Entry(manifest=m, sem=asyncio.Semaphore(max_concurrency)) for m in manifests
        }
        self._pool = _Pool()
        self.pool_max_wait_s = pool_max_wait_s
        self._tickets = itertools.count()
        self._waiters: dict[int, Waiter] = {}  # the pool's queue, by ticket (arrival order)
        self._now = clock()  # when the waiters last re-checked their turn (see `_changed`)
        self._changed_event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ bookkeeping

    def _changed(self) -> None:
        """Wake every waiter; each re-checks its own condition. The pool's turn is judged
        at one instant per wake-up (`_now`), so all waiters agree whose turn it is."""
        self._now = self.clock()
        self._changed_event.set()
        self._changed_event = asyncio.Event()
        self.observer.device_used(self.device_used_bytes())

    async def _wait_until(self, cond: Callable[[], bool], timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not cond():
            event = self._changed_event
            if deadline is None:
                await event.wait()
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                if not cond():
                    raise

    def _entry(self, model_id: str) -> _Entry:
        try:
            return self._entries[model_id]
        except KeyError:
            raise UnknownModel(f"model {model_id!r} is not on this host", model=model_id) from None

    def model_ids(self) -> list[str]:
        return list(self._entries)

    def held_manifests(self) -> list[ModelManifest]:
        """Manifests of the models whose files are on this host (not absent, not being
        fetched): what the agent offers as a model repository."""
        return [e.manifest for e in self._entries.values() if e.level != Level.ABSENT]

    def manifest(self, model_id: str) -> ModelManifest:
        return self._entry(model_id).manifest

    def resident_bytes(self) -> int:
        return sum(e.device_bytes for e in self._entries.values() if e.level == Level.RESIDENT)

    def device_used_bytes(self) -> int:
        return self.resident_bytes() + self._pool.bytes

    def batch_cache_bytes(self, model_id: str) -> int:
        """Device bytes `model_id`'s running batch reserves next to its weights."""
        return self._batch_cache(self._entry(model_id))

    def _batch_cache(self, e: _Entry) -> int:
        """The loader's `batch_cache_bytes`, sized once per folder (a fetched model gets
        its folder, so it is sized again); 0 without batch limits or a folder, or when
        the loader cannot tell (logged: the budget then counts the weights only)."""
        limits, path = self.batch_limits, e.manifest.path
        if limits is None or not path or e.level == Level.ABSENT:
            return 0
        if e.batch_cache is None or e.batch_cache[0] != path:
            try:
                size = max(0, int(self.loader.batch_cache_bytes(e.manifest, limits)))
            except Exception:
                log.warning("cannot size the batch cache of %s", e.id, exc_info=True)
                size = 0
            e.batch_cache = (path, size)
        return e.batch_cache[1]

    def _need(self, e: _Entry) -> int:
        """Device bytes loading `e` takes: its weights and its batch cache."""
        return e.expected_weight_bytes() + self._batch_cache(e)

    def _need_text(self, e: _Entry) -> str:
        """`N bytes`, saying how much of it is the batch cache when there is one."""
        need, cache, limits = self._need(e), self._batch_cache(e), self.batch_limits
        if not cache or limits is None:
            return f"{need} bytes"
        return (
            f"{need} bytes ({e.expected_weight_bytes()} of weights and {cache} of KV cache "
            f"for its batch of up to {limits.max_tokens_in_flight} tokens, "
            f"EDGE_BATCH_MAX_TOKENS)"
        )

    def cache_used_bytes(self) -> int:
        return sum(e.host_copy.nbytes for e in self._entries.values() if e.host_copy is not None)

    @property
    def pool_model(self) -> str | None:
        return self._pool.holder.id if self._pool.holder else None

    @property
    def pool_bytes(self) -> int:
        return self._pool.bytes

    def profile(self, model_id: str) -> ModelProfile | None:
        """The model's measured profile on this host, if any (what cost estimates scale)."""
        return self._entry(model_id).profile

    def set_profile(
        self,
        model_id: str,
        profile: ModelProfile | None,
        status: ProfileStatus,
        progress: float | None = None,
        detail: str | None = None,
    ) -> None:
        e = self._entry(model_id)
        e.profile = profile if profile is not None else e.profile
        e.profile_status = status
        if progress is not None:
            e.profile_progress = progress
        if detail is not None:
            e.profile_detail = detail

    def status(self, model_id: str) -> ModelStatus:
        e = self._entry(model_id)
        level = Level.POOLED if self._pool.holder is e else e.level
        return ModelStatus(
            id=e.id,
            kind=e.manifest.kind,
            format=e.manifest.format,
            architecture=e.manifest.architecture,
            level=level,
            state=e.state,
            target_level=e.target,
            progress=e.progress,
            progress_detail=e.detail,
            failed_reason=e.failed_reason,
            in_flight=e.in_flight,
            queued=e.queued,
            memory_bytes=e.device_bytes if e.loaded is not None else 0,
            batch_cache_bytes=self._batch_cache(e),
            host_ram_bytes=e.host_copy.nbytes if e.host_copy is not None else 0,
            storage_bytes=e.manifest.storage_bytes,
            pool_hits=e.pool_hits,
            pool_misses=e.pool_misses,
            pool_wait_s=e.pool_wait_s,
            pool_max_wait_s=e.pool_max_wait_s,
            priority=e.priority,
            requests_total=e.requests_total,
            last_used=e.last_used,
            profile_status=e.profile_status,
            profile_progress=e.profile_progress,
            profile_detail=e.profile_detail,
            profile=e.profile,
            origin=e.manifest.origin,
            placed=e.placed,
            evictable=self._evictable(e),
            pinned_level=e.pinned_level,
            fetch=e.fetch,
        )

    def statuses(self) -> list[ModelStatus]:
        return [self.status(i) for i in self._entries]

    def _set_state(self, e: _Entry, state: ModelState, progress: float, detail: str) -> None:
        e.state, e.progress, e.detail = state, progress, detail
        self._changed()

    # ------------------------------------------------------------------ requests

    @asynccontextmanager
    async def lease(self, model_id: str, kind: ModelKind) -> AsyncIterator[Lease]:
        """Hold `model_id` on the device for one request.

        Raises `Overloaded` when the model already has `max_concurrency + max_queue`
        requests, `ModelUnavailable` when it failed to load or cannot fit.
        """
        e = self._entry(model_id)
        if e.manifest.kind != kind:
            raise WrongModelKind(
                f"model {model_id!r} is a {e.manifest.kind.value} model", model=model_id
            )
        if e.queued + e.in_flight >= self.max_concurrency + self.max_queue:
            raise Overloaded(
                f"model {model_id!r} has {e.in_flight} running and {e.queued} queued requests",
                model=model_id,
                retry_after_s=self.retry_after_s,
            )
        e.queued += 1
        e.requests_total += 1
        self.observer.depth(e.id, e.queued, e.in_flight)
        got_sem = False
        try:
            await e.sem.acquire()
            got_sem = True
            lease = await self._make_ready(e)
        except BaseException:
            if got_sem:
                e.sem.release()
            raise
        finally:
            e.queued -= 1
            self.observer.depth(e.id, e.queued, e.in_flight)
        try:
            yield lease
        finally:
            e.in_flight -= 1
            e.last_used = self.clock()
            e.sem.release()
            self.observer.depth(e.id, e.queued, e.in_flight)
            self._changed()

    def _queue_for_pool(self, model_id: str, priority: str) -> int:
        ticket = next(self._tickets)
        self._waiters[ticket] = Waiter(ticket, model_id, priority, self.clock())
        self._changed()
        return ticket

    def _pool_turn(self, model_id: str) -> bool:
        """Whether `model_id`'s waiting requests are the ones to get the pool next."""
        holder = self._pool.holder
        chosen = next_model(
            self._waiters.values(),
            holder.id if holder is not None else None,
            self._now,
            self.pool_max_wait_s,
            holder_queued=holder.queued if holder is not None else 0,
        )
        return chosen == model_id

    def _left_pool_queue(self, e: _Entry, ticket: int) -> None:
        waiter = self._waiters.pop(ticket, None)
        if waiter is not None:
            waited = max(0.0, self.clock() - waiter.since)
            e.pool_wait_s += waited
            e.pool_max_wait_s = max(e.pool_max_wait_s, waited)
            self.observer.pool_waited(e.id, waited)
        self._changed()

    async def _make_ready(self, e: _Entry) -> Lease:
        ticket: int | None = None
        paid_s, paid_tier = 0.0, None
        try:
            while True:
                if e.state == ModelState.FAILED and not e.transitioning:
                    raise ModelUnavailable(f"model {e.id!r} failed: {e.failed_reason}", model=e.id)
                if e.level == Level.ABSENT:  # a fetch takes minutes: refuse, do not queue
                    what = "being fetched" if e.transitioning else "not on this host"
                    raise ModelUnavailable(f"model {e.id!r} is {what}", model=e.id)
                if not e.transitioning:
                    if e.level == Level.RESIDENT and e.loaded is not None:
                        e.in_flight += 1
                        return Lease(e.loaded, e.id, Level.RESIDENT)
                    if ticket is None:
                        ticket = self._queue_for_pool(e.id, e.priority)
                    pool = self._pool
                    if not pool.busy and self._pool_turn(e.id):
                        if pool.holder is e and e.loaded is not None:
                            e.in_flight += 1
                            if paid_tier is None:
                                e.pool_hits += 1
                            return Lease(e.loaded, e.id, Level.POOLED, paid_s, paid_tier)
                        if pool.holder is None or pool.holder.in_flight == 0:
                            paid_tier = "ram" if e.host_copy is not None else "disk"
                            paid_s = await self._switch_pool(e)
                            e.pool_misses += 1
                            continue
                await self._changed_event.wait()
        finally:
            if ticket is not None:
                self._left_pool_queue(e, ticket)

    async def _evict_pool(self) -> None:
        """Free the pool (caller owns it: `pool.busy`, and the holder has no requests)."""
        old = self._pool.holder
        if old is None or old.loaded is None:
            self._pool.holder, self._pool.bytes = None, 0
            return
        loaded = old.loaded
        t0 = time.perf_counter()
        await asyncio.to_thread(loaded.close)
        old.loaded, old.device_bytes = None, 0
        self._pool.holder, self._pool.bytes = None, 0
        self.observer.evicted(old.id, time.perf_counter() - t0)
        log.info("pool: evicted %s", old.id)
        self._changed()

    async def _switch_pool(self, e: _Entry) -> float:
        """Put `e` in the pool; returns the preload seconds it paid."""
        pool = self._pool
        pool.busy = True
        old_id = pool.holder.id if pool.holder else None
        self._changed()
        try:
            need = self._need(e)
            room = self.device_budget_bytes - self.resident_bytes()
            if need > room:  # checked before evicting: a refusal costs the pool nothing
                raise ModelUnavailable(
                    f"model {e.id!r} needs {self._need_text(e)} of device memory, the swap "
                    f"pool has {room} next to the resident models",
                    model=e.id,
                )
            await self._evict_pool()
            report = await self._load(e, "loading into the swap pool")
            pool.holder, pool.bytes = e, e.device_bytes
            self.observer.pool_switched(old_id, e.id)
            log.info("pool: %s -> %s (%.3f s from %s)", old_id, e.id, report.seconds, report.tier)
            return report.seconds
        finally:
            pool.busy = False
            self._changed()

    async def _load(self, e: _Entry, what: str) -> LoadReport:
        """Load `e` onto the device (from its host copy when cached). Marks failures."""
        tier = "ram" if e.host_copy is not None else "disk"
        self._set_state(e, ModelState.LOADING, 0.1, f"{what} from {tier}")
        try:
            loaded, report = await asyncio.to_thread(self.loader.load, e.manifest, e.host_copy)
        except Exception as exc:  # any load failure: OOM, corrupt file, bad config
            self._fail(e, f"load from {tier} failed: {exc}")
            self.observer.load_failed(e.id, tier)
            raise ModelUnavailable(f"model {e.id!r} failed to load: {exc}", model=e.id) from exc
        e.loaded, e.device_bytes = loaded, loaded.memory_bytes() + self._batch_cache(e)
        self.observer.loaded(e.id, report)
        self._set_state(
            e,
            ModelState.READY,
            1.0,
            f"loaded by {report.loader} from {report.tier} in {report.seconds:.3f} s",
        )
        return report

    def _fail(self, e: _Entry, reason: str) -> None:
        log.warning("model %s failed: %s", e.id, reason)
        e.failed_reason = reason
        self._set_state(e, ModelState.FAILED, 1.0, reason)

    @asynccontextmanager
    async def device_exclusive(self, reason: str = PROFILER_ID) -> AsyncIterator[None]:
        """Own the swap pool region (e.g. to profile a model), in turn with requests."""
        ticket = self._queue_for_pool(reason, "normal")
        pool = self._pool
        owned = False
        try:
            await self._wait_until(
                lambda: (
                    not pool.busy
                    and self._pool_turn(reason)
                    and (pool.holder is None or pool.holder.in_flight == 0)
                )
            )
            pool.busy = owned = True
            self._waiters.pop(ticket, None)
            await self._evict_pool()
            yield
        finally:
            self._waiters.pop(ticket, None)
            if owned:
                pool.busy = False
            self._changed()

    # ------------------------------------------------------------------ transitions

    def check_fits(self, model_id: str, level: Level) -> None:
        """Fast refusal of a level that cannot fit whatever gets evicted (409)."""
        e = self._entry(model_id)
        if level == Level.RESIDENT and e.level != Level.RESIDENT:
            others = self.resident_bytes()
            if others + self._need(e) > self.device_budget_bytes:
                raise DoesNotFit(
                    f"{model_id!r} needs {self._need_text(e)}; resident models hold "
                    f"{others} of the {self.device_budget_bytes}-byte device budget",
                    model=model_id,
                )
        if level == Level.CACHED and e.host_copy is None:
            used = self.cache_used_bytes()
            if used + e.manifest.storage_bytes > self.cache_budget_bytes:
                raise DoesNotFit(
                    f"{model_id!r} needs {e.manifest.storage_bytes} bytes of host RAM; cached "
                    f"models hold {used} of the {self.cache_budget_bytes}-byte cache budget",
                    model=model_id,
                )

    async def set_level(self, model_id: str, level: Level, *, wait: bool = False) -> ModelStatus:
        """Move a model towards `level` (stored, cached or resident). Idempotent: asking
        for the level it has, or is already moving to, changes nothing.

        A model the host lacks is fetched first when the repository offers it (404 when
        there is none or it does not). `absent` marks the model not placed here: it goes
        down to stored and becomes evictable (a fetch under way is cancelled). A level below
        the operator's pin on the model is refused (409)."""
        self._check_pin(model_id, level)
        if level == Level.ABSENT:
            return await self._unplace(model_id, wait=wait)
        if level not in TARGET_LEVELS:
            raise TransitionConflict(f"{level.value} is not a level one can set")
        e = self._entries.get(model_id) or await self._absent_entry(model_id)
        e.placed = True
        return await self._move(e, level, wait=wait)

    def _check_pin(self, model_id: str, level: Level) -> None:
        pinned = self._pins.get(model_id)
        if pinned is None:
            return
        if level_rank(level) < level_rank(pinned):  # absent ranks below every level
            raise TransitionConflict(
                f"model {model_id!r} is pinned at {pinned} on this host by the operator; "
                f"unpin it before setting {level.value}",
                model=model_id,
            )

    def set_priorities(self, priorities: Mapping[str, Priority]) -> None:
        """The operator's priority classes (model -> low/normal/high), complete: a model not
        listed is `normal`. The swap pool serves a higher class first (`pool_schedule`)."""
        self._priorities = {m: Priority(p) for m, p in priorities.items()}
        for e in self._entries.values():
            e.priority = self._priorities.get(e.id, Priority.NORMAL)
        self._changed()

    async def _absent_entry(self, model_id: str) -> _Entry:
        """An entry (level `absent`) for a model the repository offers, or UnknownModel."""
        if self.fetcher is None:
            raise UnknownModel(f"model {model_id!r} is not on this host", model=model_id)
        remote = await self.fetcher.describe(model_id)
        if remote is None:
            raise UnknownModel(
                f"model {model_id!r} is not on this host, and the model repository "
                f"{self.fetcher.source} does not offer it",
                model=model_id,
            )
        e = self._entries.get(model_id)  # another command may have made it meanwhile
        if e is None:
            e = _Entry(
                manifest=remote,
                sem=asyncio.Semaphore(self.max_concurrency),
                level=Level.ABSENT,
                target=Level.ABSENT,
                progress=0.0,
                detail="absent",
                profile_status=ProfileStatus.SKIPPED,
                pinned_level=self._pins.get(model_id),
                priority=self._priorities.get(model_id, Priority.NORMAL),
            )
            self._entries[model_id] = e
            self._changed()
        return e

    async def _unplace(self, model_id: str, *, wait: bool) -> ModelStatus:
        e = self._entry(model_id)
        e.placed = False
        if e.level != Level.ABSENT:
            return await self._move(e, Level.STORED, wait=wait)
        # Never held: cancel the fetch (its partial files stay for a later resume).
        for t in list(e.tasks):
            t.cancel()
        await asyncio.gather(*list(e.tasks), return_exceptions=True)
        status = self.status(model_id)
        if self._entries.get(model_id) is e:
            del self._entries[model_id]
            self._changed()
        return status.model_copy(
            update={"target_level": Level.ABSENT, "state": ModelState.READY, "evictable": False}
        )

    async def _move(self, e: _Entry, level: Level, *, wait: bool) -> ModelStatus:
        model_id = e.id
        if (
            e.state != ModelState.FAILED
            and e.target == level
            and (e.level == level or e.transitioning)
        ):
            if wait:
                await self._wait_until(lambda: not e.transitioning)
            return self.status(model_id)
        self.check_fits(model_id, level)
        e.target = level
        task = asyncio.create_task(self._transition(e), name=f"level:{model_id}:{level.value}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        e.tasks.add(task)
        task.add_done_callback(e.tasks.discard)
        if wait:
            await asyncio.shield(task)
        else:
            await asyncio.sleep(0)  # let it start, so the status shows the move
        return self.status(model_id)

    async def _transition(self, e: _Entry) -> None:
        async with e.lock:
            target = e.target
            if e.level == target and e.state != ModelState.FAILED:
                return
            e.transitioning = True
            e.failed_reason = None
            self._set_state(
                e,
                e.state if e.state != ModelState.FAILED else ModelState.READY,
                0.0,
                f"moving to {target.value}",
            )
            try:
                if e.level == Level.ABSENT:
                    await self._fetch(e)
                if target == Level.RESIDENT:
                    await self._to_resident(e)
                elif target == Level.CACHED:
                    await self._to_cached(e)
                else:
                    await self._to_stored(e)
                self._set_state(e, ModelState.READY, 1.0, f"{e.level.value}")
            except AgentError as exc:
                if e.state != ModelState.FAILED:
                    self._fail(e, exc.message)
            except Exception as exc:  # never let a background task die silently
                log.exception("transition of %s failed", e.id)
                self._fail(e, f"{type(exc).__name__}: {exc}")
            finally:
                e.transitioning = False
                self._changed()

    async def _fetch(self, e: _Entry) -> None:
        """absent -> stored: fetch the files, take the real manifest, let the runtime
        profile the model (`after_fetch`)."""
        fetcher = self.fetcher
        if fetcher is None:
            raise UnknownModel(f"model {e.id!r} is not on this host", model=e.id)
        self._set_state(e, ModelState.FETCHING, 0.0, f"fetching from {fetcher.source}")

        def progress(p: FetchProgress) -> None:
            e.fetch = p
            e.progress = min(1.0, p.bytes_done / p.bytes_total) if p.bytes_total else 1.0
            eta = f", ETA {p.eta_s:.0f} s" if p.eta_s is not None and not p.finished_at else ""
            e.detail = (
                f"fetching from {p.source}: {p.bytes_done / 1e6:.1f} of "
                f"{p.bytes_total / 1e6:.1f} MB at {p.rate_Bps / 1e6:.1f} MB/s{eta}"
            )
            self.observer.fetch_progress(e.id, p)

        t0 = time.perf_counter()
        try:
            manifest = await fetcher.fetch(e.id, progress, self._make_room)
        except asyncio.CancelledError:
            raise
        except AgentError:
            self.observer.fetch_failed(e.id)
            raise
        except Exception as exc:  # a bug or an OS error: still a clear reason in the status
            self.observer.fetch_failed(e.id)
            log.exception("fetch of %s failed", e.id)
            raise FetchFailed(f"fetch failed: {type(exc).__name__}: {exc}", model=e.id) from exc
        done = e.fetch
        moved = done.bytes_done - done.resumed_bytes if done is not None else 0
        self.observer.fetched(e.id, moved, time.perf_counter() - t0)
        e.manifest = manifest
        e.level = Level.STORED
        e.profile_status = ProfileStatus.PENDING
        self._set_state(e, ModelState.LOADING, 0.0, "fetched")
        if self.after_fetch is not None:
            await self.after_fetch(e.id)

    # ------------------------------------------------------------------ disk

    def set_pins(self, pins: Mapping[str, TargetLevel], source: str = "orchestrator") -> None:
        """The operator's pins on this host (model -> minimum level) from one `source`
        (`settings` at start, `orchestrator` from its acks), complete for that source: a
        model is pinned at the highest level any source gives it, and a pinned model is
        never evicted from disk."""
        self._pin_sources[source] = dict(pins)
        self._pins = merge_pins(*self._pin_sources.values())
        for e in self._entries.values():
            e.pinned_level = self._pins.get(e.id)
        self._changed()

    def _evictable(self, e: _Entry) -> bool:
        """Whether a fetch may delete this model's files now."""
        return (
            (e.manifest.origin == ModelOrigin.FETCHED or self.evict_user_models)
            and (self.fetcher is None or self.fetcher.removable(e.manifest))
            and not e.placed
            and e.pinned_level is None
            and e.level == Level.STORED
            and self._pool.holder is not e
            and e.loaded is None
            and e.host_copy is None
            and not e.transitioning
            and not e.tasks
            and e.in_flight == 0
            and e.queued == 0
        )

    def evictable_bytes(self) -> int:
        return sum(e.manifest.storage_bytes for e in self._entries.values() if self._evictable(e))

    async def _make_room(self, shortfall_bytes: int, model_id: str) -> int:
        """Delete evictable models, least recently used first, until `shortfall_bytes`
        are freed; none when all of them would not be enough (a refusal costs nothing)."""
        fetcher = self.fetcher
        cands = sorted(
            (e for e in self._entries.values() if e.id != model_id and self._evictable(e)),
            key=lambda e: (e.last_used or 0.0, e.id),
        )
        if fetcher is None or sum(e.manifest.storage_bytes for e in cands) < shortfall_bytes:
            return 0
        freed = 0
        for e in cands:
            if freed >= shortfall_bytes:
                break
            if not self._evictable(e) or self._entries.get(e.id) is not e:
                continue  # used or commanded while an earlier one was deleted
            del self._entries[e.id]  # no request or command can reach it from here on
            self._changed()
            try:
                await fetcher.remove(e.manifest)
            except Exception as exc:
                log.warning("disk eviction of %s failed: %s", e.id, exc)
                self._entries[e.id] = e
                self._fail(e, f"disk eviction failed: {exc}")
                continue
            freed += e.manifest.storage_bytes
            self.observer.disk_evicted(e.id, e.manifest.storage_bytes)
            log.info("disk: evicted %s (%d bytes) for %s", e.id, e.manifest.storage_bytes, model_id)
        return freed

    async def _drain(self, e: _Entry) -> None:
        if e.in_flight:
            self._set_state(e, ModelState.DRAINING, 0.05, f"draining {e.in_flight} request(s)")
        try:
            await self._wait_until(lambda: e.in_flight == 0, self.drain_timeout_s)
        except TimeoutError:
            raise TransitionConflict(
                f"{e.in_flight} request(s) still running after {self.drain_timeout_s} s", model=e.id
            ) from None

    async def _close_resident(self, e: _Entry) -> None:
        await self._drain(e)
        self._set_state(e, ModelState.EVICTING, 0.5, "freeing device memory")
        loaded = e.loaded
        t0 = time.perf_counter()
        if loaded is not None:
            await asyncio.to_thread(loaded.close)
        e.loaded, e.device_bytes, e.level = None, 0, Level.STORED
        self.observer.evicted(e.id, time.perf_counter() - t0)
        log.info("evicted %s from the device", e.id)

    async def _to_resident(self, e: _Entry) -> None:
        pool = self._pool
        await self._wait_until(lambda: not pool.busy)
        if pool.holder is e:
            # Promote in place: the weights are already on the device.
            pool.holder, pool.bytes = None, 0
            e.level = Level.RESIDENT
            self._release_host_copy(e)
            return
        need = self._need(e)
        if need > self.device_budget_bytes - self.device_used_bytes() and pool.holder is not None:
            # The pool is expendable: drain and free it to make room.
            pool.busy = True
            try:
                holder = pool.holder
                await self._wait_until(lambda: holder.in_flight == 0, self.drain_timeout_s)
                await self._evict_pool()
            finally:
                pool.busy = False
                self._changed()
        if need > self.device_budget_bytes - self.device_used_bytes():
            raise DoesNotFit(
                f"{e.id!r} needs {self._need_text(e)} of device memory; "
                f"{self.device_used_bytes()} of {self.device_budget_bytes} in use"
            )
        await self._load(e, "loading to resident")
        e.level = Level.RESIDENT
        self._release_host_copy(e)

    def _release_host_copy(self, e: _Entry) -> None:
        if e.host_copy is not None:
            e.host_copy.release()
            e.host_copy = None

    async def _to_cached(self, e: _Entry) -> None:
        if e.level == Level.RESIDENT:
            await self._close_resident(e)
        if e.host_copy is None:
            self.check_fits(e.id, Level.CACHED)
            self._set_state(e, ModelState.LOADING, 0.2, "reading weights into host RAM")
            try:
                e.host_copy = await asyncio.to_thread(self.loader.read_to_host, e.manifest)
            except Exception as exc:
                raise ModelUnavailable(f"reading {e.id!r} into host RAM failed: {exc}") from exc
        e.level = Level.CACHED

    async def _to_stored(self, e: _Entry) -> None:
        if e.level == Level.RESIDENT:
            await self._close_resident(e)
        self._release_host_copy(e)
        e.level = Level.STORED

    async def wait_idle(self) -> None:
        """Wait for every transition task started so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Free everything (shutdown): cancel transitions, close loaded models."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for e in self._entries.values():
            if e.loaded is not None:
                await asyncio.to_thread(e.loaded.close)
                e.loaded = None
            self._release_host_copy(e)
        self._pool.holder, self._pool.bytes = None, 0
