"""The orchestrator's client of its agents: the reconciler's `PUT /v1/models/{id}/level`
commands, with the agent token, retried with exponential backoff (up to 10 s between tries)
on errors that may pass; refusals that will not get better (401/403, 404, 409, 422) are not
retried and are logged with what to do."""

from __future__ import annotations

import asyncio
import logging

import httpx

from orchestrator.core.reconcile import Command
from orchestrator.settings import OrchestratorSettings

log = logging.getLogger("orchestrator")


class AgentCommands:
    def __init__(self, http: httpx.AsyncClient, settings: OrchestratorSettings) -> None:
        self._http = http
        self._settings = settings
        tok = settings.agent_token
        self._headers = {"authorization": f"Bearer {tok}"} if tok else {}

    async def send(self, url: str, c: Command) -> bool:
        """`PUT level` of one command on the agent at `url`, waiting for the transition;
        retried with backoff on errors that may pass. True when the agent carried it out."""
        delay = self._settings.command_backoff_s
        for attempt in range(self._settings.command_retries + 1):
            try:
                r = await self._http.put(
                    f"{url.rstrip('/')}/v1/models/{c.model}/level",
                    json={"level": c.level, "wait": True},
                    timeout=self._settings.command_timeout_s,
                    headers=self._headers,
                )
                if r.status_code in (200, 202):
                    log.info("%s: %s %s -> %s", c.host, c.model, c.was, c.level)
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
