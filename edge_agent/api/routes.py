"""Thin HTTP routes of the agent: validate with the contract, call the runtime, shape replies."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from edge_agent.api import openai_shapes as shapes
from edge_agent.core import limits as lim
from edge_agent.core.batching import BatchLimits
from edge_agent.core.manager import Lease
from edge_agent.core.ports import TextResult
from edge_agent.core.serving import TextStream, generate_choices, generate_images
from edge_agent.errors import AgentError
from edge_agent.runtime import AgentRuntime
from genedge.contract import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessage,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    ErrorBody,
    ErrorResponse,
    Health,
    HostFacts,
    ImageData,
    ImageDefaults,
    ImageGenerationRequest,
    ImageGenerationResponse,
    Level,
    ModelStatus,
    ModelStatusList,
    OpenAIModel,
    SetLevelRequest,
    TextDefaults,
)

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 404, 409, 413, 422, 429, 503)
}


def _rt(request: Request) -> AgentRuntime:
    rt: AgentRuntime = request.app.state.agent
    return rt


def _served_headers(rt: AgentRuntime, lease: Lease) -> dict[str, str]:
    h = {"x-served-by": rt.settings.host_id, "x-served-level": lease.served_from.value}
    if lease.preload_tier is not None:
        h["x-preload-ms"] = f"{lease.preload_s * 1000:.1f}"
        h["x-preload-tier"] = lease.preload_tier
    return h


def _batching(rt: AgentRuntime) -> BatchLimits:
    """The batching bounds the settings give (per request: settings may be replaced)."""
    s = rt.settings
    return BatchLimits(
        text=s.text_batching,
        max_requests=s.batch_max_requests,
        max_tokens_in_flight=s.batch_max_tokens,
        step_tokens=s.batch_step_tokens,
        max_images=s.image_max_batch,
    )


def _count(rt: AgentRuntime, model: str, endpoint: str, status: int, t0: float) -> None:
    rt.metrics.requests.labels(model, endpoint, str(status)).inc()
    rt.metrics.request_seconds.labels(model, endpoint).observe(time.perf_counter() - t0)


def _client_gone(request: Request) -> Callable[[], Awaitable[None]]:
    """What `serving` awaits to learn that the client has gone: returns on the ASGI
    `http.disconnect` message. The body has been read by then, so nothing else is taken
    from `receive`; a server that answers with anything else is asked again a little
    later (never a busy loop)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            await asyncio.sleep(0.05)

    return gone


def _known(rt: AgentRuntime, model: str) -> str:
    """Label value for metrics: unknown model names collapse, so clients cannot blow up
    the label cardinality."""
    return model if model in rt.manager.model_ids() else "_unknown"


async def _text(
    request: Request,
    req: ChatCompletionRequest | CompletionRequest,
    endpoint: str,
) -> Response:
    rt = _rt(request)
    t0 = time.perf_counter()
    label = _known(rt, req.model)
    try:
        manifest = rt.manager.manifest(req.model)
        params = lim.text_params(req, manifest.text_defaults or TextDefaults(), rt.limits)
        lim.check_text_cost(params, rt.manager.profile(req.model), rt.limits)
        choices = lim.choice_params(params, req.n)
        messages = req.messages if isinstance(req, ChatCompletionRequest) else None
        prompt = req.prompt if isinstance(req, CompletionRequest) else None
        if req.stream:
            stream = TextStream(rt.manager, req.model, messages, prompt, choices, _batching(rt))
            lease = await stream.start()  # admission and load errors happen before any byte
            headers = _served_headers(rt, lease)
            _count(rt, label, endpoint, 200, t0)
            with_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _sse(stream, req.model, messages is not None, with_usage),
                media_type="text/event-stream",
                headers=headers,
            )
        outcomes = await generate_choices(
            rt.manager, req.model, messages, prompt, choices, _client_gone(request), _batching(rt)
        )
    except AgentError as exc:
        _count(rt, label, endpoint, exc.status, t0)
        raise
    body = _answer(req, [o.result for o in outcomes])
    _count(rt, label, endpoint, 200, t0)
    return JSONResponse(body.model_dump(), headers=_served_headers(rt, outcomes[0].lease))


def _answer(
    req: ChatCompletionRequest | CompletionRequest, results: list[TextResult]
) -> ChatCompletionResponse | CompletionResponse:
    created = int(time.time())
    if isinstance(req, ChatCompletionRequest):
        return ChatCompletionResponse(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            created=created,
            model=req.model,
            choices=[
                ChatChoice(
                    index=i,
                    message=ChatMessage(role="assistant", content=r.text),
                    logprobs=shapes.chat_logprobs(r.logprobs),
                    finish_reason=r.finish_reason,
                )
                for i, r in enumerate(results)
            ],
            usage=shapes.usage(results),
        )
    return CompletionResponse(
        id=f"cmpl-{uuid.uuid4().hex[:24]}",
        created=created,
        model=req.model,
        choices=[
            CompletionChoice(
                index=i,
                text=r.text,
                logprobs=shapes.completion_logprobs(r.logprobs),
                finish_reason=r.finish_reason,
            )
            for i, r in enumerate(results)
        ],
        usage=shapes.usage(results),
    )


async def _sse(
    stream: TextStream, model: str, chat: bool, with_usage: bool
) -> AsyncIterator[bytes]:
    """OpenAI-style server-sent events: per choice (`index`) its deltas, then a chunk with
    its `finish_reason` (and its logprobs, when asked); with `with_usage` a last chunk with
    no choices and the usage. An error after the first byte becomes an error event (the
    status line has gone already), then `[DONE]`."""
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())

    def event(obj: object) -> bytes:
        return f"data: {json.dumps(obj)}\n\n".encode()

    def chunk(
        index: int,
        text: str | None,
        finish: str | None = None,
        role: str | None = None,
        result: TextResult | None = None,
    ) -> bytes:
        c: ChatCompletionChunk | CompletionChunk
        lps = result.logprobs if result is not None else None
        if chat:
            delta = ChatDelta(role=role, content=text)
            choice = ChatChunkChoice(
                index=index, delta=delta, logprobs=shapes.chat_logprobs(lps), finish_reason=finish
            )
            c = ChatCompletionChunk(id=rid, created=created, model=model, choices=[choice])
        else:
            done = CompletionChoice(
                index=index,
                text=text or "",
                logprobs=shapes.completion_logprobs(lps),
                finish_reason=finish,
            )
            c = CompletionChunk(id=rid, created=created, model=model, choices=[done])
        return event(c.model_dump(exclude_none=True))

    try:
        if chat:
            for i in range(len(stream.choices)):
                yield chunk(i, None, role="assistant")
        async for index, delta in stream.deltas():
            if delta is not None:
                yield chunk(index, delta)
                continue
            result = stream.results[index]
            yield chunk(index, None, result.finish_reason if result else "stop", result=result)
        if with_usage:
            done = [r for r in stream.results if r is not None]
            final: ChatCompletionChunk | CompletionChunk
            if chat:
                final = ChatCompletionChunk(
                    id=rid, created=created, model=model, choices=[], usage=shapes.usage(done)
                )
            else:
                final = CompletionChunk(
                    id=rid, created=created, model=model, choices=[], usage=shapes.usage(done)
                )
            yield event(final.model_dump(exclude_none=True))
    except Exception as exc:  # after the first byte: report in-band, never a half answer
        err = ErrorBody(type="generation_failed", message=f"{type(exc).__name__}: {exc}")
        yield event(ErrorResponse(error=err).model_dump(exclude_none=True))
    finally:
        await stream.aclose()
    yield b"data: [DONE]\n\n"


@router.post("/v1/chat/completions", responses=ERRORS, response_model=ChatCompletionResponse)
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
    return await _text(request, body, "chat")


@router.post("/v1/completions", responses=ERRORS, response_model=CompletionResponse)
async def completions(request: Request, body: CompletionRequest) -> Response:
    return await _text(request, body, "completions")


@router.post("/v1/images/generations", responses=ERRORS, response_model=ImageGenerationResponse)
async def images(request: Request, body: ImageGenerationRequest) -> Response:
    rt = _rt(request)
    t0 = time.perf_counter()
    label = _known(rt, body.model)
    try:
        manifest = rt.manager.manifest(body.model)
        defaults = manifest.image_defaults or ImageDefaults()
        params = lim.image_params(body, defaults, rt.limits)
        lim.check_image_cost(params, rt.manager.profile(body.model), defaults, rt.limits)
        lease, pngs = await generate_images(
            rt.manager, body.model, body.prompt, params, _client_gone(request), _batching(rt)
        )
    except AgentError as exc:
        _count(rt, label, "images", exc.status, t0)
        raise
    data = [ImageData(b64_json=base64.b64encode(p).decode()) for p in pngs]
    resp = ImageGenerationResponse(created=int(time.time()), data=data)
    _count(rt, label, "images", 200, t0)
    return JSONResponse(resp.model_dump(exclude_none=True), headers=_served_headers(rt, lease))


@router.get("/v1/models", response_model=ModelStatusList)
async def list_models(request: Request) -> ModelStatusList:
    rt = _rt(request)
    return ModelStatusList(data=rt.manager.statuses(), bad_folders=rt.bad_folders)


@router.get("/v1/models/{model_id:path}/status", responses=ERRORS, response_model=ModelStatus)
async def model_status(request: Request, model_id: str) -> ModelStatus:
    return _rt(request).manager.status(model_id)


@router.put("/v1/models/{model_id:path}/level", responses=ERRORS, response_model=ModelStatus)
async def set_level(request: Request, model_id: str, body: SetLevelRequest) -> JSONResponse:
    rt = _rt(request)
    status = await rt.manager.set_level(model_id, Level(body.level), wait=body.wait)
    # 202 while the move is still under way; 200 when the model is at the level (`absent`:
    # stored, or a fetch cancelled).
    want = Level(body.level)
    at = status.level == want or (want == Level.ABSENT and status.level == Level.STORED)
    code = 200 if at and status.state == "ready" else 202
    if status.state == "failed" and body.wait:
        code = 503
    return JSONResponse(status.model_dump(mode="json"), status_code=code)


@router.post("/v1/models/{model_id:path}/profile", responses=ERRORS, response_model=ModelStatus)
async def profile_model(request: Request, model_id: str) -> ModelStatus:
    rt = _rt(request)
    await rt.profile(model_id)
    return rt.manager.status(model_id)


@router.get("/v1/models/{model_id:path}", responses=ERRORS, response_model=OpenAIModel)
async def openai_model(request: Request, model_id: str) -> OpenAIModel:
    """One model in OpenAI's shape (`GET /v1/models/{model}`, what the SDK's
    `models.retrieve` asks); 404 for a model this agent does not hold. Registered after the
    model's own routes (`/status`, `/level`, `/profile`), which its path would also match."""
    rt = _rt(request)
    st = rt.manager.status(model_id)
    return OpenAIModel(id=st.id, kind=st.kind, level=st.level, served_by=rt.settings.host_id)


@router.get("/v1/host", response_model=HostFacts)
async def host(request: Request) -> HostFacts:
    return _rt(request).host_facts()


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    rt = _rt(request)
    if not rt.ready:
        h = Health(status="starting", detail="reaching initial model levels")
        return JSONResponse(h.model_dump(), status_code=503)
    failed = [s.id for s in rt.manager.statuses() if s.state == "failed"]
    h = Health(status="degraded" if failed else "ok", detail=f"failed: {failed}" if failed else "")
    return JSONResponse(h.model_dump())


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    rt = _rt(request)
    rt.host_facts()  # refreshes the NVML gauge
    return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4")
