"""End to end on real processes (loopback only): orchestrator, gateway, two edge agents and a
cloud agent, each its own `genedge` process, serving the tiny real models.

One scenario, bounded and self-stopping: text and image requests through the gateway; the
request mix shifts from one model to another and placement and the serving host follow;
an agent is killed under load and requests keep succeeding while the orchestrator marks it
down and replans; the orchestrator restarts and its state comes back. Every request of the
run is counted: none may be lost and none may get a 5xx.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from launcher.system import MB, AgentSpec, System, SystemConfig

pytestmark = pytest.mark.slow


class Load:
    """A client thread sending chat requests through the gateway at `rate_rps` for whichever
    model `model` names now; it records every outcome."""

    def __init__(self, client: httpx.Client, rate_rps: float) -> None:
        self.client = client
        self.rate = rate_rps
        self.model = "tiny-llama"
        self.outcomes: list[tuple[str, int, str, str]] = []  # model, status, served_by, route
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            model = self.model
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            }
            try:
                r = self.client.post("/v1/chat/completions", json=body)
                self.outcomes.append(
                    (
                        model,
                        r.status_code,
                        r.headers.get("x-served-by", ""),
                        r.headers.get("x-route", ""),
                    )
                )
            except httpx.HTTPError as exc:  # a lost request: the test fails on it
                self.errors.append(f"{model}: {type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - t0)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()

    def recent(self, n: int) -> list[tuple[str, int, str, str]]:
        return self.outcomes[-n:]


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"within {timeout:.0f} s: {what}")


@pytest.fixture
def system(model_zoo: Path, tmp_path: Path) -> Iterator[System]:
    store = tmp_path / "models"
    shutil.copytree(model_zoo, store)
    cfg = SystemConfig(
        state=tmp_path / "state",
        store=store,
        agents=[
            AgentSpec("edge-1", device_budget_bytes=12 * MB, cache_budget_bytes=20 * MB),
            AgentSpec("edge-2", device_budget_bytes=12 * MB, cache_budget_bytes=20 * MB),
            AgentSpec("cloud", device_budget_bytes=500 * MB, role="cloud", wan_delay_ms=20),
        ],
        slot_s=2.0,
        heartbeat_s=0.5,
        missed_heartbeats=4,
        rate_half_life_s=2.0,
        profile_text_tokens=2,
        log_level="info",
        # one 2-s EWMA: the candidate half-lives (60-1,800 s) are hundreds of these slots
        extra_env={"ORCH_RATE_HALF_LIVES_S": "[]"},
    )
    s = System(cfg)
    try:
        s.start(timeout=120)
        yield s
    finally:
        s.stop()


def placement(orch: httpx.Client) -> dict[str, dict[str, Any]]:
    return {e["model"]: e for e in orch.get("/v1/placement").json()["entries"]}


def test_whole_system(system: System) -> None:
    t_start = time.monotonic()
    with system.client("gateway") as gw, system.client("orchestrator", timeout=30) as orch:

        def profiled() -> bool:
            return len(orch.get("/v1/profiles").json()["data"]) == 9  # 3 models x 3 agents

        until(profiled, 180, "every agent measured its models")
        until(lambda: gw.get("/readyz").json()["status"] == "ok", 30, "gateway has a table")

        # Text and image requests through the gateway.
        r = gw.post(
            "/v1/chat/completions",
            json={
                "model": "tiny-gpt2",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
            },
        )
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
        r = gw.post(
            "/v1/images/generations",
            json={"model": "tiny-sd", "prompt": "a cat", "size": "32x32", "steps": 2},
        )
        assert r.status_code == 200 and r.json()["data"][0]["b64_json"]

        with Load(system.client("gateway"), rate_rps=4.0) as load:
            # Demand for tiny-llama: the orchestrator places it on an edge host; the
            # gateway's requests follow.
            load.model = "tiny-llama"

            def llama_on_edge() -> bool:
                e = placement(orch).get("tiny-llama", {})
                return e.get("target_host") in ("edge-1", "edge-2")

            until(llama_on_edge, 60, "tiny-llama placed on an edge host")
            until(
                lambda: any(
                    o[0] == "tiny-llama" and o[3] in ("resident", "pooled") for o in load.recent(4)
                ),
                30,
                "tiny-llama served at the edge",
            )

            # The mix shifts to tiny-gpt2: it follows to the edge.
            load.model = "tiny-gpt2"

            def gpt2_on_edge() -> str | None:
                e = placement(orch).get("tiny-gpt2", {})
                host = e.get("target_host")
                return host if host in ("edge-1", "edge-2") else None

            until(gpt2_on_edge, 60, "tiny-gpt2 placed on an edge host after the shift")
            until(
                lambda: any(
                    o[0] == "tiny-gpt2" and o[2] in ("edge-1", "edge-2") for o in load.recent(4)
                ),
                30,
                "tiny-gpt2 served at the edge",
            )
            victim = next(o[2] for o in reversed(load.outcomes) if o[2] in ("edge-1", "edge-2"))

            # The host serving it dies under load: requests keep succeeding.
            before = len(load.outcomes)
            system.kill(victim)

            def marked_down() -> bool:
                agents = {a["id"]: a["status"] for a in orch.get("/v1/agents").json()["data"]}
                return agents.get(victim) == "down"

            until(marked_down, 30, f"{victim} marked down")

            def replanned_without_victim() -> bool:
                p = orch.get("/v1/placement").json()
                return victim not in p["hosts"] and all(
                    e["target_host"] != victim for e in p["entries"]
                )

            until(replanned_without_victim, 30, "a plan without the dead host")
            until(lambda: len(load.outcomes) > before + 8, 30, "requests after the crash")
            after = load.outcomes[before:]
            assert all(o[1] == 200 for o in after), Counter(o[1] for o in after)
            assert all(o[2] != victim for o in after[-4:])

            # The orchestrator restarts: agents, rates and the decision come back; the
            # gateway keeps routing on its last table meanwhile.
            agents_before = {a["id"] for a in orch.get("/v1/agents").json()["data"]}
            system.terminate("orchestrator")
            time.sleep(1.0)
            system.launch("orchestrator")
            system.wait_ready("orchestrator", 60)
            agents_after = {a["id"]: a["status"] for a in orch.get("/v1/agents").json()["data"]}
            assert set(agents_after) == agents_before
            assert orch.get("/v1/placement").json()["computed_at"] is not None
            survivors = {"edge-1", "edge-2", "cloud"} - {victim}
            until(
                lambda: (
                    {a["id"] for a in orch.get("/v1/agents").json()["data"] if a["status"] == "up"}
                    == survivors
                ),
                30,
                "the live agents are up again after the restart",
            )
            n = len(load.outcomes)
            until(lambda: len(load.outcomes) > n + 4, 30, "requests after the restart")

        # Nothing lost, no 5xx over the whole run.
        statuses = Counter(o[1] for o in load.outcomes)
        assert not load.errors, load.errors[:5]
        assert set(statuses) == {200}, statuses
        served = Counter(o[2] for o in load.outcomes)
        print(
            f"\nwhole system: {len(load.outcomes)} requests, statuses {dict(statuses)}, "
            f"served by {dict(served)}, {time.monotonic() - t_start:.0f} s"
        )
