"""The gateway's running state and its one job: send a request to the best backend.

`Gateway.forward` tries the router's candidates in order. Anything that fails before the
client has been sent a byte (connection refused, timeout, a 5xx/429/404 from an edge host,
a stream that breaks before its first chunk) moves on to the next candidate, then the
cloud; a non-streamed answer is read whole before anything is sent, so it is always
retryable. Once a stream's first chunk has gone to the client there is no silent retry: a
break becomes an error event and `[DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
from fastapi import Response
from fastapi.responses import StreamingResponse

from cloud_gateway.adapters.orchestrator import ArrivalReporter, TablePoller
from cloud_gateway.adapters.upstream import (
    RETRYABLE,
    UPSTREAM_ERRORS,
    Failure,
    Opened,
    open_upstream,
)
from cloud_gateway.core.limits import ArrivalCounter, RateLimiter
from cloud_gateway.core.routing import CloudBackend, Router, Target
from cloud_gateway.errors import NoBackend, RateLimited, Unauthorized, UnknownModel, WrongKind
from cloud_gateway.metrics import GatewayMetrics
from cloud_gateway.settings import GatewaySettings
from genedge.auth import is_loopback, warn_if_open
from genedge.contract import ErrorBody, ErrorResponse, Level, OpenAIModel, OpenAIModelList

log = logging.getLogger("cloud_gateway")

_PASSED_HEADERS = (
    "content-type",
    "x-served-level",
    "x-preload-ms",
    "x-preload-tier",
    "retry-after",
)


class Gateway:
    def __init__(
        self,
        settings: GatewaySettings,
        http: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.http = http  # agents, the cloud and the orchestrator
        self.clock = clock
        cloud = None
        if settings.cloud_url:
            cloud = CloudBackend(settings.cloud_id, settings.cloud_url, settings.cloud_api_key)
        self.router = Router(cloud, agent_token=settings.agent_token)
        self.limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
        self.arrivals = ArrivalCounter()
        self.metrics = GatewayMetrics()
        self.inflight: dict[str, int] = {}
        self._keys = frozenset(settings.api_key_hashes)
        self.poller: TablePoller | None = None
        self.reporter: ArrivalReporter | None = None
        if settings.orchestrator_url:
            state = Path(settings.state_dir) / "routing.json" if settings.state_dir else None
            self.poller = TablePoller(
                settings.orchestrator_url,
                self.router,
                http,
                clock,
                settings.table_refresh_s,
                state,
                token=settings.orchestrator_token,
            )
            self.reporter = ArrivalReporter(
                settings.orchestrator_url,
                self.arrivals,
                http,
                clock,
                settings.arrivals_interval_s,
                token=settings.orchestrator_token,
            )
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if not self._keys:
            if is_loopback(self.settings.host):
                log.info("no API keys configured (GW_API_KEY_HASHES): the gateway is open")
            else:
                warn_if_open(log, "the gateway", self.settings.host, ["generation, catalogue"])
        if self.poller is not None and self.reporter is not None:
            self.poller.restore()
            await self.poller.refresh()  # one try before serving; never blocks start for long
            self._tasks = [
                asyncio.create_task(self.poller.run(), name="routing-table"),
                asyncio.create_task(self.reporter.run(), name="arrivals"),
            ]
        elif self.router.cloud is None:
            log.warning("neither an orchestrator nor a cloud backend: nothing can be served")

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.reporter is not None:  # the last counts (after any unacknowledged batch)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reporter.flush_all(), 2.0)

    # ------------------------------------------------------------------ access
    def admit(self, authorization: str | None, client_ip: str) -> None:
        """Check the API key (when keys are configured) and the key's rate limit."""
        if self._keys:
            scheme, _, token = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
            digest = hashlib.sha256(token.strip().encode()).hexdigest()
            if digest not in self._keys:
                raise Unauthorized("unknown API key")
            identity = f"key:{digest}"
        else:
            identity = f"ip:{client_ip}"
        wait = self.limiter.admit(identity, time.monotonic())
        if wait > 0:
            raise RateLimited(
                f"rate limit of {self.settings.rate_limit_rps:g} requests/s exceeded",
                retry_after_s=wait,
            )

    # ------------------------------------------------------------------ routing
    def targets(self, model: str, kind: str) -> list[Target]:
        now = self.clock()
        entry = self.router.entry(model) or self.router.remembered(model, now)
        if entry is not None and entry.kind != kind:
            raise WrongKind(
                f"model {model!r} is a {entry.kind} model; use the "
                f"{'/v1/images/generations' if entry.kind == 'image' else '/v1/chat/completions'}"
                " endpoint",
                model=model,
            )
        targets = self.router.candidates(model, self.inflight, now)
        if not targets:
            if self.router.table is None:
                raise NoBackend(
                    "no routing table yet (orchestrator unreachable) and no cloud backend "
                    "configured (GW_CLOUD_URL)",
                    model=model,
                )
            if entry is None:
                raise UnknownModel(f"model {model!r} is not served here", model=model)
            raise NoBackend(f"model {model!r} has no ready host and no cloud backend", model=model)
        if entry is not None or self.router.table is None:
            self.arrivals.add(model)
        return targets

    async def forward(
        self, model: str, kind: str, path: str, body: bytes, stream: bool
    ) -> Response:
        targets = self.targets(model, kind)
        tried: list[dict[str, object]] = []
        for i, target in enumerate(targets):
            last = i == len(targets) - 1
            self._enter(target.backend)
            t0 = time.perf_counter()
            try:
                opened = await open_upstream(
                    self.http,
                    target,
                    path,
                    body,
                    stream=stream,
                    retry_statuses=frozenset() if last else RETRYABLE,
                )
            except asyncio.CancelledError:  # the client left: the request was dropped
                self._leave(target.backend)
                raise
            except Failure as f:
                self._leave(target.backend)
                self._failed(target, f)
                tried.append({"backend": target.backend, "route": target.route, "error": f.reason})
                continue
            self.metrics.upstream_seconds.labels(target.route).observe(time.perf_counter() - t0)
            return self._respond(model, opened, len(tried))
        self.metrics.requests.labels(self._label(model), "none", "503").inc()
        raise NoBackend(
            f"every backend for {model!r} failed before answering", model=model, details=tried
        )

    def _failed(self, target: Target, f: Failure) -> None:
        reason = "connect" if f.connect else ("status" if f.opened is not None else "broken")
        self.metrics.fallbacks.labels(target.route, reason).inc()
        if f.connect and target.route != "cloud":
            self.router.mark_failed(target.backend, self.clock())
        log.warning("%s (%s) failed before its first byte: %s", target.backend, target.route, f)

    def _respond(self, model: str, opened: Opened, fallbacks: int) -> Response:
        target = opened.target
        headers = {k: v for k in _PASSED_HEADERS if (v := opened.header(k)) is not None}
        if target.route == "cloud":
            headers["x-served-by"] = self.settings.cloud_id
        else:
            headers["x-served-by"] = opened.header("x-served-by") or target.backend
        headers["x-route"] = target.route
        if fallbacks:
            headers["x-fallbacks"] = str(fallbacks)
        status = opened.status
        label = self._label(model)
        if opened.body is not None:
            self._leave(target.backend)
            self.metrics.requests.labels(label, target.route, str(status)).inc()
            return Response(opened.body, status_code=status, headers=headers)
        return StreamingResponse(self._relay(opened, label), status_code=status, headers=headers)

    async def _relay(self, opened: Opened, label: str) -> AsyncIterator[bytes]:
        """Chunks as they come; a break after the first byte becomes an error event."""
        target = opened.target
        status = "200"
        try:
            if opened.first:
                yield opened.first
            async for chunk in opened.rest():
                yield chunk
        except UPSTREAM_ERRORS as exc:
            status = "stream_error"
            self.metrics.stream_errors.inc()
            log.warning("stream from %s broke after its first byte: %s", target.backend, exc)
            err = ErrorBody(
                type="upstream_stream_broken",
                message=f"the backend {target.backend} failed mid-stream ({type(exc).__name__});"
                " the answer is incomplete",
            )
            event = ErrorResponse(error=err).model_dump_json(exclude_none=True)
            yield f"data: {event}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            opened.close()
            self._leave(target.backend)
            self.metrics.requests.labels(label, target.route, status).inc()

    def _label(self, model: str) -> str:
        """Metric label: unknown model names collapse so clients cannot blow up cardinality."""
        return model if self.router.entry(model) is not None else "_other"

    def _enter(self, backend: str) -> None:
        self.inflight[backend] = self.inflight.get(backend, 0) + 1

    def _leave(self, backend: str) -> None:
        self.inflight[backend] = self.inflight.get(backend, 1) - 1

    # ------------------------------------------------------------------ views
    def models(self) -> OpenAIModelList:
        data = []
        now = self.clock()
        for entry in sorted(self.router.catalogue(), key=lambda e: e.model):
            targets = self.router.candidates(entry.model, self.inflight, now)
            first = targets[0] if targets else None
            served_by = None
            level = None
            if first is not None:
                served_by = self.settings.cloud_id if first.route == "cloud" else first.backend
                if first.route != "cloud":
                    level = Level.RESIDENT if first.route == "resident" else Level.POOLED
            data.append(
                OpenAIModel(id=entry.model, kind=entry.kind, level=level, served_by=served_by)  # type: ignore[arg-type]
            )
        return OpenAIModelList(data=data)

    def table_age_s(self) -> float | None:
        return self.router.age_s(self.clock())
