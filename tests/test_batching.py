"""Batched generation on real (tiny) models: a batched request gives the same text or image
as the same request alone, requests really share a batch, and cancelling one stops its
work and frees its slot (issue 14, items 1-3 and 8)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.adapters.torch_models import ImagePipelineModel, TextModel, TorchModelLoader
from edge_agent.core.batching import BatchLimits
from edge_agent.core.ports import ImageParams, TextParams, TextResult
from edge_agent.errors import ClientDisconnected
from genedge.contract import ModelManifest
from tests.conftest import agent_settings, poll_status, running_agent

LIMITS = BatchLimits(max_requests=8, max_tokens_in_flight=2048, step_tokens=256, page_size=16)
PROMPTS = ["the cat", "a dog runs", "once upon a time", "hello"]


def _load(manifest: ModelManifest) -> Any:
    model, _ = TorchModelLoader("cpu").load(manifest, None)
    return model


@pytest.fixture(params=["llama", "gpt2"])
def text_model(
    request: pytest.FixtureRequest, llama_manifest: ModelManifest, gpt2_manifest: ModelManifest
) -> Iterator[TextModel]:
    model = _load(llama_manifest if request.param == "llama" else gpt2_manifest)
    assert isinstance(model, TextModel)
    yield model
    model.close()


@pytest.fixture
def sd(sd_manifest: ModelManifest) -> Iterator[ImagePipelineModel]:
    model = _load(sd_manifest)
    assert isinstance(model, ImagePipelineModel)
    yield model
    model.close()


class _Collect:
    """Waits for one batched text request's end (callbacks come from the engine thread)."""

    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.result: TextResult | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def on_token(self, delta: str) -> None:
        self.deltas.append(delta)

    def on_done(self, result: TextResult | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self.done.set()

    def wait(self) -> TextResult:
        assert self.done.wait(60), "the batched request never ended"
        assert self.error is None, self.error
        assert self.result is not None
        return self.result


def _batched(model: TextModel, params: list[TextParams]) -> list[TextResult]:
    """All requests submitted at once, so they share the batch."""
    sinks = [_Collect() for _ in params]
    for prompt, p, sink in zip(PROMPTS, params, sinks, strict=False):
        job = model.start_text(None, prompt, p, sink.on_token, sink.on_done, LIMITS)
        assert job is not None, "the tiny model should batch"
    results = [s.wait() for s in sinks]
    for s, r in zip(sinks, results, strict=True):
        assert "".join(s.deltas) == r.text  # streamed deltas add up to the text
    return results


def test_batched_greedy_text_equals_the_request_alone(text_model: TextModel) -> None:
    params = [TextParams(12, 0.0, 1.0, fit_to_context=False)] * len(PROMPTS)
    alone = [text_model.generate_text(None, p, params[0]) for p in PROMPTS]  # model.generate
    assert not text_model.batching
    together = _batched(text_model, params)
    assert text_model.batching
    for a, b in zip(alone, together, strict=True):
        assert (b.text, b.completion_tokens, b.finish_reason) == (
            a.text,
            a.completion_tokens,
            a.finish_reason,
        )
        assert b.prompt_tokens == a.prompt_tokens


def test_batched_seeded_text_equals_the_same_seed_alone(text_model: TextModel) -> None:
    sampled = [TextParams(10, 0.9, 0.9, seed=s) for s in (1, 2, 3, 4)]
    alone = [_batched(text_model, [p])[0] for p in sampled[:1]]
    together = _batched(text_model, sampled)
    assert together[0].text == alone[0].text
    again = _batched(text_model, sampled)
    assert [r.text for r in again] == [r.text for r in together]  # per-request generators
    # a different seed differs (4 random 10-token texts from a 1000-token vocabulary)
    assert len({r.text for r in together}) > 1


def test_blocking_calls_join_the_running_batch(text_model: TextModel) -> None:
    p = TextParams(8, 0.0, 1.0, fit_to_context=False)
    alone = text_model.generate_text(None, "the cat", p)
    _batched(text_model, [p])  # the engine now owns the model
    assert text_model.generate_text(None, "the cat", p).text == alone.text


def test_cancelling_a_batched_request_frees_its_slot(text_model: TextModel) -> None:
    long = _Collect()
    p = TextParams(5000, 0.0, 1.0, fit_to_context=True)
    job = text_model.start_text(None, "a", p, long.on_token, long.on_done, LIMITS)
    assert job is not None
    deadline = time.monotonic() + 30
    while len(long.deltas) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    job.cancel()
    # the next request runs at once, in a batch with no one else
    short = _batched(text_model, [TextParams(3, 0.0, 1.0, fit_to_context=False)])
    assert short[0].completion_tokens == 3
    assert not long.done.is_set()  # a cancelled request gets no outcome
    n = len(long.deltas)
    time.sleep(0.2)
    assert len(long.deltas) == n  # and no more tokens


def test_closing_stops_the_engine(llama_manifest: ModelManifest) -> None:
    model = _load(llama_manifest)
    _batched(model, [TextParams(2, 0.0, 1.0, fit_to_context=False)])
    batcher = model._batcher
    assert batcher is not None and batcher.alive
    model.close()
    assert not batcher.alive and model.memory_bytes() == 0


# ---------------------------------------------------------------------------------- images


def _held(sd: ImagePipelineModel) -> Callable[[], None]:
    """Hold the pipeline (as a running call would) so requests queue; returns the release."""
    sd._lock.acquire()
    return sd._lock.release


def _image_jobs(
    sd: ImagePipelineModel, params: list[ImageParams]
) -> list[tuple[threading.Event, list[Any]]]:
    out = []
    for i, p in enumerate(params):
        ev, got = threading.Event(), []

        def done(pngs: Any, err: Any, ev: threading.Event = ev, got: list[Any] = got) -> None:
            got.append((pngs, err))
            ev.set()

        sd.start_images(f"prompt {i}", p, done, max_images=4)
        out.append((ev, got))
    return out


def test_compatible_image_requests_share_one_call_and_match_alone(
    sd: ImagePipelineModel,
) -> None:
    small = ImageParams(32, 32, 2, 5.0, n=1, seed=11)
    pair = ImageParams(32, 32, 2, 5.0, n=2, seed=20)
    other = ImageParams(48, 48, 2, 5.0, n=1, seed=5)  # another size: another call
    release = _held(sd)
    sd.start_images("warm", small, lambda *_: None, max_images=4)
    time.sleep(0.2)  # the worker has taken "warm" and waits for the pipeline
    jobs = _image_jobs(sd, [small, pair, other, small])
    release()
    for ev, _ in jobs:
        assert ev.wait(60)
    results = [got[0] for _, got in jobs]
    assert all(err is None for _, err in results)
    assert [len(pngs) for pngs, _ in results] == [1, 2, 1, 1]
    batcher = sd._batcher
    assert batcher is not None
    # "warm" alone, then prompts 0, 1, 3 (4 images) together, then the 48x48 one
    assert batcher.batches_run == 3 and batcher.largest_batch == 4
    alone = [
        sd.generate_image("prompt 0", small),
        sd.generate_image("prompt 1", pair),
        sd.generate_image("prompt 2", other),
    ]
    assert results[0][0] == alone[0]
    assert results[1][0] == alone[1]
    assert results[2][0] == alone[2]


def test_cancelled_image_batch_stops_within_a_step(sd: ImagePipelineModel) -> None:
    steps = [0]
    sd.pipeline.unet.register_forward_pre_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    p = ImageParams(32, 32, 100, 5.0, n=1, seed=1)
    jobs = []
    ends: list[Any] = []
    for _ in range(2):
        jobs.append(sd.start_images("x", p, lambda pngs, err: ends.append(err), max_images=4))
    deadline = time.monotonic() + 30
    while steps[0] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    jobs[0].cancel()
    time.sleep(0.1)
    assert not jobs[0].finished.is_set()  # the other request still wants the batch
    jobs[1].cancel()
    assert jobs[1].finished.wait(5) and jobs[0].finished.is_set()
    assert steps[0] < 30
    assert all(isinstance(e, ClientDisconnected) for e in ends)


# ------------------------------------------------------------------------ through the agent


async def test_concurrent_chats_share_a_batch_and_answer_as_alone(
    store: Path, tmp_path: Path
) -> None:
    async with running_agent(agent_settings(store, tmp_path)) as c:
        bodies = [
            {
                "model": "tiny-llama",
                "messages": [{"role": "user", "content": p}],
                "max_tokens": 8,
                "temperature": 0,
            }
            for p in PROMPTS
        ]
        alone = [(await c.post("/v1/chat/completions", json=b)).json() for b in bodies]
        together = await asyncio.gather(*(c.post("/v1/chat/completions", json=b) for b in bodies))
        assert all(r.status_code == 200 for r in together)
        for a, r in zip(alone, together, strict=True):
            assert r.json()["choices"][0]["message"] == a["choices"][0]["message"]
        mgr = c.app.state.agent.manager  # type: ignore[attr-defined]
        assert mgr._entries["tiny-llama"].loaded.batching
        st = await poll_status(c, "tiny-llama", lambda s: s["in_flight"] == 0)
        assert st["requests_total"] == 8


async def test_a_stream_that_goes_away_leaves_the_batch(store: Path, tmp_path: Path) -> None:
    async with running_agent(agent_settings(store, tmp_path)) as c:
        body = {"model": "tiny-gpt2", "prompt": "a", "max_tokens": 1000, "stream": True}
        async with c.stream("POST", "/v1/completions", json=body) as r:
            got = 0
            async for _ in r.aiter_lines():
                got += 1
                if got > 6:
                    break
        t0 = time.monotonic()
        await poll_status(c, "tiny-gpt2", lambda s: s["in_flight"] == 0, timeout=5)
        assert time.monotonic() - t0 < 1.0
        r2 = await c.post("/v1/completions", json={"model": "tiny-gpt2", "prompt": "b"})
        assert r2.status_code == 200


async def test_a_client_leaving_the_gateway_stops_the_agents_work(
    store: Path, tmp_path: Path
) -> None:
    """A disconnect at the gateway reaches the agent (streamed or not): the gateway drops
    its upstream request, the agent sees the disconnect and frees the model."""
    from cloud_gateway.app import create_app as gateway_app
    from cloud_gateway.settings import GatewaySettings
    from genedge.contract import RouteModel
    from tests.conftest import serving
    from tests.gateway_fakes import FakeOrchestrator, host, table

    fake = FakeOrchestrator()
    async with running_agent(agent_settings(store, tmp_path / "a", host_id="edge-1")) as agent:
        r = await agent.put("/v1/models/tiny-gpt2/level", json={"level": "resident", "wait": True})
        assert r.status_code == 200
        entry = RouteModel(
            model="tiny-gpt2", kind="text", hosts=[host("edge-1", str(agent.base_url), "resident")]
        )
        fake.table = table([entry])
        lm = agent.app.state.agent.manager._entries["tiny-gpt2"].loaded.model  # type: ignore[attr-defined]
        calls = [0]

        def slow(*_: Any) -> None:
            calls[0] += 1
            time.sleep(0.01)

        lm.register_forward_pre_hook(slow)
        async with serving(fake.app()) as orch:
            settings = GatewaySettings(
                orchestrator_url=str(orch.base_url),
                table_refresh_s=0.05,
                arrivals_interval_s=0.05,
                state_dir=tmp_path / "gw",
            )
            async with serving(gateway_app(settings)) as gw:
                await asyncio.sleep(0.3)  # the gateway reads its first table
                for stream in (False, True):
                    body = {"model": "tiny-gpt2", "prompt": "a", "max_tokens": 1000}
                    body["stream"] = stream
                    before = calls[0]
                    task = asyncio.create_task(gw.post("/v1/completions", json=body))
                    await _until(lambda b=before: calls[0] >= b + 5)
                    task.cancel()
                    t0 = time.monotonic()
                    await poll_status(agent, "tiny-gpt2", lambda s: s["in_flight"] == 0)
                    assert time.monotonic() - t0 < 1.5
                    assert calls[0] - before < 300, "the generation ran on after the client left"


async def _until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)
