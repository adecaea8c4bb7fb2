"""`genedge demo`: the main job until the orchestrator and gateway exist.

Prepares the demo model store once (under `--state`), starts a real edge agent process on a
loopback port, sends it real generation requests (chat with the real SmolLM2 when installed,
a streamed completion, an image), moves a model to `resident`, and prints what happened:
where each request was served, what preload it paid, and the agent's model table with the
measured profiles. With `--once` it stops the agent and exits; otherwise it keeps the agent
serving until Ctrl-C.
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

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited with code {proc.returncode}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the agent was not ready after {timeout:.0f} s")


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


def run_demo(state: Path, *, once: bool, port: int = 0) -> int:
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
    port = port or _free_port()
    env = dict(os.environ)
    env.update(
        EDGE_STORE_DIR=str(store),
        EDGE_PROFILES_DIR=str(state / "profiles"),
        EDGE_HOST="127.0.0.1",
        EDGE_PORT=str(port),
        EDGE_HOST_ID="edge-demo",
        EDGE_LOG_LEVEL=env.get("EDGE_LOG_LEVEL", "warning"),
        EDGE_BANDWIDTH_PROBE_BYTES=str(64 * 1024 * 1024),
    )
    log = open(state / "agent.log", "wb")  # noqa: SIM115 - lives as long as the agent
    print(f"starting the edge agent on http://127.0.0.1:{port} (log: {state / 'agent.log'})")
    proc = subprocess.Popen(
        [sys.executable, "-m", "genedge.cli", "agent"], env=env, stdout=log, stderr=log
    )
    ok = False
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            _wait_ready(client, proc, timeout=120)
            models = [m["id"] for m in client.get("/v1/models").json()["data"]]
            print(
                f"agent ready with {len(models)} models; waiting for its background profiler "
                "to measure them (reused on the next run) ..."
            )
            t0 = time.perf_counter()
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                statuses = [m["profile_status"] for m in client.get("/v1/models").json()["data"]]
                if all(s not in ("pending", "running") for s in statuses):
                    break
                time.sleep(0.5)
            print(f"  profiles ready after {time.perf_counter() - t0:.1f} s\n")
            ok = _requests(client, models, state)
            _print_models(client)
            host = client.get("/v1/host").json()
            print(
                f"\nhost {host['host_id']}: {host['description']}; device {host['device']} "
                f"budget {_mb(host['device_budget_bytes'])} MB, used "
                f"{_mb(host['device_used_bytes'])} MB; disk read "
                f"{host['disk_read_GBps'] or 0:.2f} GB/s, host->device "
                f"{host['h2d_GBps'] or 0:.2f} GB/s"
            )
            if not once:
                print(f"\nthe agent keeps serving on http://127.0.0.1:{port} (Ctrl-C stops it)")
                proc.wait()
    except KeyboardInterrupt:
        pass
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"demo failed: {exc} (see {state / 'agent.log'})", file=sys.stderr)
        ok = False
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    print("\ndemo finished" + ("" if ok else " WITH ERRORS"))
    return 0 if ok else 1
