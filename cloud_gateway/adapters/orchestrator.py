"""The gateway's link to the orchestrator: polls the routing table (keeping the last good
one, also on disk, when the orchestrator is unreachable) and reports arrivals in batches.
Neither ever blocks a request.

Both use the gateway's aiohttp session: these calls run on the event loop that serves
requests, and an httpx request cost 2-8 ms of CPU there (measured in the loaded gateway),
twice a second, which showed up whole in the latency tail; aiohttp's cost about 1 ms."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
from pydantic import ValidationError

from cloud_gateway.core.limits import ArrivalCounter
from cloud_gateway.core.routing import Router
from genedge.contract import ArrivalBatch, RoutingTable

log = logging.getLogger("cloud_gateway.orchestrator")
_SAVE_EVERY_S = 10.0


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


class TablePoller:
    def __init__(
        self,
        url: str,
        router: Router,
        http: aiohttp.ClientSession,
        clock: Callable[[], float],
        interval_s: float,
        state_file: Path | None,
        token: str = "",
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = _auth(token)
        self.router = router
        self.http = http
        self.clock = clock
        self.interval_s = interval_s
        self.state_file = state_file
        self.failures = 0
        self.last_error: str | None = None
        self._saved_at = 0.0
        self._saved_body: str | None = None

    def restore(self) -> bool:
        """Load the table kept on disk by an earlier run, with its original fetch time (so
        its age shows), for routing before the orchestrator first answers."""
        if self.state_file is None or not self.state_file.exists():
            return False
        try:
            saved = json.loads(self.state_file.read_text())
            table = RoutingTable.model_validate(saved["table"])
            fetched_at = float(saved["fetched_at"])
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            log.warning("ignoring unreadable saved routing table %s: %s", self.state_file, exc)
            return False
        self.router.update(table, fetched_at)
        log.info("restored the routing table fetched %.0f s ago", self.clock() - fetched_at)
        return True

    async def refresh(self) -> bool:
        timeout = aiohttp.ClientTimeout(total=max(self.interval_s, 2.0))
        try:
            async with self.http.get(
                f"{self.url}/v1/routing", timeout=timeout, headers=self.headers
            ) as r:
                r.raise_for_status()
                table = RoutingTable.model_validate_json(await r.read())
        except (aiohttp.ClientError, TimeoutError, ValidationError) as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if self.failures in (1, 10) or self.failures % 100 == 0:
                log.warning(
                    "orchestrator unreachable (%d tries): %s; routing on the last table",
                    self.failures,
                    self.last_error,
                )
            return False
        if self.failures:
            log.info("orchestrator reachable again after %d failed polls", self.failures)
        self.failures = 0
        self.last_error = None
        now = self.clock()
        self.router.update(table, now)
        self._save(table, now)
        return True

    def _save(self, table: RoutingTable, now: float) -> None:
        if self.state_file is None or now - self._saved_at < _SAVE_EVERY_S:
            return
        body = table.model_dump_json(exclude={"generated_at"})
        if body == self._saved_body and now - self._saved_at < 60.0:
            return
        payload = {"fetched_at": now, "table": table.model_dump(mode="json")}
        tmp = self.state_file.with_suffix(".tmp")
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.warning("could not keep the routing table in %s: %s", self.state_file, exc)
            return
        self._saved_at, self._saved_body = now, body

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)


class ArrivalReporter:
    """Sends the per-model request counts every `interval_s`. Each batch has a random id;
    a batch that fails is sent again as it was (same id, same counts) until it is
    acknowledged, so one the orchestrator counted but whose answer was lost is counted
    once; requests that arrive meanwhile wait for the next batch."""

    def __init__(
        self,
        url: str,
        counter: ArrivalCounter,
        http: aiohttp.ClientSession,
        clock: Callable[[], float],
        interval_s: float,
        token: str = "",
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = {"content-type": "application/json", **_auth(token)}
        self.counter = counter
        self.http = http
        self.clock = clock
        self.interval_s = interval_s
        self.sent = 0
        self.pending: ArrivalBatch | None = None  # sent, not yet acknowledged

    async def flush(self) -> bool:
        if self.pending is None:
            counts = self.counter.take()
            if not counts:
                return True
            # No time stamp: the orchestrator's own clock decides the slot (arrivals are data).
            self.pending = ArrivalBatch(counts=counts, source="gateway", id=uuid.uuid4().hex)
        batch = self.pending
        try:
            async with self.http.post(
                f"{self.url}/v1/arrivals",
                data=batch.model_dump_json(),
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=5.0),
            ) as r:
                if 400 <= r.status < 500 and r.status not in (401, 403, 408, 429):
                    # The orchestrator will never take this batch: resending it forever
                    # would block every later one.
                    log.warning(
                        "orchestrator refused an arrivals batch (HTTP %d): %s",
                        r.status,
                        (await r.text())[:300],
                    )
                    self.pending = None
                    return False
                if r.status in (401, 403):
                    log.warning(
                        "orchestrator refused the gateway token (HTTP %d): GW_ORCHESTRATOR_TOKEN "
                        "must be its ORCH_GATEWAY_TOKEN; arrivals kept",
                        r.status,
                    )
                r.raise_for_status()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("arrivals batch %s not acknowledged (sent again next): %s", batch.id, exc)
            return False
        self.pending = None
        self.sent += sum(batch.counts.values())
        return True

    async def flush_all(self) -> bool:
        """The unacknowledged batch, then what has been counted since (best effort)."""
        return await self.flush() and await self.flush()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()
