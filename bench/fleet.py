"""Fleet scale: the real orchestrator against 100, 500 and 1,000 simulated agents.

    python bench/fleet.py [--quick] [--json FILE] [--models 200] [--interval 5] [--seconds 30]

The orchestrator runs as its own process (`genedge orchestrator`, a fresh SQLite file per
fleet size). The agents are asyncio tasks of this process that speak the real protocol over
loopback: each registers with `--models` models (statuses with measured profiles, sizes and
times varied per host), then heartbeats every `--interval` seconds (its whole model list, as
the edge agent does), with a random phase; two "gateways" post arrivals (with batch ids)
every second. The agents' URLs point at one small HTTP server here that accepts every
`PUT .../level` the reconciler sends. Bodies are serialised once per agent, so this process
spends its time sending, not building JSON.

Reported per fleet size (`agents.{N}` in the JSON): heartbeat latency p50/p99 (ms, client
side, over the last `--seconds` after every agent registered), heartbeats answered per
second against the offered rate, the time of one full plan (`POST /v1/placement/plan` with
the default algorithm, and the planner's own `seconds` of the decision it stored), the
orchestrator's RSS (MB) and its registry's size on disk (MB). Target on 2 cores: 1,000
agents at a 5 s heartbeat with p99 under 100 ms and a full plan under 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from genedge.contract import (  # noqa: E402
    AgentRegistration,
    HostFacts,
    ModelProfile,
    ModelStatus,
)

GB = 1_000_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_status(rng: random.Random, host: str, i: int) -> dict[str, Any]:
    kind = "image" if i % 3 == 0 else "text"
    size = int(rng.uniform(0.5, 8) * GB)
    profile = ModelProfile(
        model_id=f"m{i:04d}",
        kind=kind,  # type: ignore[arg-type]
        architecture="Simulated",
        host_fingerprint=f"fp-{host}",
        file_digest=f"d{i}",
        device="cuda:0",
        dtype="float16",
        params=size // 2,
        storage_bytes=size,
        resident_bytes=int(size * 1.1),
        peak_bytes=int(size * 1.3),
        memory_method="cuda_allocated",
        load_cold_s=size / GB * rng.uniform(0.3, 0.6),
        load_warm_s=size / GB * rng.uniform(0.1, 0.3),
        load_ram_s=size / GB * rng.uniform(0.03, 0.08),
        generation_s=rng.uniform(0.2, 4.0),
        generation_what="simulated",
    )
    status = ModelStatus(
        id=f"m{i:04d}",
        kind=kind,  # type: ignore[arg-type]
        format="diffusers" if kind == "image" else "transformers",  # type: ignore[arg-type]
        architecture="Simulated",
        level="stored",  # type: ignore[arg-type]
        state="ready",  # type: ignore[arg-type]
        target_level="stored",  # type: ignore[arg-type]
        progress=1.0,
        storage_bytes=size,
        profile_status="done",  # type: ignore[arg-type]
        profile=profile,
    )
    return status.model_dump(mode="json")


def facts(host: str) -> dict[str, Any]:
    return HostFacts(
        host_id=host,
        hostname=host,
        fingerprint=f"fp-{host}",
        description="simulated H100",
        device="cuda:0",
        gpu_name="H100",
        gpu_total_bytes=80 * GB,
        device_budget_bytes=78 * GB,
        device_used_bytes=0,
        ram_total_bytes=512 * GB,
        ram_available_bytes=400 * GB,
        cache_budget_bytes=128 * GB,
        cache_used_bytes=0,
        disk_total_bytes=4000 * GB,
        disk_free_bytes=3000 * GB,
        disk_read_GBps=5.0,
        h2d_GBps=25.0,
        bandwidth_measured=True,
    ).model_dump(mode="json")


class Fleet:
    def __init__(self, n: int, models: int, interval: float, sink_url: str, token: str) -> None:
        self.n, self.interval = n, interval
        self.headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        self.bodies: dict[str, tuple[bytes, bytes]] = {}
        for a in range(n):
            host = f"sim-{a:04d}"
            rng = random.Random(a)
            ms = [model_status(rng, host, i) for i in range(models)]
            reg = AgentRegistration.model_validate(
                {
                    "agent_id": host,
                    "url": f"{sink_url}/a/{host}",
                    "facts": facts(host),
                    "models": ms,
                }
            )
            hb = {"facts": facts(host), "models": ms, "arrivals": {}, "pool": {}}
            self.bodies[host] = (
                json.dumps(reg.model_dump(mode="json")).encode(),
                json.dumps(hb).encode(),
            )
        self.latencies: list[float] = []
        self.errors = 0
        self.register_retries = 0
        self.measuring = False

    async def run_agent(self, client: httpx.AsyncClient, host: str, stop: asyncio.Event) -> None:
        reg, hb = self.bodies[host]
        while not stop.is_set():  # an overloaded orchestrator may time out: try again
            try:
                r = await client.post("/v1/agents/register", content=reg, headers=self.headers)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            self.register_retries += 1
            await asyncio.sleep(1.0)
        await asyncio.sleep(random.uniform(0, self.interval))
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = await client.post(
                    f"/v1/agents/{host}/heartbeat", content=hb, headers=self.headers
                )
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            took = time.perf_counter() - t0
            if self.measuring:
                if ok:
                    self.latencies.append(took)
                else:
                    self.errors += 1
            await asyncio.sleep(max(0.0, self.interval - took))


async def gateways(client: httpx.AsyncClient, token: str, stop: asyncio.Event) -> None:
    headers = {"authorization": f"Bearer {token}"}
    rng = random.Random(7)
    while not stop.is_set():
        for source in ("gw-a", "gw-b"):
            counts = {f"m{rng.randrange(200):04d}": rng.randrange(1, 20) for _ in range(20)}
            body = {"counts": counts, "source": source, "id": uuid.uuid4().hex}
            with contextlib.suppress(httpx.HTTPError):
                await client.post("/v1/arrivals", json=body, headers=headers)
        await asyncio.sleep(1.0)


async def level_sink(port: int) -> asyncio.AbstractServer:
    """Answers every request with 200 `{}` (the agents' `PUT level` and anything else)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: 2\r\n\r\n{}"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went, or the bench is over
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


def start_orchestrator(
    db: Path, port: int, tokens: dict[str, str], interval: float
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ORCH_DB_PATH": str(db),
        "ORCH_PORT": str(port),
        "ORCH_AGENT_TOKEN": tokens["agent"],
        "ORCH_GATEWAY_TOKEN": tokens["gateway"],
        "ORCH_OPERATOR_TOKEN": tokens["operator"],
        "ORCH_HEARTBEAT_INTERVAL_S": str(interval),
        "ORCH_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": "1",
    }
    exe = Path(sys.executable).with_name("genedge")
    return subprocess.Popen(
        [str(exe), "orchestrator"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


async def one_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    tokens = {k: secrets.token_urlsafe(24) for k in ("agent", "gateway", "operator")}
    sink_port, orch_port = free_port(), free_port()
    sink = await level_sink(sink_port)
    t_build = time.perf_counter()
    fleet = Fleet(n, args.models, args.interval, f"http://127.0.0.1:{sink_port}", tokens["agent"])
    build_s = time.perf_counter() - t_build
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "orch.sqlite"
        proc = start_orchestrator(db, orch_port, tokens, args.interval)
        base = f"http://127.0.0.1:{orch_port}"
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        stop = asyncio.Event()
        try:
            async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
                for _ in range(300):
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.1)
                t_reg = time.perf_counter()
                tasks = [
                    asyncio.create_task(fleet.run_agent(client, h, stop)) for h in fleet.bodies
                ]
                tasks.append(asyncio.create_task(gateways(client, tokens["gateway"], stop)))
                op = {"authorization": f"Bearer {tokens['operator']}"}
                up = 0
                while time.perf_counter() - t_reg < args.settle_timeout:  # every agent up
                    try:
                        r = await client.get("/v1/agents", headers=op)
                        up = sum(a["status"] == "up" for a in r.json()["data"])
                    except httpx.HTTPError:
                        pass
                    if up >= n:
                        break
                    await asyncio.sleep(0.5)
                register_s = time.perf_counter() - t_reg
                fleet.measuring = True
                t0 = time.perf_counter()
                await asyncio.sleep(args.seconds / 2)
                t_plan = time.perf_counter()
                plan: dict[str, Any] = {}
                plan_wall_s: float | None = None
                try:
                    r = await client.post("/v1/placement/plan", json={}, headers=op, timeout=600)
                    plan_wall_s = time.perf_counter() - t_plan
                    plan = r.json() if r.status_code == 200 else {}
                except httpx.HTTPError:
                    pass  # no answer within 600 s: recorded as None

                await asyncio.sleep(args.seconds / 2)
                window = time.perf_counter() - t0
                fleet.measuring = False
                try:
                    placement = (await client.get("/v1/placement", headers=op)).json()
                except httpx.HTTPError:
                    placement = {}
                rss = psutil.Process(proc.pid).memory_info().rss / 2**20
                db_mb = sum(p.stat().st_size for p in Path(tmp).glob("orch.sqlite*")) / 2**20
                stop.set()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            sink.close()
    lat = sorted(fleet.latencies)

    def pct(q: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    return {
        "models_per_agent": args.models,
        "interval_s": args.interval,
        "heartbeat_p50_ms": pct(0.50),
        "heartbeat_p99_ms": pct(0.99),
        "heartbeat_mean_ms": 1000 * statistics.fmean(lat) if lat else float("nan"),
        "heartbeats_per_s": len(lat) / window,
        "offered_per_s": n / args.interval,
        "errors": fleet.errors,
        "plan_s": plan_wall_s,
        "plan_solver_s": plan.get("seconds"),
        "plan_algorithm": plan.get("algorithm"),
        "stored_plan_s": placement.get("seconds"),
        "register_all_s": register_s,
        "agents_up": up,  # fewer than asked: the orchestrator did not keep up
        "register_retries": fleet.register_retries,
        "rss_mb": rss,
        "registry_mb": db_mb,
        "bench_build_s": build_s,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 agents only, 10 s")
    ap.add_argument("--sizes", type=int, nargs="*", default=[100, 500, 1000])
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument(
        "--settle-timeout", type=float, default=300.0, help="seconds for every agent to be up"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.seconds = [100], 10.0
    out: dict[str, Any] = {"agents": {}, "cpus": os.cpu_count()}
    print(
        f"{'agents':>7} {'up':>5} {'hb p50 ms':>10} {'hb p99 ms':>10} {'hb/s':>7} {'offered':>8} "
        f"{'errors':>6} {'plan s':>7} {'rss MB':>7} {'db MB':>6}"
    )
    for n in args.sizes:
        r = asyncio.run(one_size(n, args))
        out["agents"][str(n)] = r
        print(
            f"{n:>7} {r['agents_up']:>5} {r['heartbeat_p50_ms']:>10.1f} "
            f"{r['heartbeat_p99_ms']:>10.1f} "
            f"{r['heartbeats_per_s']:>7.1f} {r['offered_per_s']:>8.1f} {r['errors']:>6} "
            f"{r['plan_s'] if r['plan_s'] is not None else float('nan'):>7.2f} "
            f"{r['rss_mb']:>7.0f} {r['registry_mb']:>6.1f}",
            flush=True,
        )
        if args.json:  # after every size: a later one that fails keeps the earlier ones
            args.json.write_text(json.dumps(out, indent=2))
    if 1000 in args.sizes:
        r = out["agents"]["1000"]
        for name, ok in (
            ("heartbeat p99 < 100 ms at 1,000 agents", r["heartbeat_p99_ms"] < 100),
            ("full plan < 2 s at 1,000 agents", (r["plan_s"] or float("inf")) < 2.0),
            (
                "every offered heartbeat answered",
                r["heartbeats_per_s"] >= 0.95 * r["offered_per_s"],
            ),
        ):
            print(f"  [{'met ' if ok else 'MISSED'}] {name}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
