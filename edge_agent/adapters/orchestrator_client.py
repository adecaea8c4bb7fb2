"""The agent's link to the orchestrator: register, then heartbeat every few seconds with host
facts, model states, request counts and swap-pool hits since the last beat. Re-registers when
the orchestrator says it does not know us (it restarted and lost us, or marked us down), and
keeps retrying with capped backoff when it is unreachable: the agent serves either way."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx

from genedge.contract import (
    AgentRegistration,
    Heartbeat,
    HeartbeatAck,
    HostFacts,
    ModelStatus,
    PoolCounts,
    RegistrationAck,
)

log = logging.getLogger("edge_agent.orchestrator")


class OrchestratorLink:
    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        token: str,
        agent_id: str,
        advertise_url: str,
        role: str,
        facts: Callable[[], HostFacts],
        models: Callable[[], list[ModelStatus]],
        interval_s: float = 5.0,
        on_controls: Callable[[RegistrationAck | HeartbeatAck], None] | None = None,
    ) -> None:
        self.client = client
        self.base = base_url.rstrip("/")
        self.headers = {"authorization": f"Bearer {token}"}
        self.agent_id = agent_id
        self.advertise_url = advertise_url
        self.role = role
        self.facts = facts
        self.models = models
        self.interval_s = interval_s
        self.on_controls = on_controls  # the operator's pins and priorities, from every ack
        self.registered = False
        self._last: dict[str, tuple[int, int, int]] = {}  # model -> (requests, hits, misses)

    def _deltas(self, models: list[ModelStatus]) -> tuple[dict[str, int], dict[str, PoolCounts]]:
        arrivals: dict[str, int] = {}
        pool: dict[str, PoolCounts] = {}
        for m in models:
            req0, hit0, miss0 = self._last.get(m.id, (0, 0, 0))
            arrivals[m.id] = max(0, m.requests_total - req0)
            pool[m.id] = PoolCounts(
                hits=max(0, m.pool_hits - hit0), misses=max(0, m.pool_misses - miss0)
            )
        return arrivals, pool

    def _commit(self, models: list[ModelStatus]) -> None:
        self._last = {m.id: (m.requests_total, m.pool_hits, m.pool_misses) for m in models}

    async def register(self) -> None:
        models = self.models()
        body = AgentRegistration(
            agent_id=self.agent_id,
            url=self.advertise_url,
            role=self.role,  # type: ignore[arg-type]
            facts=self.facts(),
            models=models,
        )
        r = await self.client.post(
            f"{self.base}/v1/agents/register",
            json=body.model_dump(mode="json"),
            headers=self.headers,
        )
        r.raise_for_status()
        ack = RegistrationAck.model_validate(r.json())
        self.interval_s = ack.heartbeat_interval_s
        if self.on_controls is not None:
            self.on_controls(ack)
        self.registered = True
        self._commit(models)
        log.info("registered with the orchestrator at %s as %s", self.base, self.agent_id)

    async def beat(self) -> None:
        models = self.models()
        arrivals, pool = self._deltas(models)
        body = Heartbeat(facts=self.facts(), models=models, arrivals=arrivals, pool=pool)
        r = await self.client.post(
            f"{self.base}/v1/agents/{self.agent_id}/heartbeat",
            json=body.model_dump(mode="json"),
            headers=self.headers,
        )
        if r.status_code == 404:
            self.registered = False
            return
        r.raise_for_status()
        ack = HeartbeatAck.model_validate(r.json())
        if not ack.known:
            self.registered = False
            return
        if self.on_controls is not None:
            self.on_controls(ack)
        self._commit(models)

    async def run(self) -> None:
        """Forever: register (with backoff), then heartbeat every `interval_s`."""
        backoff = 0.5
        while True:
            try:
                if not self.registered:
                    await self.register()
                else:
                    await self.beat()
                backoff = 0.5
                await asyncio.sleep(self.interval_s)
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("orchestrator at %s: %s (retrying in %.1f s)", self.base, exc, backoff)
                self.registered = (
                    False if isinstance(exc, httpx.HTTPStatusError) else self.registered
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
