"""Running one generation: hold a lease on the model, run the blocking generation in a worker
thread, and (for streams) hand text deltas to the event loop as they are produced.

Every generation keeps its lease until the generating thread has really finished, also when
the client goes away, so a model is never freed under a running generation. And a client
that goes away stops the work (between tokens, or after the current denoising step): a
generation nobody waits for must not hold its model, or the swap pool with every pooled
model queued behind it. Streams learn of it from the response (Starlette cancels the body);
non-streamed requests from `client_gone`, which the routes build from the ASGI
`http.disconnect` message.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from edge_agent.core.manager import Lease, ModelManager
from edge_agent.core.ports import ImageParams, LoadedModel, TextParams, TextResult
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


async def _run_leased(
    manager: ModelManager,
    model_id: str,
    kind: ModelKind,
    client_gone: ClientGone | None,
    work: Callable[[LoadedModel, Callable[[], bool]], T],
) -> tuple[Lease, T]:
    """Hold a lease and run `work(model, should_stop)` in a worker thread. When the client
    goes away the stop flag is set (the work stops within a token or a denoising step) and
    `ClientDisconnected` is raised; the lease is released only after the thread is done."""
    async with _watching(client_gone) as stop, manager.lease(model_id, kind) as lease:
        if stop.is_set():  # gone while the request waited: do not start the work at all
            raise _gone(model_id)
        model = lease.model
        worker = asyncio.ensure_future(asyncio.to_thread(work, model, stop.is_set))
        result = await _until_done(worker, stop)
        if stop.is_set():
            raise _gone(model_id)
        return lease, result


async def generate_text(
    manager: ModelManager,
    model_id: str,
    messages: list[ChatMessage] | None,
    prompt: str | None,
    params: TextParams,
    client_gone: ClientGone | None = None,
) -> TextOutcome:
    """One non-streamed text generation; stops between tokens once `client_gone` returns."""
    lease, result = await _run_leased(
        manager,
        model_id,
        ModelKind.TEXT,
        client_gone,
        lambda model, should_stop: model.generate_text(messages, prompt, params, None, should_stop),
    )
    return TextOutcome(lease, result)


async def generate_images(
    manager: ModelManager,
    model_id: str,
    prompt: str,
    params: ImageParams,
    client_gone: ClientGone | None = None,
) -> tuple[Lease, list[bytes]]:
    """One image request; stops after the current denoising step once `client_gone`
    returns."""
    return await _run_leased(
        manager,
        model_id,
        ModelKind.IMAGE,
        client_gone,
        lambda model, should_stop: model.generate_image(prompt, params, should_stop),
    )


class TextStream:
    """An open streaming generation. `start()` waits for the model (raising admission and
    load errors before any byte is sent); iterate `deltas()`; `result` is set at the end."""

    def __init__(
        self,
        manager: ModelManager,
        model_id: str,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        params: TextParams,
    ) -> None:
        self.manager = manager
        self.model_id = model_id
        self.messages = messages
        self.prompt = prompt
        self.params = params
        self.lease: Lease | None = None
        self.result: TextResult | None = None
        self._stack = AsyncExitStack()
        self._stop = threading.Event()

    async def start(self) -> Lease:
        self.lease = await self._stack.enter_async_context(
            self.manager.lease(self.model_id, ModelKind.TEXT)
        )
        return self.lease

    async def deltas(self) -> AsyncIterator[str]:
        assert self.lease is not None, "call start() first"
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        model = self.lease.model

        def on_token(delta: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        def run() -> TextResult:
            try:
                return model.generate_text(
                    self.messages, self.prompt, self.params, on_token, self._stop.is_set
                )
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        worker = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                assert isinstance(item, str)
                yield item
            self.result = await worker
        finally:
            self._stop.set()
            try:
                # When the client went away: let the thread notice, and keep the lease until
                # it has finished touching the model.
                await _thread_finished(worker, self._stop)
            finally:
                await self._stack.aclose()

    async def aclose(self) -> None:
        """Release the lease when the stream never started iterating."""
        self._stop.set()
        await self._stack.aclose()
