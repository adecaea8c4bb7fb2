"""The whole system as real processes on loopback: orchestrator, gateway, edge agents and a
cloud agent, each a `genedge` subcommand with its settings in the environment and its log in
the state directory. Used by `genedge up` and by the end-to-end tests.

A small supervisor rather than a Procfile runner: the tests need to kill one service,
restart another, and know each one's URL, which is a few lines here.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from genedge.auth import credentials_env, new_token, write_private

MB = 10**6


@dataclass(frozen=True)
class SystemCredentials:
    """Every credential of one run, fresh and random unless given (never a fixed default).

    `gateway_key` is what clients send to the gateway (it is configured there by its sha256);
    `agent_token` is the fleet's agent token; `gateway_token` is the gateway's at the
    orchestrator; `operator_token` reads the fleet and asks what-ifs.
    """

    gateway_key: str = field(default_factory=new_token)
    agent_token: str = field(default_factory=new_token)
    gateway_token: str = field(default_factory=new_token)
    operator_token: str = field(default_factory=new_token)

    def write(self, path: Path) -> Path:
        """`credentials.env` (issue 11's names), mode 0600."""
        path.parent.mkdir(parents=True, exist_ok=True)
        creds = {
            "gateway_key": self.gateway_key,
            "agent_token": self.agent_token,
            "gateway_token": self.gateway_token,
            "operator_token": self.operator_token,
        }
        write_private(path, credentials_env(creds))
        return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AgentSpec:
    """One agent: `device_budget_bytes` is what it may use for resident models plus the swap
    pool (small on purpose, so placement has trade-offs); role `cloud` is the gateway's
    cloud backend with an added WAN delay."""

    name: str
    device_budget_bytes: int
    cache_budget_bytes: int = 300 * MB
    role: str = "edge"
    wan_delay_ms: float = 0.0
    initial_levels: dict[str, str] = field(default_factory=dict)


@dataclass
class Service:
    name: str
    args: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    expected_down: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class SystemConfig:
    state: Path
    store: Path
    agents: list[AgentSpec]
    credentials: SystemCredentials = field(default_factory=SystemCredentials)
    slot_s: float = 15.0
    heartbeat_s: float = 1.0
    missed_heartbeats: int = 3
    rate_half_life_s: float = 60.0
    profile_on_start: bool = True
    profile_text_tokens: int = 8
    log_level: str = "info"
    extra_env: dict[str, str] = field(default_factory=dict)
    profiles_dir: Path | None = None  # default: <state>/profiles


class System:
    """Start, watch, kill and restart the services. `start()` returns when every service
    answers its readiness path; `stop()` stops them all (SIGINT, then SIGKILL)."""

    def __init__(self, cfg: SystemConfig) -> None:
        self.cfg = cfg
        cfg.state.mkdir(parents=True, exist_ok=True)
        self.services: dict[str, Service] = {}
        creds = cfg.credentials
        self.credentials_file = creds.write(cfg.state / "credentials.env")
        base = {**os.environ, **cfg.extra_env}
        base.setdefault("OMP_NUM_THREADS", "1")
        base.setdefault("HF_HUB_OFFLINE", "1")
        orch = free_port()
        orch_url = f"http://127.0.0.1:{orch}"
        self._add(
            "orchestrator",
            ["orchestrator"],
            {
                **base,
                "ORCH_HOST": "127.0.0.1",
                "ORCH_PORT": str(orch),
                "ORCH_DB_PATH": str(cfg.state / "orchestrator.sqlite"),
                "ORCH_AGENT_TOKEN": creds.agent_token,
                "ORCH_GATEWAY_TOKEN": creds.gateway_token,
                "ORCH_OPERATOR_TOKEN": creds.operator_token,
                "ORCH_SLOT_S": str(cfg.slot_s),
                "ORCH_HEARTBEAT_INTERVAL_S": str(cfg.heartbeat_s),
                "ORCH_MISSED_HEARTBEATS": str(cfg.missed_heartbeats),
                "ORCH_RATE_HALF_LIFE_S": str(cfg.rate_half_life_s),
                "ORCH_LOG_LEVEL": cfg.log_level,
            },
            orch,
            "/healthz",
        )
        for a in cfg.agents:
            port = free_port()
            self._add(
                a.name,
                ["agent"],
                {
                    **base,
                    "EDGE_HOST": "127.0.0.1",
                    "EDGE_PORT": str(port),
                    "EDGE_HOST_ID": a.name,
                    "EDGE_ROLE": a.role,
                    "EDGE_WAN_DELAY_MS": str(a.wan_delay_ms),
                    "EDGE_STORE_DIR": str(cfg.store),
                    # One profiles folder for every agent on this machine: same host kind,
                    # so a model is measured once and the others reuse it.
                    "EDGE_PROFILES_DIR": str(cfg.profiles_dir or cfg.state / "profiles"),
                    "EDGE_DEVICE_BUDGET_BYTES": str(a.device_budget_bytes),
                    "EDGE_CACHE_BUDGET_BYTES": str(a.cache_budget_bytes),
                    "EDGE_ORCHESTRATOR_URL": orch_url,
                    "EDGE_AGENT_TOKEN": creds.agent_token,
                    "EDGE_ADVERTISE_URL": f"http://127.0.0.1:{port}",
                    "EDGE_PROFILE_ON_START": str(cfg.profile_on_start).lower(),
                    "EDGE_PROFILE_TEXT_TOKENS": str(cfg.profile_text_tokens),
                    "EDGE_BANDWIDTH_PROBE_BYTES": str(64 * 1024 * 1024),
                    "EDGE_LOG_LEVEL": "warning" if cfg.log_level == "info" else cfg.log_level,
                    "EDGE_INITIAL_LEVELS": json.dumps(a.initial_levels),
                },
                port,
                "/readyz",
            )
        gw = free_port()
        self._add(
            "gateway",
            ["gateway"],
            {
                **base,
                "GW_HOST": "127.0.0.1",
                "GW_PORT": str(gw),
                "GW_ORCHESTRATOR_URL": orch_url,
                "GW_ORCHESTRATOR_TOKEN": creds.gateway_token,
                "GW_AGENT_TOKEN": creds.agent_token,
                "GW_API_KEY_HASHES": hashlib.sha256(creds.gateway_key.encode()).hexdigest(),
                "GW_STATE_DIR": str(cfg.state / "gateway"),
                "GW_LOG_LEVEL": cfg.log_level,
            },
            gw,
            "/healthz",
        )

    def _add(self, name: str, args: list[str], env: dict[str, str], port: int, ready: str) -> None:
        self.services[name] = Service(name, args, env, port, ready)

    def url(self, name: str) -> str:
        return self.services[name].url

    def headers(self, name: str) -> dict[str, str]:
        """The credential a client of service `name` sends: the gateway key, the operator
        token for the orchestrator, the agent token for an agent."""
        c = self.cfg.credentials
        token = {"gateway": c.gateway_key, "orchestrator": c.operator_token}.get(
            name, c.agent_token
        )
        return {"authorization": f"Bearer {token}"}

    def client(self, name: str, timeout: float = 60.0) -> httpx.Client:
        """An httpx client for service `name` with its credential."""
        return httpx.Client(base_url=self.url(name), headers=self.headers(name), timeout=timeout)

    @property
    def log_dir(self) -> Path:
        return self.cfg.state

    # ------------------------------------------------------------------ processes
    def launch(self, name: str) -> None:
        s = self.services[name]
        if s.log is not None:
            s.log.close()
        s.log = open(self.cfg.state / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        s.process = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", *s.args],
            env=s.env,
            stdout=s.log,
            stderr=subprocess.STDOUT,
        )
        s.expected_down = False

    def start(self, timeout: float = 180.0) -> None:
        self.launch("orchestrator")
        self.wait_ready("orchestrator", 60.0)
        for name in self.services:
            if name != "orchestrator":
                self.launch(name)
        for name in self.services:
            self.wait_ready(name, timeout)

    def wait_ready(self, name: str, timeout: float) -> None:
        s = self.services[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            try:
                if httpx.get(s.url + s.ready_path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready after {timeout:.0f} s (log: {self.log_of(name)})")

    def log_of(self, name: str) -> Path:
        return self.cfg.state / f"{name}.log"

    def check(self) -> None:
        """Raise if a service that should run has exited."""
        for s in self.services.values():
            p = s.process
            if p is not None and not s.expected_down and p.poll() is not None:
                raise RuntimeError(
                    f"{s.name} exited with code {p.returncode} (log: {self.log_of(s.name)})"
                )

    def kill(self, name: str) -> None:
        """Crash a service (SIGKILL): no goodbye to anyone."""
        s = self.services[name]
        s.expected_down = True
        if s.process is not None and s.process.poll() is None:
            s.process.kill()
            s.process.wait(10)

    def terminate(self, name: str, timeout: float = 20.0) -> None:
        s = self.services[name]
        s.expected_down = True
        p = s.process
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)

    def stop(self) -> None:
        order = [n for n in self.services if n not in ("orchestrator",)] + ["orchestrator"]
        for name in order:
            s = self.services[name]
            s.expected_down = True
            if s.process is not None and s.process.poll() is None:
                s.process.send_signal(signal.SIGINT)
        for name in order:
            self.terminate(name)
            s = self.services[name]
            if s.log is not None:
                s.log.close()
                s.log = None

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
