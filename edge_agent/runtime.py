"""The agent's running state: the store, the manager, metrics, host facts and the background
jobs (bandwidth probe, profiling, initial levels). Built by the app's lifespan; lives on
`app.state.agent`."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from edge_agent.core.limits import Limits
from edge_agent.core.manager import ModelManager
from edge_agent.core.ports import ModelLoader
from edge_agent.errors import ModelUnavailable, Overloaded, UnknownModel
from edge_agent.metrics import AgentMetrics
from edge_agent.settings import AgentSettings
from genedge.contract import (
    BadModelFolder,
    HeartbeatAck,
    HostFacts,
    Level,
    ModelManifest,
    ModelProfile,
    ProfileStatus,
    RegistrationAck,
)

log = logging.getLogger("edge_agent")


class ProfilerLike(Protocol):
    """What the runtime needs of a profiler (the real one is `adapters.profiler.Profiler`)."""

    def profile(
        self, manifest: ModelManifest, progress: Callable[[str, float], None] | None = None
    ) -> ModelProfile: ...


@dataclass
class HostInfo:
    device: str
    fingerprint: str
    description: str
    versions: dict[str, str]
    disk_read_GBps: float | None = None
    h2d_GBps: float | None = None
    bandwidth_measured: bool = False
    notes: list[str] = field(default_factory=list)


class AgentRuntime:
    def __init__(
        self,
        settings: AgentSettings,
        manifests: list[ModelManifest],
        bad_folders: list[BadModelFolder],
        loader: ModelLoader,
        host: HostInfo,
        *,
        device_budget_bytes: int,
        cache_budget_bytes: int,
        profiler: ProfilerLike | None = None,
        profile_store: object | None = None,
        nvml: object | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.nvml = nvml
        self.link: object | None = None
        self.settings = settings
        self.fetch_dir = (
            Path(settings.fetch_dir)
            if settings.fetch_dir
            else Path(settings.store_dir) / ".fetched"
        )
        manifests, bad_folders = self._with_fetched(manifests, bad_folders)
        self._fetch_client: httpx.AsyncClient | None = None  # ours to close
        self.bad_folders = bad_folders
        self.host = host
        self.clock = clock
        self.metrics = AgentMetrics()
        self.limits = Limits(
            max_prompt_chars=settings.max_prompt_chars,
            max_messages=settings.max_messages,
            max_tokens=settings.max_tokens,
            max_steps=settings.max_steps,
            max_image_side=settings.max_image_side,
            max_images=settings.max_images,
            max_request_s=settings.max_request_s,
            profile_text_tokens=settings.profile_text_tokens,
        )
        self.manager = ModelManager(
            manifests,
            loader,
            device_budget_bytes=device_budget_bytes,
            cache_budget_bytes=cache_budget_bytes,
            max_concurrency=settings.max_concurrency_per_model,
            max_queue=settings.max_queue_per_model,
            retry_after_s=settings.retry_after_s,
            drain_timeout_s=settings.drain_timeout_s,
            clock=clock,
            observer=self.metrics,
            evict_user_models=settings.evict_user_models,
            pool_max_wait_s=settings.pool_max_wait_s,
            batch_limits=settings.batch_limits(),
        )
        self.manager.set_pins(settings.pins, source="settings")
        from edge_agent.adapters.repository import RepositoryIndex

        self.repository = RepositoryIndex()
        self.profiler = profiler
        self.profile_store = profile_store
        self.started_at = clock()
        self.ready = False
        self._jobs: list[asyncio.Task[None]] = []
        self._profile_lock = asyncio.Lock()
        self._profiles_waiting = 0  # profiles queued behind `_profile_lock`
        self._last_profile_s = 0.0  # how long the last profile ran (for Retry-After)

    def _with_fetched(
        self, manifests: list[ModelManifest], bad: list[BadModelFolder]
    ) -> tuple[list[ModelManifest], list[BadModelFolder]]:
        """The store's models plus what earlier runs fetched (the fetch directory is a store
        root of its own, hidden from the store's scan), each with its origin."""
        from edge_agent.adapters.fetch import mark_origins, scan_fetched

        manifests = mark_origins(manifests)
        if self.fetch_dir.resolve() == Path(self.settings.store_dir).resolve():
            return manifests, bad
        fetched, fetched_bad = scan_fetched(self.fetch_dir, manifests)
        for b in fetched_bad:
            log.warning("skipping fetched model folder %s: %s", b.path, b.reason)
        return sorted(manifests + fetched, key=lambda m: m.id), bad + fetched_bad

    # ------------------------------------------------------------------ lifecycle
    async def start(
        self,
        http_client: httpx.AsyncClient | None = None,
        *,
        fetch_client: httpx.AsyncClient | None = None,
    ) -> None:
        """Kick off background work; the agent serves at once (`/readyz` says when the
        initial levels are reached). With an orchestrator URL, register and heartbeat.
        With a repository URL, models the host lacks are fetched (over `fetch_client`,
        else a client of its own)."""
        self._reuse_cached_profiles()
        self._start_fetcher(fetch_client)
        self._jobs.append(asyncio.create_task(self._startup(), name="agent-startup"))
        s = self.settings
        if s.orchestrator_url and http_client is not None:
            from edge_agent.adapters.orchestrator_client import OrchestratorLink

            self.link = OrchestratorLink(
                http_client,
                s.orchestrator_url,
                s.agent_token,
                s.host_id,
                s.advertise_url or f"http://{s.host}:{s.port}",
                s.role,
                self.host_facts,
                self.manager.statuses,
                on_controls=self._apply_controls,
            )
            self._jobs.append(asyncio.create_task(self.link.run(), name="orchestrator-link"))

    def _apply_controls(self, ack: RegistrationAck | HeartbeatAck) -> None:
        """The operator's pins on this host and priority classes, as the orchestrator sent
        them (complete lists: what is not listed is unpinned, `normal`)."""
        self.manager.set_pins(ack.pins, source="orchestrator")
        self.manager.set_priorities(ack.priorities)

    async def _startup(self) -> None:
        try:
            for model_id, level in self.settings.initial_levels.items():
                try:
                    await self.manager.set_level(model_id, Level(level), wait=True)
                except Exception as exc:  # reported in the model's status; keep going
                    log.warning("initial level %s for %s: %s", level, model_id, exc)
            self.ready = True
            if self.settings.measure_bandwidth:
                await self._measure_bandwidth()
            if self.settings.profile_on_start and self.profiler is not None:
                for model_id in self.manager.model_ids():
                    if self.manager.status(model_id).profile_status == ProfileStatus.PENDING:
                        await self.profile(model_id, bounded=False)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("agent start-up job failed")
            self.ready = True

    async def stop(self) -> None:
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        await self.manager.close()
        if self._fetch_client is not None:
            await self._fetch_client.aclose()

    # ------------------------------------------------------------------ fetching
    def _start_fetcher(self, client: httpx.AsyncClient | None) -> None:
        s = self.settings
        if not s.repository_url:
            return
        from edge_agent.adapters.fetch import Fetcher

        if client is None:
            # Timeouts per network operation, not per transfer: a 16 GB model takes minutes.
            client = self._fetch_client = httpx.AsyncClient(
                timeout=httpx.Timeout(60.0, connect=10.0)
            )
        self.manager.fetcher = Fetcher(
            client,
            s.repository_url,
            self.fetch_dir,
            token=s.agent_token,
            max_Bps=s.fetch_max_bps,
            retries=s.fetch_retries,
            clock=self.clock,
        )
        self.manager.after_fetch = self._after_fetch

    async def _after_fetch(self, model_id: str) -> None:
        """A fetched model gets what a store model gets at start: its cached profile when
        this host measured these files before, else a measurement (`profile_on_start`)."""
        manifest = self.manager.manifest(model_id)
        store = self.profile_store
        cached = store.get(model_id, manifest.file_digest) if store is not None else None  # type: ignore[attr-defined]
        if cached is not None:
            self.manager.set_profile(model_id, cached, ProfileStatus.CACHED)
        elif self.profiler is not None and self.settings.profile_on_start:
            await self.profile(model_id, bounded=False)
        else:
            self.manager.set_profile(model_id, None, ProfileStatus.SKIPPED)

    # ------------------------------------------------------------------ profiles
    def _reuse_cached_profiles(self) -> None:
        store = self.profile_store
        for model_id in self.manager.model_ids():
            manifest = self.manager.manifest(model_id)
            cached = store.get(model_id, manifest.file_digest) if store is not None else None  # type: ignore[attr-defined]
            if cached is not None:
                self.manager.set_profile(model_id, cached, ProfileStatus.CACHED)
            elif self.profiler is None or not self.settings.profile_on_start:
                self.manager.set_profile(model_id, None, ProfileStatus.SKIPPED)

    async def profile(self, model_id: str, *, bounded: bool = True) -> ModelProfile | None:
        """Measure one model now (in turn with requests for the swap pool).

        `bounded` (API callers): refused with `Overloaded` (429) when `max_profile_queue`
        profiles already wait behind the one running, since each takes seconds of device
        time and the swap pool. The start-up job, one profile at a time, is never refused.
        """
        if self.profiler is None:
            raise UnknownModel("profiling is not available on this agent")
        if self.manager.status(model_id).level == Level.ABSENT:
            raise ModelUnavailable(f"model {model_id!r} is not on this host yet", model=model_id)
        manifest = self.manager.manifest(model_id)
        profiler = self.profiler
        loop = asyncio.get_running_loop()
        limit = self.settings.max_profile_queue
        if bounded and self._profile_lock.locked() and self._profiles_waiting >= limit:
            raise Overloaded(
                f"{self._profiles_waiting} profile(s) already wait behind the one running "
                f"(max_profile_queue {limit})",
                model=model_id,
                retry_after_s=max(self.settings.retry_after_s, self._last_profile_s),
            )

        def progress(what: str, frac: float) -> None:  # called from the profiling thread
            loop.call_soon_threadsafe(
                self.manager.set_profile, model_id, None, ProfileStatus.RUNNING, frac, what
            )

        if self._profile_lock.locked():
            self.manager.set_profile(
                model_id, None, ProfileStatus.RUNNING, 0.0, "queued behind another profile"
            )
        self._profiles_waiting += 1
        try:
            await self._profile_lock.acquire()
        finally:
            self._profiles_waiting -= 1
        started = time.perf_counter()
        try:
            self.manager.set_profile(
                model_id, None, ProfileStatus.RUNNING, 0.0, "waiting for the swap pool"
            )
            try:
                async with self.manager.device_exclusive():
                    profile = await asyncio.to_thread(profiler.profile, manifest, progress)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("profiling %s failed: %s", model_id, exc)
                self.manager.set_profile(model_id, None, ProfileStatus.FAILED, 1.0, str(exc))
                return None
            if self.profile_store is not None:
                self.profile_store.put(profile)  # type: ignore[attr-defined]
            self.manager.set_profile(model_id, profile, ProfileStatus.DONE, 1.0, "measured")
            log.info(
                "profiled %s: %.1f MB, resident %.1f MB, cold %.3f s, warm %.3f s, ram %.3f s",
                model_id,
                profile.storage_bytes / 1e6,
                profile.resident_bytes / 1e6,
                profile.load_cold_s,
                profile.load_warm_s,
                profile.load_ram_s,
            )
            return profile
        finally:
            self._last_profile_s = time.perf_counter() - started
            self._profile_lock.release()

    async def _measure_bandwidth(self) -> None:
        from edge_agent.adapters import host as hostmod

        size = self.settings.bandwidth_probe_bytes
        probe_dir = Path(self.settings.store_dir)
        try:
            disk, cold = await asyncio.to_thread(hostmod.measure_disk_read_GBps, probe_dir, size)
            h2d = await asyncio.to_thread(hostmod.measure_h2d_GBps, self.host.device, size)
        except Exception as exc:
            log.warning("bandwidth probe failed: %s", exc)
            return
        self.host.disk_read_GBps, self.host.h2d_GBps = disk, h2d
        self.host.bandwidth_measured = True
        if not cold:
            self.host.notes.append("disk probe could not drop the page cache")
        log.info(
            "bandwidth: disk read %.2f GB/s%s, host->%s %.2f GB/s",
            disk,
            "" if cold else " (warm)",
            self.host.device,
            h2d,
        )

    # ------------------------------------------------------------------ host facts
    def host_facts(self) -> HostFacts:
        from edge_agent.adapters import host as hostmod

        ram_total, ram_avail = hostmod.ram_bytes()
        disk_total, disk_free = hostmod.disk_bytes(Path(self.settings.store_dir))
        gpu = None
        nvml = self.nvml
        if nvml is not None and self.host.device.startswith("cuda"):
            index = int(self.host.device.split(":")[1]) if ":" in self.host.device else 0
            gpu = nvml.gpu(index)  # type: ignore[attr-defined]
            if gpu is not None:
                self.metrics.gpu_used.set(gpu.used_bytes)
        m = self.manager
        return HostFacts(
            host_id=self.settings.host_id,
            role=self.settings.role,
            hostname=socket.gethostname(),
            fingerprint=self.host.fingerprint,
            description=self.host.description,
            device=self.host.device,
            gpu_name=gpu.name if gpu else None,
            gpu_total_bytes=gpu.total_bytes if gpu else None,
            gpu_free_bytes=gpu.free_bytes if gpu else None,
            gpu_used_bytes=gpu.used_bytes if gpu else None,
            nvml=gpu is not None,
            device_budget_bytes=m.device_budget_bytes,
            device_used_bytes=m.device_used_bytes(),
            pool_model=m.pool_model,
            pool_bytes=m.pool_bytes,
            ram_total_bytes=ram_total,
            ram_available_bytes=ram_avail,
            cache_budget_bytes=m.cache_budget_bytes,
            cache_used_bytes=m.cache_used_bytes(),
            disk_total_bytes=disk_total,
            disk_free_bytes=disk_free,
            disk_read_GBps=self.host.disk_read_GBps,
            h2d_GBps=self.host.h2d_GBps,
            bandwidth_measured=self.host.bandwidth_measured,
            versions=self.host.versions,
            repository_url=self.settings.repository_url,
            fetch_Bps=m.fetcher.measured_Bps if m.fetcher is not None else None,
        )
