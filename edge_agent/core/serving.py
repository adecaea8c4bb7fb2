"""Running one generation: hold a lease on the model, run the blocking generation in a worker
thread, and (for streams) hand text deltas to the event loop as they are produced.

Every generation keeps its lease until the generating thread has really finished, also when
the client goes away, so a model is never freed under a running generation. And a client
that goes away stops the work (between tokens, or after the current denoising step): a
generation nobody waits for must not hold its model, or the swap pool with every pooled
model queued behind it. Streams learn of it from the response (Starlette cancels the body);
non-streamed requests from `client_gone`, which the routes build from the ASGI
`http.disconnect` message.

Batching: a model that offers `start_text` / `start_images` (the torch adapters) gets its
concurrent requests as jobs of one running batch, each request holding its own lease (so
the manager's `max_concurrency` bounds the batch from above) but no thread: the event loop
waits on the job, and a stop cancels the job (text: the engine drops it before its next
step; images: a batch stops after its current step once all its requests are cancelled,
and a request waits for its batch to end before its lease goes). A model without them, or
with batching off, runs each request in a worker thread as before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from edge_agent.core.batching import BatchLimits
from edge_agent.core.manager import Lease, ModelManager
from edge_agent.core.ports import ImageParams, LoadedModel, TextParams, TextResult, TokenSink
from edge_agent.errors import ClientDisconnected
from genedge.contract import ChatMessage, ModelKind

log = logging.getLogger("edge_agent.serving")

T = TypeVar("T")

_DONE = object()


@dataclass
class TextOutcome:
    lease: Lease
    result: TextResult


ClientGone = Callable[[], Awaitable[object]]
"""Returns once the client has gone away (the routes wait for the ASGI `http.disconnect`)."""


async def _set_when_gone(client_gone: ClientGone, stop: threading.Event) -> None:
    try:
        await client_gone()
    except Exception:  # a broken watch must not fail the request it watches
        log.debug("watching for the client's disconnect failed", exc_info=True)
        return
    stop.set()


@asynccontextmanager
async def _watching(client_gone: ClientGone | None) -> AsyncIterator[threading.Event]:
    """A stop flag that is set once the client goes away, watched for as long as the block
    runs (also while the request waits for its lease)."""
    stop = threading.Event()
    watcher = (
        asyncio.ensure_future(_set_when_gone(client_gone, stop))
        if client_gone is not None
        else None
    )
    try:
        yield stop
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.wait([watcher])  # its own CancelledError stays inside it


async def _thread_finished(worker: asyncio.Future[Any], stop: threading.Event) -> None:
    """Wait until the worker thread has finished: a request's lease must outlive every touch
    of the model. A cancellation of the awaiting task sets `stop` (the thread ends at its
    next token or step) and is re-raised once the thread is done."""
    cancelled: asyncio.CancelledError | None = None
    while not worker.done():
        try:
            await asyncio.wait([worker])  # never cancels `worker` itself
        except asyncio.CancelledError as exc:
            stop.set()
            cancelled = exc
    if cancelled is not None:
        raise cancelled


async def _until_done(worker: asyncio.Future[T], stop: threading.Event) -> T:
    """The worker thread's result, once the thread has finished (see `_thread_finished`)."""
    await _thread_finished(worker, stop)
    return worker.result()


def _gone(model_id: str) -> ClientDisconnected:
    return ClientDisconnected("the client went away: generation stopped", model=model_id)


Work = Callable[[LoadedModel, threading.Event], Awaitable[T]]
"""Runs one request on a leased model until done; stops soon after the event is set."""


async def _run_leased(
    manager: ModelManager,
    model_id: str,
    kind: ModelKind,
    client_gone: ClientGone | None,
    work: Work[T],
) -> tuple[Lease, T]:
    """Hold a lease and run `work(model, stop)`. When the client goes away the stop flag is
    set (the work stops within a token or a denoising step) and `ClientDisconnected` is
    raised; the lease is released only once the work has let go of the model."""
    async with _watching(client_gone) as stop, manager.lease(model_id, kind) as lease:
        if stop.is_set():  # gone while the request waited: do not start the work at all
            raise _gone(model_id)
        result = await work(lease.model, stop)
        if stop.is_set():
            raise _gone(model_id)
        return lease, result


def _in_thread(call: Callable[[LoadedModel, Callable[[], bool]], T]) -> Work[T]:
    """A blocking call as `Work`: run in a worker thread, awaited until the thread ends."""

    async def work(model: LoadedModel, stop: threading.Event) -> T:
        worker = asyncio.ensure_future(asyncio.to_thread(call, model, stop.is_set))
        return await _until_done(worker, stop)

    return work


class _Job:
    """What `start_text` / `start_images` return: `cancel()`, and for images `finished`."""

    def cancel(self) -> None: ...


async def _await_job(
    job: _Job, done: asyncio.Future[T], stop: threading.Event, model_id: str, linger: bool
) -> T:
    """Wait for a batched job's outcome; once `stop` is set (or the awaiting task is
    cancelled) cancel the job and raise. With `linger`, wait for the job's `finished` event
    first (an image batch still running with this request in it)."""
    try:
        while not done.done():
            if stop.is_set():
                raise _gone(model_id)
            await asyncio.wait([done], timeout=0.05)
    except BaseException:  # stopped, or the awaiting task was cancelled
        stop.set()
        _retrieved(done)  # the job settles it later, with nobody awaiting it any more
        job.cancel()
        if linger:
            finished: threading.Event = job.finished  # type: ignore[attr-defined]
            while not finished.is_set():
                await asyncio.sleep(0.02)
        raise
    return done.result()


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """Mark `fut`'s outcome as seen once it comes: an expected stop (`ClientDisconnected`)
    that nobody awaits any more is not "never retrieved" noise in the log."""

    def see(f: asyncio.Future[Any]) -> None:
        if not f.cancelled():
            f.exception()

    fut.add_done_callback(see)


def _settler(loop: asyncio.AbstractEventLoop, done: asyncio.Future[Any]) -> Callable[..., None]:
    """`(result, error)` from any thread -> `done` on the loop (once)."""

    def settle(result: Any, error: BaseException | None) -> None:
        def on_loop() -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)

        loop.call_soon_threadsafe(on_loop)

    return settle


def _text_work(
    messages: list[ChatMessage] | None,
    prompt: str | None,
    params: TextParams,
    on_token: TokenSink | None,
    batching: BatchLimits | None,
) -> Work[TextResult]:
    """Join the model's running batch when it can; otherwise a thread of its own.
    `on_token` may be called from any thread."""

    async def work(model: LoadedModel, stop: threading.Event) -> TextResult:
        start = getattr(model, "start_text", None)
        if batching is not None and batching.text and start is not None:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[TextResult] = loop.create_future()
            job = await asyncio.to_thread(  # tokenising a long prompt takes milliseconds
                start, messages, prompt, params, on_token, _settler(loop, done), batching
            )
            if job is not None:
                return await _await_job(job, done, stop, model.model_id, linger=False)
        run = _in_thread(
            lambda m, should_stop: m.generate_text(messages, prompt, params, on_token, should_stop)
        )
        return await run(model, stop)

    return work


def _image_work(
    prompt: str, params: ImageParams, batching: BatchLimits | None
) -> Work[list[bytes]]:
    async def work(model: LoadedModel, stop: threading.Event) -> list[bytes]:
        start = getattr(model, "start_images", None)
        if batching is not None and start is not None:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[list[bytes]] = loop.create_future()
            job = start(prompt, params, _settler(loop, done), batching.max_images)
            return await _await_job(job, done, stop, model.model_id, linger=True)
        run = _in_thread(lambda m, should_stop: m.generate_image(prompt, params, should_stop))
        return await run(model, stop)

    return work


async def generate_text(
    manager: ModelManager,
    model_id: str,
    messages: list[ChatMessage] | None,
    prompt: str | None,
    params: TextParams,
    client_gone: ClientGone | None = None,
    batching: BatchLimits | None = None,
) -> TextOutcome:
    """One non-streamed text generation; stops between tokens once `client_gone` returns.
    With `batching`, it joins the model's running batch."""
    lease, result = await _run_leased(
        manager,
        model_id,
        ModelKind.TEXT,
        client_gone,
        _text_work(messages, prompt, params, None, batching),
    )
    return TextOutcome(lease, result)


async def generate_choices(
    manager: ModelManager,
    model_id: str,
    messages: list[ChatMessage] | None,
    prompt: str | None,
    choices: Sequence[TextParams],
    client_gone: ClientGone | None = None,
    batching: BatchLimits | None = None,
) -> list[TextOutcome]:
    """OpenAI's `n`: one non-streamed generation per entry of `choices`, run at once (each
    its own request with its own lease, so they share the model's batch). One watch for
    the client's disconnect stops them all; the first failure stops the others and is
    raised as itself."""
    if len(choices) == 1:
        return [
            await generate_text(
                manager, model_id, messages, prompt, choices[0], client_gone, batching
            )
        ]
    async with _watching(client_gone) as stop:

        async def gone() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.05)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        generate_text(manager, model_id, messages, prompt, p, gone, batching)
                    )
                    for p in choices
                ]
        except BaseExceptionGroup as group_error:
            raise _first(group_error) from None
    return [t.result() for t in tasks]


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first failure of a group (a `ClientDisconnected` only when nothing else failed)."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        e = stack.pop(0)
        if isinstance(e, BaseExceptionGroup):
            stack[:0] = list(e.exceptions)
        else:
            leaves.append(e)
    real = [e for e in leaves if not isinstance(e, ClientDisconnected)]
    return (real or leaves)[0]


async def generate_images(
    manager: ModelManager,
    model_id: str,
    prompt: str,
    params: ImageParams,
    client_gone: ClientGone | None = None,
    batching: BatchLimits | None = None,
) -> tuple[Lease, list[bytes]]:
    """One image request; stops after the current denoising step once `client_gone`
    returns. With `batching`, it shares a pipeline call with compatible requests."""
    return await _run_leased(
        manager, model_id, ModelKind.IMAGE, client_gone, _image_work(prompt, params, batching)
    )


class TextStream:
    """An open streaming generation of one or more choices (OpenAI's `n`). `start()` waits
    for the model (raising admission and load errors before any byte is sent); iterate
    `deltas()`; `results[i]` is set when choice i ends.

    Choice 0 runs on the lease `start()` took; every other choice takes a lease of its own
    when it starts (never held while waiting for another), so the choices share the
    model's batch and a stream cannot deadlock others by holding leases it waits on."""

    def __init__(
        self,
        manager: ModelManager,
        model_id: str,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        params: TextParams | Sequence[TextParams],
        batching: BatchLimits | None = None,
    ) -> None:
        self.manager = manager
        self.batching = batching
        self.model_id = model_id
        self.messages = messages
        self.prompt = prompt
        self.choices = [params] if isinstance(params, TextParams) else list(params)
        self.lease: Lease | None = None
        self.results: list[TextResult | None] = [None] * len(self.choices)
        self._stack = AsyncExitStack()
        self._stop = threading.Event()

    @property
    def result(self) -> TextResult | None:
        """The first choice's result (the only one without `n`)."""
        return self.results[0]

    async def start(self) -> Lease:
        self.lease = await self._stack.enter_async_context(
            self.manager.lease(self.model_id, ModelKind.TEXT)
        )
        return self.lease

    async def _run_choice(self, index: int, on_token: TokenSink) -> None:
        work = _text_work(self.messages, self.prompt, self.choices[index], on_token, self.batching)
        if index == 0:
            assert self.lease is not None
            self.results[0] = await work(self.lease.model, self._stop)
            return
        async with self.manager.lease(self.model_id, ModelKind.TEXT) as lease:
            if self._stop.is_set():
                raise _gone(self.model_id)
            self.results[index] = await work(lease.model, self._stop)

    async def deltas(self) -> AsyncIterator[tuple[int, str | None]]:
        """`(choice, text delta)` as the text comes, and `(choice, None)` once that choice
        has ended (its `results` entry is set). A failing choice stops the others and its
        error is raised here."""
        assert self.lease is not None, "call start() first"
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

        def sink(index: int) -> TokenSink:
            def on_token(delta: str) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (index, delta))

            return on_token

        async def run(index: int) -> None:
            try:
                await self._run_choice(index, sink(index))
            finally:
                # after every delta: call_soon_threadsafe keeps the order of its callbacks
                loop.call_soon_threadsafe(queue.put_nowait, (index, _DONE))

        workers = [asyncio.ensure_future(run(i)) for i in range(len(self.choices))]
        for worker in workers:
            _retrieved(worker)  # its error is raised below when it matters
        try:
            remaining = len(workers)
            while remaining:
                index, item = await queue.get()
                if item is _DONE:
                    remaining -= 1
                    await asyncio.wait([workers[index]])
                    workers[index].result()  # raises the choice's error
                    yield index, None
                    continue
                assert isinstance(item, str)
                yield index, item
        finally:
            self._stop.set()
            try:
                # When the client went away: let the work notice, and keep the leases until
                # it has let go of the model.
                for worker in workers:
                    await _thread_finished(worker, self._stop)
                    if not worker.cancelled():
                        worker.exception()  # retrieved: a stop's ClientDisconnected is expected
            finally:
                await self._stack.aclose()

    async def aclose(self) -> None:
        """Release the lease when the stream never started iterating."""
        self._stop.set()
        await self._stack.aclose()
