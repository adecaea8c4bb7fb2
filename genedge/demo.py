"""`genedge demo`: the main job, the whole system so far (the gateway is still to come).

Prepares the demo model store once (under `--state`), starts an orchestrator and two edge
agents with small memory budgets as real processes on loopback, sends real generation
requests to an agent (chat with the real SmolLM2, a streamed completion, an image), moves a
model to `resident`, sends a burst so the orchestrator sees a rate surge, replans and
reconciles, and prints the placement table (model, rate, target, actual level per host, why)
and a what-if plan. With `--once` it stops everything and exits; otherwise it keeps serving
until Ctrl-C.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _served(r: httpx.Response) -> str:
    where = r.headers.get("x-served-by", "?")
    level = r.headers.get("x-served-level", "?")
    pre = r.headers.get("x-preload-ms")
    paid = f", paid a {pre} ms preload from {r.headers.get('x-preload-tier')}" if pre else ""
    return f"served by {where} ({level}{paid})"


def _mb(n: int | None) -> str:
    return "-" if not n else f"{n / 1e6:.1f}"


def _print_models(client: httpx.Client) -> None:
    doc = client.get("/v1/models").json()
    print(
        f"\n{'model':<24}{'kind':<7}{'level':<10}{'state':<9}{'MB on device':>13}"
        f"{'MB disk':>9}{'profile':>9}{'cold s':>8}{'warm s':>8}{'ram s':>8}{'gen s':>8}"
    )
    for m in doc["data"]:
        p = m.get("profile") or {}

        def num(key: str, p: dict = p) -> str:
            return f"{p[key]:.3f}" if key in p else "-"

        print(
            f"{m['id']:<24}{m['kind']:<7}{m['level']:<10}{m['state']:<9}"
            f"{_mb(m['memory_bytes']):>13}{_mb(m['storage_bytes']):>9}{m['profile_status']:>9}"
            f"{num('load_cold_s'):>8}{num('load_warm_s'):>8}{num('load_ram_s'):>8}"
            f"{num('generation_s'):>8}"
        )
    for b in doc.get("bad_folders", []):
        print(f"  (skipped folder {b['path']}: {b['reason']})")


def _requests(client: httpx.Client, models: list[str], state: Path) -> bool:
    ok = True
    text_model = "smollm2-135m-instruct" if "smollm2-135m-instruct" in models else "tiny-llama"
    t0 = time.perf_counter()
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": text_model,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 24,
            "temperature": 0,
        },
    )
    dt = time.perf_counter() - t0
    if r.status_code == 200:
        answer = r.json()["choices"][0]["message"]["content"].strip().replace("\n", " ")
        print(f"chat      {text_model}: {answer!r}\n          {dt:.2f} s, {_served(r)}")
    else:
        ok = False
        print(f"chat      {text_model}: HTTP {r.status_code} {r.text}")

    t0 = time.perf_counter()
    first = None
    pieces: list[str] = []
    with client.stream(
        "POST",
        "/v1/completions",
        json={"model": "tiny-gpt2", "prompt": "Edge servers", "max_tokens": 12, "stream": True},
    ) as s:
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                if first is None:
                    first = time.perf_counter() - t0
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    ok = False
                    print(f"stream    error event: {chunk['error']}")
                else:
                    pieces.append(chunk["choices"][0]["text"])
        print(
            f"stream    tiny-gpt2 (random weights): {len(pieces)} chunks, first after "
            f"{(first or 0) * 1000:.0f} ms, {time.perf_counter() - t0:.2f} s total, {_served(s)}"
        )

    t0 = time.perf_counter()
    r = client.post(
        "/v1/images/generations",
        json={"model": "tiny-sd", "prompt": "a lighthouse at dusk", "steps": 4, "seed": 7},
    )
    if r.status_code == 200:
        png = base64.b64decode(r.json()["data"][0]["b64_json"])
        out = state / "demo-image.png"
        out.write_bytes(png)
        print(
            f"image     tiny-sd (random weights): {len(png)} byte PNG -> {out}\n"
            f"          {time.perf_counter() - t0:.2f} s, {_served(r)}"
        )
    else:
        ok = False
        print(f"image     tiny-sd: HTTP {r.status_code} {r.text}")

    r = client.put(f"/v1/models/{text_model}/level", json={"level": "resident", "wait": True})
    print(f"level     {text_model} -> resident: HTTP {r.status_code}, now {r.json().get('level')}")
    t0 = time.perf_counter()
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": text_model,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 8,
            "temperature": 0,
        },
    )
    print(f"chat      {text_model} again: {time.perf_counter() - t0:.2f} s, {_served(r)}")
    ok = ok and r.status_code == 200
    r = client.post("/v1/images/generations", json={"model": "tiny-sd", "prompt": "x", "n": 99})
    print(f"bad input n=99: HTTP {r.status_code} {r.json()['error']['message']}")
    return ok


class _Procs:
    """The demo's service processes, each logging to a file; stopped with SIGINT, then killed."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.procs: list[tuple[str, subprocess.Popen[bytes], Any]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.state / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(
            [sys.executable, "-m", "genedge.cli", *args], env=env, stdout=log, stderr=log
        )
        self.procs.append((name, proc, log))
        return proc

    def check(self) -> None:
        for name, proc, _ in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode} "
                    f"(see {self.state / (name + '.log')})"
                )

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _, proc, log in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def _wait(client: httpx.Client, procs: _Procs, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check()
        try:
            if client.get(path).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{client.base_url}{path} not ready after {timeout:.0f} s")


def _target(entry: dict[str, Any]) -> str:
    """A placement entry's target as `cloud` or `host/level`."""
    if entry["target_host"] is None:
        return "cloud"
    return f"{entry['target_host']}/{entry['target_level']}"


def _print_placement(orch: httpx.Client) -> None:
    p = orch.get("/v1/placement").json()
    if not p.get("computed_at"):
        print("no placement computed yet")
        return
    cost = p["cost"]
    print(
        f"\nplacement by {p['algorithm']} ({p['trigger']}), {p['seconds'] * 1000:.1f} ms, "
        f"cost {cost['total']:.2f} = delay {cost['delay']:.2f} + resource "
        f"{cost['resource']:.3f} + cloud {cost['cloud']:.2f} + transition "
        f"{cost['transition']:.2f}"
    )
    print(f"{'model':<24}{'req/s':>7}  {'target':<22}{'actual':<40}why")
    for e in p["entries"]:
        target = _target(e)
        actual = ", ".join(f"{h}:{lvl}" for h, lvl in sorted(e["actual"].items()))
        print(f"{e['model']:<24}{e['rate_rps']:>7.3f}  {target:<22}{actual:<40}{e['why']}")


def run_demo(state: Path, *, once: bool, port: int = 0) -> int:
    """The whole system so far on loopback: an orchestrator and two edge agents with small
    memory budgets over the demo store; real requests; the placement that follows."""
    from edge_agent.adapters.demo_store import build_demo_store

    state = state.resolve()
    store = state / "models"
    print(f"preparing the demo model store in {store} (built once, then reused) ...")
    t0 = time.perf_counter()
    built = build_demo_store(store)
    print(
        f"  {len(built)} models ready in {time.perf_counter() - t0:.1f} s: "
        f"{', '.join(p.name for p in built)}"
    )
    token = "demo-token"
    orch_port = _free_port()
    ports = {"edge-1": port or _free_port(), "edge-2": _free_port()}
    # edge-1 can hold SmolLM2 (~270 MB) resident; edge-2 only the small models.
    budgets = {"edge-1": 400 * 10**6, "edge-2": 120 * 10**6}
    base_env = dict(os.environ)
    procs = _Procs(state)
    orch_env = dict(
        base_env,
        ORCH_DB_PATH=str(state / "orchestrator.sqlite"),
        ORCH_TOKEN=token,
        ORCH_PORT=str(orch_port),
        ORCH_SLOT_S="15",
        ORCH_HEARTBEAT_INTERVAL_S="1",
        ORCH_LOG_LEVEL=base_env.get("ORCH_LOG_LEVEL", "info"),
    )
    print(
        f"starting the orchestrator on http://127.0.0.1:{orch_port} and agents "
        f"{', '.join(f'{h} on :{p}' for h, p in ports.items())} (logs in {state})"
    )
    procs.start("orchestrator", ["orchestrator"], orch_env)
    for host, p in ports.items():
        env = dict(
            base_env,
            EDGE_STORE_DIR=str(store),
            EDGE_PROFILES_DIR=str(state / "profiles"),
            EDGE_HOST="127.0.0.1",
            EDGE_PORT=str(p),
            EDGE_HOST_ID=host,
            EDGE_DEVICE_BUDGET_BYTES=str(budgets[host]),
            EDGE_CACHE_BUDGET_BYTES=str(300 * 10**6),
            EDGE_ORCHESTRATOR_URL=f"http://127.0.0.1:{orch_port}",
            EDGE_ORCHESTRATOR_TOKEN=token,
            EDGE_LOG_LEVEL=base_env.get("EDGE_LOG_LEVEL", "warning"),
            EDGE_BANDWIDTH_PROBE_BYTES=str(64 * 1024 * 1024),
        )
        procs.start(host, ["agent"], env)
    ok = False
    try:
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{ports['edge-1']}", timeout=300) as client,
            httpx.Client(base_url=f"http://127.0.0.1:{orch_port}", timeout=60) as orch,
        ):
            _wait(orch, procs, "/healthz", 60)
            for p in ports.values():
                with httpx.Client(base_url=f"http://127.0.0.1:{p}", timeout=10) as c:
                    _wait(c, procs, "/readyz", 120)
            models = [m["id"] for m in client.get("/v1/models").json()["data"]]
            print(
                f"agents ready with {len(models)} models; waiting for their background "
                "profilers to measure them (reused on the next run) ..."
            )
            t0 = time.perf_counter()
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                procs.check()
                done = [
                    all(
                        m["profile_status"] not in ("pending", "running")
                        for m in httpx.get(f"http://127.0.0.1:{p}/v1/models").json()["data"]
                    )
                    for p in ports.values()
                ]
                if all(done):
                    break
                time.sleep(0.5)
            print(f"  profiles ready after {time.perf_counter() - t0:.1f} s\n")
            print("requests to edge-1:")
            ok = _requests(client, models, state)
            _print_models(client)
            # A burst: the agents report request counts in their heartbeats, the
            # orchestrator sees a surge, replans, and the reconciler moves models.
            burst = {"tiny-llama": 12, "tiny-gpt2": 6}
            print(f"\nburst: {', '.join(f'{n} x {m}' for m, n in burst.items())} to edge-1")
            for model, n in burst.items():
                for i in range(n):
                    client.post(
                        "/v1/completions",
                        json={"model": model, "prompt": f"burst {i}", "max_tokens": 4},
                    )
            print("waiting for the orchestrator to replan on the surge and reconcile ...")
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline:
                procs.check()
                p = orch.get("/v1/placement").json()
                if "surge" in (p.get("trigger") or "") and not p["pending_commands"]:
                    time.sleep(1.5)  # one more heartbeat, so "actual" shows the new levels
                    break
                time.sleep(0.5)
            _print_placement(orch)
            r = orch.post(
                "/v1/placement/plan",
                json={
                    "rates": {"tiny-sd": 0.5, "smollm2-135m-instruct": 0.2},
                    "algorithm": "exact",
                },
            )
            if r.status_code == 200:
                doc = r.json()
                print(
                    f"\nwhat-if (POST /v1/placement/plan, exact MILP, no side effects): "
                    f"tiny-sd at 0.5 req/s and smollm2 at 0.2 req/s; cost "
                    f"{doc['cost']['total']:.2f}"
                )
                for e in doc["entries"]:
                    target = _target(e)
                    print(f"  {e['model']:<24}{e['rate_rps']:>7.3f} req/s -> {target}")
            else:
                ok = False
                print(f"plan: HTTP {r.status_code} {r.text}")
            host = client.get("/v1/host").json()
            print(
                f"\nhost {host['host_id']}: {host['description']}; device {host['device']} "
                f"budget {_mb(host['device_budget_bytes'])} MB, used "
                f"{_mb(host['device_used_bytes'])} MB; disk read "
                f"{host['disk_read_GBps'] or 0:.2f} GB/s, host->device "
                f"{host['h2d_GBps'] or 0:.2f} GB/s"
            )
            if not once:
                print(
                    f"\nserving: orchestrator http://127.0.0.1:{orch_port}, agents "
                    f"{', '.join(f'http://127.0.0.1:{p}' for p in ports.values())} "
                    "(Ctrl-C stops them)"
                )
                while True:
                    procs.check()
                    time.sleep(1)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        ok = False
    finally:
        procs.stop()
    print("\ndemo finished" + ("" if ok else " WITH ERRORS"))
    return 0 if ok else 1
