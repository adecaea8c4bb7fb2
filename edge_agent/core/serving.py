"""Running one generation: hold a lease on the model, run the blocking generation in a worker
thread, and (for streams) hand text deltas to the event loop as they are produced.

A stream keeps its lease until the generating thread has really finished, also when the
client goes away (the thread is told to stop between tokens), so a model is never freed
under a running generation.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

from edge_agent.core.manager import Lease, ModelManager
from edge_agent.core.ports import ImageParams, TextParams, TextResult
from genedge.contract import ChatMessage, ModelKind

_DONE = object()


@dataclass
class TextOutcome:
    lease: Lease
    result: TextResult


async def generate_text(
    manager: ModelManager,
    model_id: str,
    messages: list[ChatMessage] | None,
    prompt: str | None,
    params: TextParams,
) -> TextOutcome:
    async with manager.lease(model_id, ModelKind.TEXT) as lease:
        result = await asyncio.to_thread(lease.model.generate_text, messages, prompt, params)
        return TextOutcome(lease, result)


async def generate_images(
    manager: ModelManager, model_id: str, prompt: str, params: ImageParams
) -> tuple[Lease, list[bytes]]:
    async with manager.lease(model_id, ModelKind.IMAGE) as lease:
        images = await asyncio.to_thread(lease.model.generate_image, prompt, params)
        return lease, images


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
            if not worker.done():
                # The client went away: let the thread notice, and keep the lease until it
                # has finished touching the model.
                await asyncio.shield(asyncio.wait([worker]))
            await self._stack.aclose()

    async def aclose(self) -> None:
        """Release the lease when the stream never started iterating."""
        self._stop.set()
        await self._stack.aclose()
