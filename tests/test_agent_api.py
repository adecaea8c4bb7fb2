"""The agent over HTTP with real tiny diffusers/transformers models on CPU."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import agent_settings, poll_status, running_agent
from tests.fakes import FakeDevice, FakeLoader

CHAT = {
    "model": "tiny-llama",
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": 5,
    "temperature": 0,
}


async def test_models_and_host(store: Path, tmp_path: Path) -> None:
    async with running_agent(agent_settings(store, tmp_path)) as c:
        doc = (await c.get("/v1/models")).json()
        kinds = {m["id"]: (m["kind"], m["level"], m["state"]) for m in doc["data"]}
        assert kinds == {
            "tiny-gpt2": ("text", "stored", "ready"),
            "tiny-llama": ("text", "stored", "ready"),
            "tiny-sd": ("image", "stored", "ready"),
        }
        host = (await c.get("/v1/host")).json()
        assert host["host_id"] == "edge-test" and host["device"] == "cpu"
        assert host["gpu_name"] is None and host["nvml"] is False
        assert host["ram_total_bytes"] > 0 and host["disk_free_bytes"] > 0
        assert (await c.get("/healthz")).json()["status"] == "ok"
        assert (await c.get("/readyz")).status_code == 200


async def test_chat_loads_into_pool_then_hits(store: Path, tmp_path: Path) -> None:
    async with running_agent(agent_settings(store, tmp_path)) as c:
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] <= 5
        assert r.headers["x-served-by"] == "edge-test"
        assert r.headers["x-served-level"] == "pooled"
        assert float(r.headers["x-preload-ms"]) > 0 and r.headers["x-preload-tier"] == "disk"
        r2 = await c.post("/v1/chat/completions", json=CHAT)
        assert "x-preload-ms" not in r2.headers  # pool hit
        assert (
            r2.json()["choices"][0]["message"]["content"]
            == body["choices"][0]["message"]["content"]
        )
        models = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}
        assert models["tiny-llama"]["level"] == "pooled"
        assert models["tiny-llama"]["memory_bytes"] > 0
        # Another model switches the pool.
        r3 = await c.post(
            "/v1/completions", json={"model": "tiny-gpt2", "prompt": "a b", "max_tokens": 3}
        )
        assert r3.status_code == 200 and r3.json()["object"] == "text_completion"
        models = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}
        assert (
            models["tiny-llama"]["level"] == "stored" and models["tiny-llama"]["memory_bytes"] == 0
        )
        assert models["tiny-gpt2"]["level"] == "pooled"


async def _sse_lines(resp) -> list[dict]:
    out = []
    async for line in resp.aiter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


async def test_streaming_chat_and_completion(store: Path, tmp_path: Path) -> None:
    async with running_agent(agent_settings(store, tmp_path)) as c:
        plain = (await c.post("/v1/chat/completions", json=CHAT)).json()
        async with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            chunks = await _sse_lines(r)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
        assert text == plain["choices"][0]["message"]["content"]
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        req = {
            "model": "tiny-gpt2",
            "prompt": "the",
            "max_tokens": 4,
            "stream": True,
            "temperature": 0,
        }
        async with c.stream("POST", "/v1/completions", json=req) as r:
            chunks = await _sse_lines(r)
        assert all(ch["object"] == "text_completion" for ch in chunks)


async def test_image_generation(store: Path, tmp_path: Path) -> None:
    async with running_agent(agent_settings(store, tmp_path)) as c:
        r = await c.post(
            "/v1/images/generations",
            json={
                "model": "tiny-sd",
                "prompt": "a red cube",
                "n": 2,
                "size": "64x48",
                "steps": 2,
                "seed": 1,
            },
        )
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert len(data) == 2
        img = Image.open(io.BytesIO(base64.b64decode(data[0]["b64_json"])))
        assert img.format == "PNG" and img.size == (64, 48)


async def test_levels_over_http(store: Path, tmp_path: Path) -> None:
    async with running_agent(agent_settings(store, tmp_path)) as c:
        for level in ("cached", "resident", "resident", "cached", "stored"):
            r = await c.put("/v1/models/tiny-gpt2/level", json={"level": level, "wait": True})
            assert r.status_code == 200, r.text
            st = r.json()
            assert st["level"] == level and st["state"] == "ready"
            if level == "resident":
                assert st["memory_bytes"] > 0 and st["host_ram_bytes"] == 0
            if level == "cached":
                assert st["memory_bytes"] == 0 and st["host_ram_bytes"] > 0
        r = await c.put("/v1/models/tiny-gpt2/level", json={"level": "resident"})
        assert r.status_code in (200, 202)
        await c.app.state.agent.manager.wait_idle()  # type: ignore[attr-defined]
        r = await c.post(
            "/v1/completions", json={"model": "tiny-gpt2", "prompt": "x", "max_tokens": 2}
        )
        assert r.headers["x-served-level"] == "resident" and "x-preload-ms" not in r.headers
        bad = await c.put("/v1/models/tiny-gpt2/level", json={"level": "pooled"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "level"
        missing = await c.put("/v1/models/nope/level", json={"level": "resident"})
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "model_not_found"


async def test_eviction_during_a_running_stream(store: Path, tmp_path: Path) -> None:
    """Over HTTP, with a fake model whose generation waits on a gate: the request completes,
    and only then is the memory freed. (The same on a real model: test_real_drain.py.)"""
    dev = FakeDevice(10**12)
    loader = FakeLoader(dev)
    gate = threading.Event()
    loader.gates["tiny-llama"] = gate
    async with running_agent(agent_settings(store, tmp_path), loader=loader) as c:
        await c.put("/v1/models/tiny-llama/level", json={"level": "resident", "wait": True})
        held = dev.allocated
        assert held > 0
        async with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            lines = r.aiter_lines()
            assert (await anext(lines)).startswith("data: ")  # the role chunk, before any token
            r2 = await c.put("/v1/models/tiny-llama/level", json={"level": "stored"})
            assert r2.status_code == 202
            st = await poll_status(c, "tiny-llama", lambda s: s["state"] == "draining")
            assert st["in_flight"] == 1
            assert dev.allocated == held  # nothing freed under the running request
            gate.set()
            rest = [line async for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert not any('"error"' in line for line in rest)
        await c.app.state.agent.manager.wait_idle()  # type: ignore[attr-defined]
        st = (await c.get("/v1/models/tiny-llama/status")).json()
        assert st["level"] == "stored" and st["memory_bytes"] == 0
        assert dev.allocated == 0


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/chat/completions", {**CHAT, "max_tokens": 100000}, 422, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "temperature": 5}, 422, "temperature"),
        ("/v1/chat/completions", {"model": "tiny-llama", "messages": []}, 422, "messages"),
        ("/v1/chat/completions", {"model": "tiny-llama"}, 422, "messages"),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "pirate", "content": "x"}]},
            422,
            "messages.0.role",
        ),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": "x" * 40000}]},
            422,
            "messages",
        ),
        ("/v1/completions", {"model": "tiny-gpt2", "prompt": 3}, 422, "prompt"),
        ("/v1/images/generations", {"model": "tiny-sd", "prompt": "x", "n": 99}, 422, "n"),
        ("/v1/images/generations", {"model": "tiny-sd", "prompt": "x", "size": "big"}, 422, "size"),
        (
            "/v1/images/generations",
            {"model": "tiny-sd", "prompt": "x", "size": "4096x4096"},
            422,
            "size",
        ),
        (
            "/v1/images/generations",
            {"model": "tiny-sd", "prompt": "x", "size": "60x60"},
            422,
            "size",
        ),
        ("/v1/images/generations", {"model": "tiny-sd", "prompt": "x", "steps": 500}, 422, "steps"),
        ("/v1/images/generations", {"model": "tiny-llama", "prompt": "x"}, 400, None),
        ("/v1/chat/completions", {**CHAT, "model": "tiny-sd"}, 400, None),
        ("/v1/chat/completions", {**CHAT, "model": "nope"}, 404, None),
    ],
)
async def test_bad_requests(store: Path, tmp_path: Path, path, body, status, field) -> None:
    async with running_agent(agent_settings(store, tmp_path)) as c:
        r = await c.post(path, json=body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["type"] and err["message"]
        if field is not None:
            assert err["field"] == field


async def test_malformed_and_oversized_bodies(store: Path, tmp_path: Path) -> None:
    async with running_agent(agent_settings(store, tmp_path, max_body_bytes=2048)) as c:
        r = await c.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422 and "error" in r.json()
        r = await c.post(
            "/v1/chat/completions",
            json={**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]},
        )
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
        r = await c.get("/v1/nowhere")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


async def test_queue_overflow_gives_429(store: Path, tmp_path: Path) -> None:
    settings = agent_settings(
        store, tmp_path, max_concurrency_per_model=1, max_queue_per_model=1, retry_after_s=3
    )
    loader = FakeLoader(FakeDevice(10**12))
    gate = threading.Event()
    loader.gates["tiny-llama"] = gate
    async with running_agent(settings, loader=loader) as c:
        # One request runs (held at the gate), one waits in the queue, the third overflows.
        running = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT))
        queued = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT))
        await poll_status(c, "tiny-llama", lambda s: (s["in_flight"], s["queued"]) == (1, 1))
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "3"
        assert r.json()["error"]["type"] == "overloaded"
        gate.set()
        assert (await running).status_code == 200
        assert (await queued).status_code == 200
        metrics = (await c.get("/metrics")).text
        assert (
            'genedge_requests_total{endpoint="chat",model="tiny-llama",status="429"} 1.0' in metrics
        )


async def test_bad_folders_reported_and_failed_load_isolated(store: Path, tmp_path: Path) -> None:
    # A truncated weight file: reported at scan, the agent still starts.
    w = store / "tiny-gpt2" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    # A config that no longer matches its weights: passes the scan, fails at load.
    cfg_path = store / "tiny-llama" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hidden_size"] = cfg["hidden_size"] * 2
    cfg_path.write_text(json.dumps(cfg))
    async with running_agent(agent_settings(store, tmp_path)) as c:
        doc = (await c.get("/v1/models")).json()
        assert {m["id"] for m in doc["data"]} == {"tiny-llama", "tiny-sd"}
        assert any("truncated" in b["reason"] for b in doc["bad_folders"])
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and r.json()["error"]["type"] == "model_unavailable"
        st = (await c.get("/v1/models/tiny-llama/status")).json()
        assert st["state"] == "failed" and st["failed_reason"]
        assert (await c.get("/readyz")).json()["status"] == "degraded"
        r = await c.post(
            "/v1/images/generations", json={"model": "tiny-sd", "prompt": "x", "steps": 1}
        )
        assert r.status_code == 200  # other models keep serving


async def test_metrics_exposed(store: Path, tmp_path: Path) -> None:
    async with running_agent(agent_settings(store, tmp_path)) as c:
        await c.post("/v1/chat/completions", json=CHAT)
        text = (await c.get("/metrics")).text
        for name in (
            "genedge_preload_seconds_bucket",
            "genedge_loads_total",
            "genedge_requests_total",
            "genedge_queue_depth",
            "genedge_device_used_bytes",
            "genedge_gpu_memory_used_bytes",
        ):
            assert name in text
        assert 'tier="disk"' in text
