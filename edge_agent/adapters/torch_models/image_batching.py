"""Batched image generation: requests for one pipeline with the same size, steps and
guidance run as one pipeline call (one UNet batch per denoising step), up to a number of
images the profiler measures.

diffusers has no continuous batching to reuse (a denoising loop's timesteps are fixed per
call), so this is our own small loop: one worker thread per pipeline takes the oldest
waiting request and every other waiting request it is compatible with (`batch_key`), up to
`max_images` images, and runs them as one call with a prompt (and a seeded generator) per
image. Each image's latents come from its own generator, so a seeded image is the same
whether it ran alone or in a batch.

A request that is cancelled while waiting never runs; a running batch stops after the
current denoising step once every request in it is cancelled (it raises from diffusers'
`callback_on_step_end`, which also skips the VAE decode). A cancelled request in a batch
that others still want finishes with the batch: the images are computed anyway, and its
`finished` event is set only when the batch is done, so the caller keeps its lease (the
model is never freed under a running batch).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.core.ports import ImageParams

log = logging.getLogger("edge_agent.image_batching")

ImagesDone = Callable[[list[bytes] | None, BaseException | None], None]
"""`(png_images, error)`: how a request ended (called on the worker thread)."""


def batch_key(params: ImageParams) -> tuple[int, int, int, float]:
    """Requests with equal keys can share one pipeline call."""
    return (params.width, params.height, params.steps, params.guidance_scale)


@dataclass(eq=False)
class ImageJob:
    """One image request waiting for, or in, a batch."""

    prompt: str
    params: ImageParams
    on_done: ImagesDone
    cancelled: bool = False
    finished: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Ask to stop: a waiting request never runs; a running batch stops at its next
        step once all its requests are cancelled. Wait on `finished` before letting go."""
        self.cancelled = True


RunBatch = Callable[[list[ImageJob], Callable[[], bool]], list[list[bytes]]]
"""Runs one batch: `(jobs, all_cancelled)` -> each job's PNG images, in order."""


class ImageBatcher:
    """The waiting line and worker thread of one pipeline (see the module docstring)."""

    def __init__(self, run_batch: RunBatch, max_images: int, name: str) -> None:
        self.max_images = max(1, max_images)
        self._run_batch = run_batch
        self._waiting: deque[ImageJob] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches_run = 0
        self.largest_batch = 0
        self._thread = threading.Thread(target=self._loop, name=f"images-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: ImageJob) -> ImageJob:
        with self._cond:
            if self._closed:
                raise RuntimeError("the pipeline's batcher is closed")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def _take(self) -> list[ImageJob] | None:
        """The next batch: the oldest live request and the compatible ones behind it."""
        with self._cond:
            while True:
                while self._waiting and self._waiting[0].cancelled:
                    _end(self._waiting.popleft(), None, _cancelled_error())
                if self._waiting:
                    break
                if self._closed:
                    return None
                self._cond.wait()
            first = self._waiting.popleft()
            batch, images = [first], first.params.n
            key = batch_key(first.params)
            for job in list(self._waiting):
                if job.cancelled:
                    self._waiting.remove(job)
                    _end(job, None, _cancelled_error())
                elif batch_key(job.params) == key and images + job.params.n <= self.max_images:
                    self._waiting.remove(job)
                    batch.append(job)
                    images += job.params.n
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, sum(j.params.n for j in batch))

            def all_cancelled(b: list[ImageJob] = batch) -> bool:
                return all(j.cancelled for j in b)

            try:
                results = self._run_batch(batch, all_cancelled)
            except BaseException as exc:
                for job in batch:
                    _end(job, None, _cancelled_error() if job.cancelled else exc)
                continue
            for job, pngs in zip(batch, results, strict=True):
                _end(job, None, _cancelled_error()) if job.cancelled else _end(job, pngs, None)

    def close(self) -> None:
        """Refuse new requests, end the waiting ones, and wait for the running batch."""
        with self._cond:
            self._closed = True
            while self._waiting:
                _end(self._waiting.popleft(), None, RuntimeError("the model was unloaded"))
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=60)


def _cancelled_error() -> BaseException:
    from edge_agent.errors import ClientDisconnected

    return ClientDisconnected("the client went away: generation stopped")


def _end(job: ImageJob, pngs: list[bytes] | None, error: BaseException | None) -> None:
    try:
        job.on_done(pngs, error)
    except Exception:  # a failing callback must not stop the worker
        log.warning("an image request's completion callback failed", exc_info=True)
    finally:
        job.finished.set()


__all__ = ["ImageBatcher", "ImageJob", "ImagesDone", "batch_key"]
