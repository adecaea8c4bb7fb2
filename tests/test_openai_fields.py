"""OpenAI's text fields, each honoured or refused by name (issue 14, items 6 and 8): `stop`,
`n`, `stream_options.include_usage`, presence/frequency penalties, logprobs, and the
refusals of JSON modes and tools. On the adapter (batched and alone), over HTTP at a real
agent, through a real gateway, and with the official `openai` SDK."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from pydantic import ValidationError

from cloud_gateway.app import create_app as create_gateway
from cloud_gateway.settings import GatewaySettings
from edge_agent.adapters.torch_models import TextModel, TorchModelLoader
from edge_agent.core.batching import BatchLimits
from edge_agent.core.ports import TextParams, TextResult
from edge_agent.core.stops import StopScanner
from genedge import contract as c
from genedge.contract import ModelManifest
from tests.conftest import agent_settings, running_agent, serving

LIMITS = BatchLimits(max_requests=8, max_tokens_in_flight=2048, step_tokens=256, page_size=16)
MSGS = [{"role": "user", "content": "the cat"}]


# ---------------------------------------------------------------------- the contract


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),  # at most 4, as OpenAI
        ({"stop": ""}, "stop"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"n": 9}, "n"),
        ({"n": 0}, "n"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.01}, "frequency_penalty"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"stream": True, "stream_options": {"include_usage": True, "x": 1}}, "x"),
        ({"stream": True, "stream_options": {"include_obfuscation": True}}, "include_obfuscation"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "s"}}},
            "response_format",
        ),
    ],
)
def test_out_of_range_fields_are_refused_by_name(extra: dict[str, Any], field: str) -> None:
    body = {"model": "m", "messages": MSGS, **extra}
    with pytest.raises(ValidationError) as info:
        c.ChatCompletionRequest.model_validate(body)
    assert any(field in map(str, e["loc"]) for e in info.value.errors()), info.value


def test_fields_that_need_another_are_refused_with_why() -> None:
    with pytest.raises(ValidationError, match="include_usage is only allowed when stream"):
        c.ChatCompletionRequest.model_validate(
            {"model": "m", "messages": MSGS, "stream_options": {"include_usage": True}}
        )
    with pytest.raises(ValidationError, match="top_logprobs needs logprobs"):
        c.ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS, "top_logprobs": 3})
    with pytest.raises(ValidationError) as info:  # the completions API's logprobs: 0..5
        c.CompletionRequest.model_validate({"model": "m", "prompt": "x", "logprobs": 6})
    assert info.value.errors()[0]["loc"] == ("logprobs",)
    with pytest.raises(ValidationError):  # chat's field, not the completions API's
        c.CompletionRequest.model_validate({"model": "m", "prompt": "x", "top_logprobs": 2})
    ok = c.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": MSGS, "stop": "\n", "logprobs": True, "top_logprobs": 2}
    )
    assert ok.stop_strings() == ("\n",) and ok.logprobs_k() == 2


# ---------------------------------------------------------------------- stop scanning


def test_stop_scanner_holds_back_what_may_begin_a_stop_string() -> None:
    s = StopScanner(("END", "\n\n"))
    assert s.feed("hello E") == "hello "  # "E" may begin "END"
    assert s.feed("N") == ""
    assert s.feed("D and more") == "" and s.hit
    assert s.feed("later") == "" and s.flush() == ""
    s = StopScanner(("END",))
    assert s.feed("an E") == "an " and s.feed("ND?") == ""  # found across three deltas
    s = StopScanner(("abc",))
    assert s.feed("xab") == "x" and s.feed("d") == "abd" and s.flush() == ""
    s = StopScanner(("zz",))
    assert s.feed("done z") == "done " and s.flush() == "z"  # no stop came: released
    first = StopScanner(("cd", "b"))
    assert first.feed("abcd") == "a"  # the earliest stop string wins


# ---------------------------------------------------------------------- the adapter


@pytest.fixture(params=["llama", "gpt2"])
def text_model(
    request: pytest.FixtureRequest, llama_manifest: ModelManifest, gpt2_manifest: ModelManifest
) -> Iterator[TextModel]:
    manifest = llama_manifest if request.param == "llama" else gpt2_manifest
    model, _ = TorchModelLoader("cpu").load(manifest, None)
    assert isinstance(model, TextModel)
    yield model
    model.close()


def _batched(model: TextModel, prompt: str, params: TextParams) -> tuple[TextResult, str]:
    """One request through the model's running batch; its result and its streamed text."""
    done = threading.Event()
    deltas: list[str] = []
    out: list[tuple[TextResult | None, BaseException | None]] = []

    def on_done(result: TextResult | None, error: BaseException | None) -> None:
        out.append((result, error))
        done.set()

    assert model.start_text(None, prompt, params, deltas.append, on_done, LIMITS) is not None
    assert done.wait(60), "the batched request never ended"
    result, error = out[0]
    assert error is None and result is not None, error
    return result, "".join(deltas)


def _both(model: TextModel, prompt: str, params: TextParams) -> tuple[TextResult, TextResult]:
    """The request alone (`model.generate`) and then in the batch; both stream the text."""
    deltas: list[str] = []
    alone = model.generate_text(None, prompt, params, on_token=deltas.append)
    assert "".join(deltas) == alone.text
    batched, streamed = _batched(model, prompt, params)
    assert streamed == batched.text
    return alone, batched


def test_stop_ends_the_text_before_the_stop_string(text_model: TextModel) -> None:
    p = TextParams(24, 0.0, 1.0, fit_to_context=False)
    full = text_model.generate_text(None, "the cat", p).text
    stop = full[6:9]
    cut = full[: full.find(stop)]
    for stops in ((stop,), ("never-there", stop)):
        for r in _both(
            text_model, "the cat", TextParams(24, 0.0, 1.0, fit_to_context=False, stop=stops)
        ):
            assert (r.text, r.finish_reason) == (cut, "stop")
            assert r.completion_tokens < 24
    # a request that leaves the batch at its stop string leaves nothing behind
    lp = TextParams(24, 0.0, 1.0, fit_to_context=False, stop=(stop,), logprobs=1)
    r, _ = _batched(text_model, "the cat", lp)
    assert (r.text, r.finish_reason) == (cut, "stop")
    batcher = text_model._batcher
    assert batcher is not None and batcher._samplers == {} and batcher._slot_of == {}
    # a stop string that never comes changes nothing
    for r in _both(
        text_model, "the cat", TextParams(24, 0.0, 1.0, fit_to_context=False, stop=("@@@@",))
    ):
        assert (r.text, r.finish_reason) == (full, "length")


def test_frequency_penalty_makes_a_repetitive_model_repeat_less(
    gpt2_manifest: ModelManifest,
) -> None:
    model, _ = TorchModelLoader("cpu").load(gpt2_manifest, None)
    try:
        plain = model.generate_text(None, "the cat", TextParams(20, 0.0, 1.0, fit_to_context=False))
        assert plain.text == "you" * 20  # the tiny GPT-2 repeats one token greedily
        penalised = TextParams(20, 0.0, 1.0, fit_to_context=False, frequency_penalty=2.0)
        alone, batched = _both(model, "the cat", penalised)
        assert alone.text == batched.text  # deterministic at temperature 0, in both paths
        assert alone.text.count("you") < 5
        presence = TextParams(20, 0.0, 1.0, fit_to_context=False, presence_penalty=2.0)
        assert model.generate_text(None, "the cat", presence).text.count("you") < 5
        # a negative penalty rewards repeats: still the one token
        assert (
            model.generate_text(
                None,
                "the cat",
                TextParams(20, 0.0, 1.0, fit_to_context=False, frequency_penalty=-1.0),
            ).text
            == "you" * 20
        )
        seeded = TextParams(12, 0.9, 0.95, fit_to_context=False, seed=4, presence_penalty=1.0)
        a, b = _both(model, "the cat", seeded)
        assert a.text == b.text  # sampled with penalties: the same draw batched or alone
    finally:
        model.close()


def test_logprobs_are_the_models_and_match_the_chosen_tokens(text_model: TextModel) -> None:
    p = TextParams(6, 0.0, 1.0, fit_to_context=False, logprobs=5)
    for r in _both(text_model, "the cat", p):
        assert r.logprobs is not None and len(r.logprobs) == r.completion_tokens == 6
        assert "".join(t.token for t in r.logprobs) == r.text
        for t in r.logprobs:
            assert len(t.top) == 5
            assert t.top[0] == (t.token, pytest.approx(t.logprob))  # greedy: the likeliest
            assert [lp for _, lp in t.top] == sorted((lp for _, lp in t.top), reverse=True)
            assert sum(math.exp(lp) for _, lp in t.top) <= 1.0 + 1e-6
    # the first token's logprob is the model's own log-softmax at the prompt's end
    tok, model = text_model.tokenizer, text_model.model
    ids = tok("the cat", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, -1].float()
    expected = torch.log_softmax(logits, dim=-1)
    first = text_model.generate_text(None, "the cat", p).logprobs
    assert first is not None
    assert first[0].logprob == pytest.approx(float(expected.max()), abs=1e-4)
    # none asked: none computed
    assert text_model.generate_text(None, "the cat", TextParams(3, 0.0, 1.0)).logprobs is None


# ---------------------------------------------------------------------- over HTTP


def _events(body: str) -> list[dict[str, Any]]:
    lines = [ln[6:] for ln in body.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


async def _stream(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[dict]:
    r = await client.post(path, json={**body, "stream": True})
    assert r.status_code == 200, r.text
    events = _events(r.text)
    assert not any("error" in e for e in events), events
    return events


def _streamed_texts(events: list[dict[str, Any]], chat: bool) -> dict[int, str]:
    texts: dict[int, str] = {}
    for e in events:
        for ch in e["choices"]:
            piece = (ch["delta"].get("content") or "") if chat else ch["text"]
            texts[ch["index"]] = texts.get(ch["index"], "") + piece
    return texts


async def _check_text_fields(client: httpx.AsyncClient) -> None:
    """Every honoured field, over whatever `client` talks to (an agent or a gateway)."""
    base = {"model": "tiny-llama", "messages": MSGS, "max_tokens": 16, "temperature": 0}
    full = (await client.post("/v1/chat/completions", json=base)).json()
    text = full["choices"][0]["message"]["content"]
    stop = text[5:8]
    cut = text[: text.find(stop)]

    # stop: a string and a list, streamed and not, chat and completions
    for s in (stop, [stop, "@@"]):
        r = await client.post("/v1/chat/completions", json={**base, "stop": s})
        ch = r.json()["choices"][0]
        assert (ch["message"]["content"], ch["finish_reason"]) == (cut, "stop")
        events = await _stream(client, "/v1/chat/completions", {**base, "stop": s})
        assert _streamed_texts(events, chat=True) == {0: cut}
        assert events[-1]["choices"][0]["finish_reason"] == "stop"
    comp = {"model": "tiny-llama", "prompt": "the cat", "max_tokens": 16, "temperature": 0}
    ctext = (await client.post("/v1/completions", json=comp)).json()["choices"][0]["text"]
    cstop = ctext[4:7]
    r = await client.post("/v1/completions", json={**comp, "stop": cstop})
    assert r.json()["choices"][0]["text"] == ctext[: ctext.find(cstop)]
    events = await _stream(client, "/v1/completions", {**comp, "stop": [cstop]})
    assert _streamed_texts(events, chat=False) == {0: ctext[: ctext.find(cstop)]}

    # n: seeded choices are the single requests with seeds s, s+1, s+2; usage adds up
    sampled = {**base, "temperature": 1.0, "seed": 11, "max_tokens": 8}
    many = (await client.post("/v1/chat/completions", json={**sampled, "n": 3})).json()
    assert [ch["index"] for ch in many["choices"]] == [0, 1, 2]
    singles = []
    for i in range(3):
        one = (await client.post("/v1/chat/completions", json={**sampled, "seed": 11 + i})).json()
        singles.append(one)
        assert many["choices"][i]["message"]["content"] == one["choices"][0]["message"]["content"]
    assert many["usage"]["prompt_tokens"] == singles[0]["usage"]["prompt_tokens"]
    assert many["usage"]["completion_tokens"] == sum(
        s["usage"]["completion_tokens"] for s in singles
    )
    assert len({ch["message"]["content"] for ch in many["choices"]}) > 1
    events = await _stream(client, "/v1/chat/completions", {**sampled, "n": 3})
    assert _streamed_texts(events, chat=True) == {
        i: ch["message"]["content"] for i, ch in enumerate(many["choices"])
    }
    finishes = [ch["index"] for e in events for ch in e["choices"] if ch.get("finish_reason")]
    assert sorted(finishes) == [0, 1, 2]
    cmany = (await client.post("/v1/completions", json={**comp, "n": 2})).json()
    assert [ch["index"] for ch in cmany["choices"]] == [0, 1]
    assert cmany["choices"][0]["text"] == cmany["choices"][1]["text"] == ctext  # greedy

    # stream_options.include_usage: a last chunk with no choices and the usage
    events = await _stream(
        client,
        "/v1/chat/completions",
        {**sampled, "n": 2, "stream_options": {"include_usage": True}},
    )
    assert events[-1]["choices"] == []
    two = (await client.post("/v1/chat/completions", json={**sampled, "n": 2})).json()
    assert events[-1]["usage"] == two["usage"]
    assert all("usage" not in e for e in events[:-1])
    events = await _stream(
        client, "/v1/completions", {**comp, "stream_options": {"include_usage": True}}
    )
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 16

    # penalties change the greedy output, the same each time
    rep = {"model": "tiny-gpt2", "prompt": "the cat", "max_tokens": 12, "temperature": 0}
    plain = (await client.post("/v1/completions", json=rep)).json()["choices"][0]["text"]
    pen = {**rep, "frequency_penalty": 2.0}
    once = (await client.post("/v1/completions", json=pen)).json()["choices"][0]["text"]
    twice = (await client.post("/v1/completions", json=pen)).json()["choices"][0]["text"]
    assert once == twice != plain and once.count("you") < plain.count("you")

    # logprobs in chat's shape ...
    lp = (
        await client.post(
            "/v1/chat/completions", json={**base, "logprobs": True, "top_logprobs": 3}
        )
    ).json()["choices"][0]
    content = lp["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == text
    for t in content:
        assert t["bytes"] == list(t["token"].encode())
        assert len(t["top_logprobs"]) == 3 and t["top_logprobs"][0]["logprob"] == t["logprob"]
        assert sum(math.exp(a["logprob"]) for a in t["top_logprobs"]) <= 1 + 1e-6
    assert (await client.post("/v1/chat/completions", json=base)).json()["choices"][0][
        "logprobs"
    ] is None
    events = await _stream(client, "/v1/chat/completions", {**base, "logprobs": True})
    streamed = [
        t
        for e in events
        for ch in e["choices"]
        for t in (ch.get("logprobs") or {}).get("content") or []
    ]
    assert [t["token"] for t in streamed] == [t["token"] for t in content]
    assert all(t["top_logprobs"] == [] for t in streamed)
    # ... and the completions API's
    clp = (await client.post("/v1/completions", json={**comp, "logprobs": 2})).json()
    lps = clp["choices"][0]["logprobs"]
    assert "".join(lps["tokens"]) == ctext
    assert len(lps["token_logprobs"]) == len(lps["tokens"]) == len(lps["text_offset"]) == 16
    assert lps["text_offset"][0] == 0
    assert all(len(top) <= 2 for top in lps["top_logprobs"])
    assert all(lps["token_logprobs"][i] <= 0 for i in range(16))


async def _check_refusals(client: httpx.AsyncClient) -> None:
    base = {"model": "tiny-llama", "messages": MSGS, "max_tokens": 4}
    for extra, field, why in [
        ({"response_format": {"type": "json_object"}}, "response_format", "JSON"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
            "JSON",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "tool"),
        ({"tool_choice": "required"}, "tool_choice", "tool"),
        ({"logit_bias": {"5": 1}}, "logit_bias", "refused"),
    ]:
        r = await client.post("/v1/chat/completions", json={**base, **extra})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["field"] == field and why in err["message"], err


async def test_text_fields_at_an_agent(store: Path, tmp_path: Path) -> None:
    async with running_agent(agent_settings(store, tmp_path)) as client:
        await _check_text_fields(client)
        await _check_refusals(client)


async def test_agent_model_object_and_wrong_methods(store: Path, tmp_path: Path) -> None:
    async with running_agent(agent_settings(store, tmp_path)) as client:
        m = (await client.get("/v1/models/tiny-llama")).json()
        assert m["object"] == "model" and m["id"] == "tiny-llama" and m["owned_by"] == "genedge"
        assert isinstance(m["created"], int) and m["served_by"] == "edge-test"
        missing = await client.get("/v1/models/no-such-model")
        assert missing.status_code == 404 and missing.json()["error"]["model"] == "no-such-model"
        assert (await client.get("/v1/models/tiny-llama/status")).json()["level"] == "stored"
        for path in ("/v1/chat/completions", "/v1/completions"):
            wrong = await client.get(path)
            assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


async def test_text_fields_unbatched(store: Path, tmp_path: Path) -> None:
    """The same fields with batching off (each request runs `model.generate` alone)."""
    async with running_agent(agent_settings(store, tmp_path, text_batching=False)) as client:
        await _check_text_fields(client)


@asynccontextmanager
async def _gateway_to(agent: httpx.AsyncClient, tmp: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway whose only backend is the agent (as its cloud): the body goes through."""
    settings = GatewaySettings(cloud_url=str(agent.base_url), state_dir=tmp / "gw")
    async with serving(create_gateway(settings)) as gw:
        yield gw


async def test_text_fields_through_the_gateway(store: Path, tmp_path: Path) -> None:
    async with (
        running_agent(agent_settings(store, tmp_path)) as agent,
        _gateway_to(agent, tmp_path) as gw,
    ):
        await _check_text_fields(gw)
        await _check_refusals(gw)


async def test_the_official_openai_sdk(store: Path, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    async with (
        running_agent(agent_settings(store, tmp_path)) as agent,
        _gateway_to(agent, tmp_path) as gw,
    ):
        for url in (agent.base_url, gw.base_url):
            sdk = openai.AsyncOpenAI(
                base_url=f"{str(url).rstrip('/')}/v1", api_key="unused", max_retries=0
            )
            if url == agent.base_url:  # the gateway's catalogue comes from an orchestrator
                assert (await sdk.models.retrieve("tiny-llama")).owned_by == "genedge"
            kw: dict[str, Any] = {"model": "tiny-llama", "messages": MSGS, "temperature": 0}
            full = await sdk.chat.completions.create(**kw, max_completion_tokens=12)
            text = full.choices[0].message.content
            assert full.usage.completion_tokens == 12
            stop = text[4:7]
            cut = await sdk.chat.completions.create(**kw, max_tokens=12, stop=[stop])
            assert cut.choices[0].message.content == text[: text.find(stop)]
            assert cut.choices[0].finish_reason == "stop"
            many = await sdk.chat.completions.create(
                **kw, max_tokens=4, n=2, logprobs=True, top_logprobs=2
            )
            assert len(many.choices) == 2 and many.usage.completion_tokens == 8
            assert len(many.choices[1].logprobs.content[0].top_logprobs) == 2
            stream = await sdk.chat.completions.create(
                **kw, max_tokens=12, stream=True, stream_options={"include_usage": True}
            )
            pieces, usage = [], None
            async for chunk in stream:
                pieces += [ch.delta.content or "" for ch in chunk.choices]
                usage = chunk.usage or usage
            assert "".join(pieces) == text and usage is not None and usage.total_tokens > 12
            comp = await sdk.completions.create(
                model="tiny-gpt2",
                prompt="the cat",
                max_tokens=8,
                temperature=0,
                frequency_penalty=2.0,
                logprobs=1,
            )
            assert comp.choices[0].text.count("you") < 4
            assert len(comp.choices[0].logprobs.tokens) == 8
            with pytest.raises(openai.UnprocessableEntityError, match="response_format"):
                await sdk.chat.completions.create(
                    **kw, max_tokens=2, response_format={"type": "json_object"}
                )
            with pytest.raises(openai.UnprocessableEntityError, match="tools"):
                await sdk.chat.completions.create(
                    **kw,
                    max_tokens=2,
                    tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
                    tool_choice="required",
                )
            await sdk.close()
