"""The orchestrator's client of its agents: the reconciler's `PUT /v1/models/{id}/level`
commands, with the agent token, retried with exponential backoff (up to 10 s between tries)
on errors that may pass; refusals that will not get better (401/403, 404, 409, 422) are not
retried and are logged with what to do.

A command that waits for its transition holds one request open until the model is at its
level: right for a load (seconds), wrong for a fetch (minutes: fetch, profile, load), which
would run into the request timeout and be retried while the agent is still fetching. A
fetch is therefore started without waiting and followed by polling the model's status
(`GET /v1/models/{id}/status`) until it is at its level or failed."""

from __future__ import annotations

import asyncio
import logging

import httpx

from genedge.contract import ModelState, ModelStatus
from orchestrator.core.reconcile import Command, settled_level
from orchestrator.settings import OrchestratorSettings

log = logging.getLogger("orchestrator")

_POLL_TIMEOUT_S = 10.0


class AgentCommands:
    poll_s = 1.0
    """Seconds between two status polls of a fetch under way."""

    def __init__(self, http: httpx.AsyncClient, settings: OrchestratorSettings) -> None:
        self._http = http
        self._settings = settings
        tok = settings.agent_token
        self._headers = {"authorization": f"Bearer {tok}"} if tok else {}

    async def send(self, url: str, c: Command) -> bool:
        """`PUT level` of one command on the agent at `url`, waiting for the transition (a
        fetch: started, then its status polled); retried with backoff on errors that may
        pass. True when the agent carried it out."""
        if not await self._put(url, c, wait=not c.fetches):
            return False
        if c.fetches:
            return await self._follow(url, c)
        log.info("%s: %s %s -> %s", c.host, c.model, c.was, c.level)
        return True

    async def _put(self, url: str, c: Command, *, wait: bool) -> bool:
        delay = self._settings.command_backoff_s
        for attempt in range(self._settings.command_retries + 1):
            try:
                r = await self._http.put(
                    f"{url.rstrip('/')}/v1/models/{c.model}/level",
                    json={"level": c.level, "wait": wait},
                    timeout=self._settings.command_timeout_s if wait else _POLL_TIMEOUT_S,
                    headers=self._headers,
                )
                if r.status_code in (200, 202):
                    return True
                if r.status_code in (401, 403):
                    log.error(
                        "%s refused the agent token (HTTP %d): ORCH_AGENT_TOKEN must be the "
                        "agents' EDGE_AGENT_TOKEN",
                        c.host,
                        r.status_code,
                    )
                    return False
                if r.status_code in (404, 409, 422):  # will not get better by retrying
                    log.warning("%s: %s -> %s refused: %s", c.host, c.model, c.level, r.text[:200])
                    return False
                log.warning(
                    "%s: %s -> %s: HTTP %d (attempt %d)",
                    c.host,
                    c.model,
                    c.level,
                    r.status_code,
                    attempt + 1,
                )
            except httpx.HTTPError as exc:
                log.warning(
                    "%s: %s -> %s: %s (attempt %d)", c.host, c.model, c.level, exc, attempt + 1
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        return False

    async def _follow(self, url: str, c: Command) -> bool:
        """Poll the status of a model the agent is fetching until it is at `c.level` (True)
        or the fetch failed, was unplaced or the agent stopped answering (False, logged).
        A new decision cancels this; the agent's fetch goes on regardless."""
        log.info("%s: fetching %s for %s", c.host, c.model, c.level)
        errors = 0
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                r = await self._http.get(
                    f"{url.rstrip('/')}/v1/models/{c.model}/status",
                    timeout=_POLL_TIMEOUT_S,
                    headers=self._headers,
                )
            except httpx.HTTPError as exc:
                errors += 1
                if errors > self._settings.command_retries:
                    log.warning("%s: status of %s: %s; giving up", c.host, c.model, exc)
                    return False
                continue
            if r.status_code != 200:
                log.warning(
                    "%s: %s -> %s: status HTTP %d: %s",
                    c.host,
                    c.model,
                    c.level,
                    r.status_code,
                    r.text[:200],
                )
                return False
            errors = 0
            try:
                st = ModelStatus.model_validate_json(r.content)
            except ValueError as exc:
                log.warning("%s: status of %s does not read: %s", c.host, c.model, exc)
                return False
            if st.state == ModelState.FAILED:
                log.warning("%s: %s -> %s failed: %s", c.host, c.model, c.level, st.failed_reason)
                return False
            if st.target_level.value != c.level:  # another command changed its target
                return False
            if (
                st.state == ModelState.READY
                and settled_level(st.level.value, st.host_ram_bytes) == c.level
            ):
                log.info("%s: %s fetched, now %s", c.host, c.model, c.level)
                return True
