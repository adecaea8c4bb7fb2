"""The agent's generation safety (issue 11, trust boundaries): a request's cost is bounded
before it takes a model; a client that leaves stops its generation and frees the model (and
the swap pool); the profile queue is bounded; the profiler and text generation respect the
model's context. Real tiny models over a real HTTP server, fakes only for the layer above."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.adapters import host as hostmod
from edge_agent.adapters.profiler import PROBE_WORDS, Profiler
from edge_agent.adapters.store import inspect_folder
from edge_agent.adapters.torch_models import TextModel, TorchModelLoader
from edge_agent.core import limits as lim
from edge_agent.core.manager import ModelManager
from edge_agent.core.ports import ImageParams, TextParams
from edge_agent.core.serving import generate_text
from edge_agent.errors import InvalidRequest
from genedge.contract import ImageDefaults, ModelKind, ModelProfile, ProfileStatus
from launcher.cli import main as cli_main
from tests.conftest import agent_settings, poll_status, running_agent
from tests.fakes import FakeDevice, FakeLoader, FakeProfiler, fake_profile, manifest, msgs

LIMITS = lim.Limits(
    max_prompt_chars=1000,
    max_messages=10,
    max_tokens=1024,
    max_steps=100,
    max_image_side=2048,
    max_images=4,
    max_request_s=120.0,
)
SD_WHAT = "512x512, 20 steps with CFG, 1 image"


def _image(width: int, height: int, steps: int, n: int = 1, cfg: float = 7.5) -> ImageParams:
    return ImageParams(width=width, height=height, steps=steps, guidance_scale=cfg, n=n)


# --------------------------------------------------------------------------------------
# 1. The cost of a request, checked before any work starts
# --------------------------------------------------------------------------------------


def test_image_cost_scales_the_measured_generation_and_names_the_driver() -> None:
    prof = fake_profile("sd", ModelKind.IMAGE, generation_s=600.0, generation_what=SD_WHAT)
    d = ImageDefaults()
    # Within every per-field limit, yet 4x the pixels at a tenth of the steps: 240 s.
    with pytest.raises(InvalidRequest) as err:
        lim.check_image_cost(_image(1024, 1024, 2), prof, d, LIMITS)
    assert err.value.field == "size"
    assert "240" in err.value.message and "120" in err.value.message
    with pytest.raises(InvalidRequest) as err:
        lim.check_image_cost(_image(512, 512, 100), prof, d, LIMITS)
    assert err.value.field == "steps"
    with pytest.raises(InvalidRequest) as err:
        lim.check_image_cost(_image(512, 512, 20, n=4), prof, d, LIMITS)
    assert err.value.field == "n"
    # Small enough: the estimate, no refusal; no guidance halves it.
    assert lim.check_image_cost(_image(128, 128, 4), prof, d, LIMITS) == pytest.approx(7.5)
    est = lim.check_image_cost(_image(128, 128, 4, cfg=1.0), prof, d, LIMITS)
    assert est == pytest.approx(3.75)
    # Not profiled yet: only the per-field limits apply.
    assert lim.check_image_cost(_image(2048, 2048, 100, n=4), None, d, LIMITS) is None
    # No bound configured.
    unbounded = lim.Limits(**{**LIMITS.__dict__, "max_request_s": None})
    assert lim.check_image_cost(_image(1024, 1024, 2), prof, d, unbounded) == pytest.approx(240)


def test_text_cost_scales_by_tokens() -> None:
    prof = fake_profile("lm", generation_s=2.0)  # 16 new tokens in 2 s
    with pytest.raises(InvalidRequest) as err:
        lim.check_text_cost(TextParams(1000, 0.0, 1.0), prof, LIMITS)
    assert err.value.field == "max_tokens" and "125" in err.value.message
    assert lim.check_text_cost(TextParams(900, 0.0, 1.0), prof, LIMITS) == pytest.approx(112.5)
    assert lim.check_text_cost(TextParams(1000, 0.0, 1.0), None, LIMITS) is None
    # A description without a token count: the configured probe length.
    odd = fake_profile("lm", generation_s=2.0, generation_what="something else")
    est = lim.check_text_cost(TextParams(8, 0.0, 1.0), odd, LIMITS)
    assert est == pytest.approx(1.0)


async def test_costly_requests_are_refused_before_a_lease(store: Path, tmp_path: Path) -> None:
    async with running_agent(agent_settings(store, tmp_path, max_request_s=120)) as c:
        mgr: ModelManager = c.app.state.agent.manager  # type: ignore[attr-defined]
        sd = fake_profile("tiny-sd", ModelKind.IMAGE, generation_s=600.0, generation_what=SD_WHAT)
        mgr.set_profile("tiny-sd", sd, ProfileStatus.DONE)
        mgr.set_profile(
            "tiny-gpt2", fake_profile("tiny-gpt2", generation_s=2.0), ProfileStatus.DONE
        )
        big = {"model": "tiny-sd", "prompt": "x", "size": "1024x1024", "steps": 2}
        r = await c.post("/v1/images/generations", json=big)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request" and err["field"] == "size"
        assert "max_request_s" in err["message"]
        r = await c.post(
            "/v1/completions", json={"model": "tiny-gpt2", "prompt": "a", "max_tokens": 1000}
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "max_tokens"
        # Refused before any lease: nothing was queued or loaded.
        for model in ("tiny-sd", "tiny-gpt2"):
            st = (await c.get(f"/v1/models/{model}/status")).json()
            assert st["requests_total"] == 0 and st["memory_bytes"] == 0
        assert mgr.pool_model is None
        # A request the estimate allows runs on the real model.
        small = {"model": "tiny-sd", "prompt": "x", "size": "64x64", "steps": 2}
        assert (await c.post("/v1/images/generations", json=small)).status_code == 200


# --------------------------------------------------------------------------------------
# 2. A client that goes away stops its generation and frees the model
# --------------------------------------------------------------------------------------


def _slow_forward(module: Any, seconds: float) -> Callable[[], int]:
    """Make every forward call of `module` (a UNet step, a decoding step) take `seconds`
    more; returns a counter of the calls."""
    calls = [0]

    def hook(_m: Any, _args: Any) -> None:
        calls[0] += 1
        time.sleep(seconds)

    module.register_forward_pre_hook(hook)
    return lambda: calls[0]


async def _until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_image_client_disconnect_stops_within_a_step_and_frees_the_pool(
    store: Path, tmp_path: Path
) -> None:
    async with running_agent(agent_settings(store, tmp_path)) as c:
        mgr: ModelManager = c.app.state.agent.manager  # type: ignore[attr-defined]
        warm = {"model": "tiny-sd", "prompt": "x", "size": "32x32", "steps": 1}
        assert (await c.post("/v1/images/generations", json=warm)).status_code == 200
        assert mgr.pool_model == "tiny-sd"
        pipe = mgr._entries["tiny-sd"].loaded.pipeline  # type: ignore[union-attr]
        steps = _slow_forward(pipe.unet, 0.1)  # 100 steps: 10 s if nothing stops it
        long = {"model": "tiny-sd", "prompt": "x", "size": "32x32", "steps": 100}
        request = asyncio.create_task(c.post("/v1/images/generations", json=long))
        await _until(lambda: steps() >= 2)
        request.cancel()  # the client goes away: httpx closes the connection
        t0 = time.monotonic()
        await poll_status(c, "tiny-sd", lambda s: s["in_flight"] == 0, timeout=20)
        assert steps() <= 10, f"{steps()} of 100 steps ran after the client left"
        # The swap pool is free: another model takes it at once.
        r = await c.post(
            "/v1/completions", json={"model": "tiny-gpt2", "prompt": "a", "max_tokens": 2}
        )
        assert r.status_code == 200 and mgr.pool_model == "tiny-gpt2"
        assert time.monotonic() - t0 < 5
        metrics = (await c.get("/metrics")).text
        assert 'endpoint="images",model="tiny-sd",status="499"' in metrics


async def test_text_client_disconnect_stops_between_tokens(store: Path, tmp_path: Path) -> None:
    async with running_agent(agent_settings(store, tmp_path)) as c:
        mgr: ModelManager = c.app.state.agent.manager  # type: ignore[attr-defined]
        warm = {"model": "tiny-gpt2", "prompt": "a", "max_tokens": 1}
        assert (await c.post("/v1/completions", json=warm)).status_code == 200
        lm = mgr._entries["tiny-gpt2"].loaded.model  # type: ignore[union-attr]
        tokens = _slow_forward(lm, 0.02)  # 1000 tokens: 20 s if nothing stops it
        long = {"model": "tiny-gpt2", "prompt": "a", "max_tokens": 1000, "temperature": 0}
        request = asyncio.create_task(c.post("/v1/completions", json=long))
        await _until(lambda: tokens() >= 5)
        request.cancel()
        t0 = time.monotonic()
        await poll_status(c, "tiny-gpt2", lambda s: s["in_flight"] == 0, timeout=30)
        assert tokens() <= 60, f"{tokens()} of 1000 tokens ran after the client left"
        chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
        r = await c.post("/v1/chat/completions", json={**chat, "max_tokens": 2})
        assert r.status_code == 200 and mgr.pool_model == "tiny-llama"
        assert time.monotonic() - t0 < 5


async def test_a_cancelled_request_keeps_its_lease_until_the_thread_ends() -> None:
    """Cancelling the awaiting task must not release the lease under a running thread."""
    loader = FakeLoader(FakeDevice(10**9))
    gate = threading.Event()
    loader.gates["m"] = gate
    mgr = ModelManager(
        [manifest("m", 100)], loader, device_budget_bytes=10**6, cache_budget_bytes=10**6
    )
    try:
        task = asyncio.create_task(generate_text(mgr, "m", msgs(), None, TextParams(3, 0.0, 1.0)))
        await _until(lambda: bool(loader.models) and loader.models[0].started.is_set())
        task.cancel()
        await asyncio.sleep(0.05)
        assert mgr.status("m").in_flight == 1  # the thread still runs inside the model
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert mgr.status("m").in_flight == 0
    finally:
        gate.set()
        await mgr.close()


# --------------------------------------------------------------------------------------
# 3. A bounded profile queue
# --------------------------------------------------------------------------------------


async def test_profile_queue_is_bounded(store: Path, tmp_path: Path) -> None:
    profiler = FakeProfiler()
    settings = agent_settings(store, tmp_path, max_profile_queue=1, retry_after_s=2)
    async with running_agent(settings, profiler=profiler) as c:
        running = asyncio.create_task(c.post("/v1/models/tiny-gpt2/profile"))
        await _until(lambda: profiler.started == 1)
        waiting = asyncio.create_task(c.post("/v1/models/tiny-llama/profile"))
        st = await poll_status(c, "tiny-llama", lambda s: "queued" in s["profile_detail"])
        assert st["profile_status"] == "running"
        r = await c.post("/v1/models/tiny-sd/profile")
        assert r.status_code == 429, r.text
        assert r.json()["error"]["type"] == "overloaded"
        assert int(r.headers["retry-after"]) >= 2
        profiler.gate.set()
        assert (await running).status_code == 200
        assert (await waiting).status_code == 200
        r = await c.post("/v1/models/tiny-sd/profile")  # the queue has room again
        assert r.status_code == 200 and r.json()["profile_status"] == "done"


# --------------------------------------------------------------------------------------
# 4. The model's context: the profiler's probe and text requests
# --------------------------------------------------------------------------------------


def _short_context_gpt2(src: Path, dest: Path, n_positions: int) -> Path:
    """A valid GPT-2 folder (the tiny one's tokenizer) with a context of `n_positions`."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    config = GPT2Config.from_pretrained(src)
    config.n_positions = n_positions
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        GPT2LMHeadModel(config).eval().save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def short_zoo(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("short-ctx")
    _short_context_gpt2(tiny_zoo / "tiny-gpt2", root / "gpt2-ctx64", 64)
    _short_context_gpt2(tiny_zoo / "tiny-gpt2", root / "gpt2-ctx8", 8)
    return root


def _profiler(tokens: int = 16) -> Profiler:
    return Profiler(
        TorchModelLoader("cpu"),
        fingerprint="test-host",
        description="cpu test host",
        versions=hostmod.library_versions(),
        text_tokens=tokens,
    )


@pytest.mark.parametrize("model", ["gpt2-ctx64", "gpt2-ctx8"])
def test_text_probe_fits_the_context(short_zoo: Path, model: str) -> None:
    loader = TorchModelLoader("cpu")
    loaded, _ = loader.load(inspect_folder(short_zoo / model), None)
    try:
        assert isinstance(loaded, TextModel)
        ctx = loaded.context_length()
        assert ctx is not None and ctx < 100
        probe = _profiler(16).text_probe(loaded)
        assert probe.words < PROBE_WORDS and probe.notes
        assert loaded.prompt_tokens(*probe.inputs()) + probe.tokens <= ctx
        res = loaded.generate_text(*probe.inputs(), TextParams(probe.tokens, 0.0, 1.0))
        assert res.completion_tokens >= 1
    finally:
        loaded.close()


def test_cli_profiles_a_64_token_gpt2(short_zoo: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    args = ["profile", str(short_zoo / "gpt2-ctx64"), "--json", str(out), "--device", "cpu"]
    assert cli_main([*args, "--quiet", "--text-tokens", "16"]) == 0
    doc = ModelProfile.model_validate(json.loads(out.read_text()))
    assert doc.generation_s > 0
    assert any("shortened" in n for n in doc.notes), doc.notes
    m = re.search(r"~(\d+)-word .* (\d+) new tokens", doc.generation_what)
    assert m and int(m.group(1)) < PROBE_WORDS and 1 <= int(m.group(2)) <= 16


async def test_text_requests_over_the_context_get_a_clean_422(
    short_zoo: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(short_zoo / "gpt2-ctx64", store / "gpt2-ctx64")
    async with running_agent(agent_settings(store, tmp_path)) as c:
        req = {"model": "gpt2-ctx64", "prompt": "a b", "temperature": 0}
        # max_tokens asked for: refused, saying how many would fit.
        r = await c.post("/v1/completions", json={**req, "max_tokens": 64})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "max_tokens"
        assert "context" in r.json()["error"]["message"]
        # The model's default max_tokens (64) is shortened to what the context leaves.
        r = await c.post("/v1/completions", json=req)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        assert usage["total_tokens"] <= 64
        assert r.json()["choices"][0]["finish_reason"] == "length"
        # A prompt alone over the context.
        r = await c.post("/v1/completions", json={**req, "prompt": "cat " * 200})
        assert r.status_code == 422 and r.json()["error"]["field"] == "prompt"
        chat = {"model": "gpt2-ctx64", "messages": [{"role": "user", "content": "cat " * 200}]}
        r = await c.post("/v1/chat/completions", json=chat)
        assert r.status_code == 422 and r.json()["error"]["field"] == "messages"


def test_cli_failures_are_one_line_and_debug_shows_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from launcher.cli import main

    monkeypatch.setenv("EDGE_PORT", "not-a-port")
    assert main(["agent", "--store", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "genedge agent: invalid settings: port: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["credentials", str(blocked / "sub")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genedge credentials: ") and str(blocked) in err[0]
    with pytest.raises(Exception):  # noqa: B017 - whatever it was, --debug lets it through
        main(["--debug", "credentials", str(blocked / "sub")])
