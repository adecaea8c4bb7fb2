"""Gateway overhead benchmark: the same requests straight to a backend and through the
gateway, in one run, on loopback.

    python bench/gateway.py [--rate 200] [--seconds 10] [--json FILE] [--quick]

Three processes: a minimal OpenAI-compatible upstream (it also answers `GET /v1/routing`
with a table that has the benchmark model resident on itself, standing in for the
orchestrator), the real gateway (`genedge gateway`, its own process, as deployed), and this
load generator. The upstream does no generation on purpose: what is measured is the time
the gateway adds, and a real model's variance would drown it. Point `--upstream URL` at a
real agent (and `--model`) to measure against one.

Phases (all bounded; the script stops by itself):
1. latency: open-loop at `--rate` requests/s, non-streamed, in alternating one-second
   blocks (direct, gateway, direct, ...), so that each path carries the stated rate and
   both see the same slowly varying machine; added p50/p99 = gateway percentile minus
   direct percentile. `--interleave` sends both paths at once instead (the machine then
   carries twice the rate: a harsher test on 2 cores).
2. streaming: time to the first streamed chunk, direct versus gateway, same blocks.
3. throughput: rising offered rates through the gateway (and the same directly, for the
   load generator's own ceiling); the highest rate held = every request answered 200 and
   at least 95% of the offered rate completed within the step.

Targets (issue 4): added p50 <= 1 ms and p99 <= 5 ms at 200 requests/s on 2 cores; added
time to first streamed chunk <= 2 ms. Printed with their margins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench-model"
JSON = {"content-type": "application/json"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8}


# ---------------------------------------------------------------------- the upstream


def upstream_app(url: str, chunks: int, gap_s: float) -> Any:
    """A raw ASGI OpenAI-style backend: fixed answers, SSE with `chunks` events `gap_s`
    apart, and a routing table naming itself as the host where `bench-model` is resident."""
    from genedge.contract import RouteHost, RouteModel, RoutingTable

    answer = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "General Kenobi."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        }
    ).encode()
    table = RoutingTable(
        generated_at=time.time(),
        wan_rtt_s=0.08,
        models=[
            RouteModel(
                model=MODEL,
                kind="text",
                target_host="bench-edge",
                target_level="resident",
                hosts=[
                    RouteHost(
                        host="bench-edge",
                        url=url,
                        level="resident",
                        state="ready",
                        planned=True,
                        infer_s=0.001,
                    )
                ],
            )
        ],
    )
    table_json = table.model_dump_json().encode()
    headers = [(b"content-type", b"application/json"), (b"x-served-by", b"bench-edge")]
    sse_headers = [(b"content-type", b"text/event-stream"), (b"x-served-by", b"bench-edge")]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while True:
                    msg = await receive()
                    await send({"type": msg["type"] + ".complete"})
                    if msg["type"] == "lifespan.shutdown":
                        return
            return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        path = scope["path"]
        if path == "/v1/routing":
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": table_json})
            return
        if path == "/v1/arrivals":
            await send({"type": "http.response.start", "status": 202, "headers": headers})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        if b'"stream":true' not in body.replace(b" ", b""):
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": answer})
            return
        await send({"type": "http.response.start", "status": 200, "headers": sse_headers})
        for i in range(chunks):
            if i and gap_s:
                await asyncio.sleep(gap_s)
            event = {"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]}
            data = f"data: {json.dumps(event)}\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    return app


def serve_upstream(port: int, chunks: int, gap_s: float) -> None:
    import uvicorn

    app = upstream_app(f"http://127.0.0.1:{port}", chunks, gap_s)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f} s")


@dataclass
class Procs:
    items: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.items.append(subprocess.Popen(args, env={**os.environ, **(env or {})}, cwd=REPO))

    def stop(self) -> None:
        for p in self.items:
            p.terminate()
        for p in self.items:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


# ---------------------------------------------------------------------- load


@dataclass
class Sample:
    ok: bool
    total_s: float
    ttfb_s: float | None = None
    served_by: str | None = None


async def one(session: Any, url: str, body: bytes, stream: bool) -> Sample:
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=JSON) as r:
            if not stream:
                await r.read()
                return Sample(
                    r.status == 200, time.perf_counter() - t0, None, r.headers.get("x-served-by")
                )
            ttfb = None
            async for chunk in r.content.iter_any():
                if ttfb is None and chunk:
                    ttfb = time.perf_counter() - t0
            return Sample(r.status == 200, time.perf_counter() - t0, ttfb)
    except Exception:
        return Sample(False, time.perf_counter() - t0)


async def open_loop(
    client: Any, urls: list[str], rate_per_path: float, seconds: float, stream: bool
) -> tuple[dict[str, list[Sample]], float]:
    """Requests at fixed times (not closed-loop), alternating between the paths; returns
    the samples per path and the wall time until the last answer."""
    body = json.dumps({**CHAT, "stream": stream}).encode()
    n = int(rate_per_path * seconds)
    interval = 1.0 / (rate_per_path * len(urls))
    tasks: dict[str, list[asyncio.Task[Sample]]] = {u: [] for u in urls}
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(n * len(urls)):
        at = start + i * interval
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        u = urls[i % len(urls)]
        tasks[u].append(asyncio.create_task(one(client, u, body, stream)))
    out = {u: list(await asyncio.gather(*ts)) for u, ts in tasks.items()}
    return out, loop.time() - start


async def alternating(
    client: Any,
    urls: list[str],
    rate: float,
    seconds: float,
    stream: bool,
    args: argparse.Namespace,
) -> dict[str, list[Sample]]:
    """Each path `seconds` long at `rate`: interleaved, or in alternating 1 s blocks."""
    if args.interleave:
        return (await open_loop(client, urls, rate, seconds, stream))[0]
    out: dict[str, list[Sample]] = {u: [] for u in urls}
    for _ in range(max(1, round(seconds))):
        for u in urls:
            res, _ = await open_loop(client, [u], rate, 1.0, stream)
            out[u] += res[u]
    return out


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def summary(samples: list[Sample]) -> dict[str, float]:
    lat = [s.total_s * 1000 for s in samples if s.ok]
    ttfb = [s.ttfb_s * 1000 for s in samples if s.ok and s.ttfb_s is not None]
    out = {
        "n": len(samples),
        "errors": sum(not s.ok for s in samples),
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "mean_ms": statistics.fmean(lat) if lat else float("nan"),
    }
    if ttfb:
        out |= {"ttfb_p50_ms": pct(ttfb, 50), "ttfb_p99_ms": pct(ttfb, 99)}
    return out


async def run_load(args: argparse.Namespace, direct: str, gateway: str) -> dict[str, Any]:
    import aiohttp

    # aiohttp, not httpx, for the load: its per-request cost is a quarter of httpx's, so the
    # generator itself disturbs the measurement less (both paths pay it equally anyway).
    connector = aiohttp.TCPConnector(limit=1000)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        d_url, g_url = f"{direct}/v1/chat/completions", f"{gateway}/v1/chat/completions"
        # Warm up both paths (connections, the gateway's first table, imports).
        # Warm up both paths at the measured rate: connections on every hop, first-call
        # code paths, the gateway's first table. (The first half second after a start shows
        # 20-40 ms tails while connections open; that is start-up, not steady state.)
        for u in (d_url, g_url):
            await open_loop(client, [u], args.rate, 2.0, False)
            await open_loop(client, [u], 50, 0.5, True)

        how = "interleaved" if args.interleave else "in alternating 1 s blocks"
        print(f"latency: {args.rate:g} req/s per path for {args.seconds:g} s, {how} ...")
        lat = await alternating(client, [d_url, g_url], args.rate, args.seconds, False, args)
        d, g = summary(lat[d_url]), summary(lat[g_url])
        served = {s.served_by for s in lat[g_url] if s.ok}

        print("streaming: time to the first chunk ...")
        st = await alternating(client, [d_url, g_url], 50, args.seconds / 2, True, args)
        ds, gs = summary(st[d_url]), summary(st[g_url])

        print("throughput: rising offered rates ...")
        ramp: list[dict[str, Any]] = []
        held = {"direct": 0.0, "gateway": 0.0}
        for rate in args.ramp:
            row: dict[str, Any] = {"offered_rps": rate}
            for name, url in (("direct", d_url), ("gateway", g_url)):
                if held[name] < 0:
                    continue
                res, wall = await open_loop(client, [url], rate, args.step_seconds, False)
                s = summary(res[url])
                achieved = (s["n"] - s["errors"]) / wall
                ok = s["errors"] == 0 and achieved >= 0.95 * rate
                row[name] = {**s, "achieved_rps": achieved, "held": ok}
                if ok:
                    held[name] = rate
                else:
                    held[name] = -held[name] - 1e-9  # stop ramping this path
            ramp.append(row)
            print(
                f"  {rate:>6g} req/s offered: "
                + ", ".join(
                    f"{k} {v['achieved_rps']:.0f}/s p99 {v['p99_ms']:.1f} ms"
                    f"{'' if v['held'] else ' (not held)'}"
                    for k, v in row.items()
                    if isinstance(v, dict)
                )
            )
            if all(h < 0 for h in held.values()):
                break
    return {
        "direct": d,
        "gateway": g,
        "gateway_served_by": sorted(x for x in served if x),
        "stream_direct": ds,
        "stream_gateway": gs,
        "ramp": ramp,
        "max_rps": abs(held["gateway"]),
        "direct_max_rps": abs(held["direct"]),
    }


# ---------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=200.0, help="requests/s per path")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    p.add_argument("--step-seconds", type=float, default=3.0, help="length of a ramp step")
    p.add_argument(
        "--ramp",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[200, 400, 600, 800, 1000, 1300, 1600, 2000, 2500, 3000],
    )
    p.add_argument("--chunks", type=int, default=4, help="streamed events per answer")
    p.add_argument("--gap-ms", type=float, default=5.0, help="between streamed events")
    p.add_argument("--interleave", action="store_true", help="both paths at once")
    p.add_argument("--upstream", help="an existing backend to use instead of the built-in one")
    p.add_argument("--quick", action="store_true", help="shorter phases (~30 s)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.chunks, args.gap_ms / 1000)
        return 0
    if args.quick:
        args.seconds, args.step_seconds = 5.0, 2.0
        args.ramp = [200, 400, 800, 1200, 1600]

    procs = Procs()
    state = tempfile.mkdtemp(prefix="genedge-gwbench-")
    try:
        if args.upstream:
            upstream = args.upstream.rstrip("/")
        else:
            uport = free_port()
            upstream = f"http://127.0.0.1:{uport}"
            procs.start(
                [
                    sys.executable,
                    __file__,
                    "--serve-upstream",
                    str(uport),
                    "--chunks",
                    str(args.chunks),
                    "--gap-ms",
                    str(args.gap_ms),
                ]
            )
            wait_http(f"{upstream}/v1/routing")
        gport = free_port()
        gateway = f"http://127.0.0.1:{gport}"
        procs.start(
            [sys.executable, "-m", "launcher.cli", "gateway", "--port", str(gport)],
            env={
                "GW_ORCHESTRATOR_URL": upstream,
                "GW_STATE_DIR": state,
                "GW_LOG_LEVEL": "warning",
            },
        )
        wait_http(f"{gateway}/readyz")
        res = asyncio.run(run_load(args, upstream, gateway))
    finally:
        procs.stop()

    d, g, ds, gs = res["direct"], res["gateway"], res["stream_direct"], res["stream_gateway"]
    added = {
        "added_p50_ms": g["p50_ms"] - d["p50_ms"],
        "added_p99_ms": g["p99_ms"] - d["p99_ms"],
        "added_ttfb_ms": gs["ttfb_p50_ms"] - ds["ttfb_p50_ms"],
        "added_ttfb_p99_ms": gs["ttfb_p99_ms"] - ds["ttfb_p99_ms"],
    }
    print()
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'':<22}{'direct':>10}{'gateway':>10}{'added':>10}")
    for key, label in (("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms")):
        print(f"{label:<22}{d[key]:>10.2f}{g[key]:>10.2f}{g[key] - d[key]:>10.2f}")
    for key, label in (
        ("ttfb_p50_ms", "first chunk p50 ms"),
        ("ttfb_p99_ms", "first chunk p99 ms"),
    ):
        print(f"{label:<22}{ds[key]:>10.2f}{gs[key]:>10.2f}{gs[key] - ds[key]:>10.2f}")
    print(f"{'errors':<22}{d['errors']:>10}{g['errors']:>10}")
    print(f"{'max rps held':<22}{res['direct_max_rps']:>10g}{res['max_rps']:>10g}")
    print(f"gateway routed to: {', '.join(res['gateway_served_by'])}")
    targets = [
        ("added p50 <= 1 ms", added["added_p50_ms"], 1.0),
        ("added p99 <= 5 ms", added["added_p99_ms"], 5.0),
        ("added first chunk <= 2 ms", added["added_ttfb_ms"], 2.0),
    ]
    for name, value, limit in targets:
        verdict = "met" if value <= limit else "MISSED"
        print(f"target {name}: {value:.2f} ms ({verdict}, margin {limit - value:+.2f} ms)")
    if args.json:
        doc = {
            **added,
            "max_rps": res["max_rps"],
            "direct_max_rps": res["direct_max_rps"],
            "rate_per_path": args.rate,
            "method": "interleaved" if args.interleave else "alternating 1 s blocks",
            "cpus": os.cpu_count(),
            **res,
        }
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
