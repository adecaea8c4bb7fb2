"""A loaded model's throughput at several batch sizes: the profile's `throughput` points.

The orchestrator plans a host's capacity and delay with these (`orchestrator.core.batching`):
a model that batches serves `b` concurrent requests in about `request_s(b)` each, so each
costs the host `request_s(b) / b` seconds, far less than the batch-1 `generation_s` once
the batch fills. Measuring batch 1 alone would make a batching host look b times slower
than it is.

- Text: `b` requests of the profile's probe (same prompt, greedy, the probe's few new
  tokens) submitted at once to the model's running batch (`TextModel.start_text`, the
  continuous-batching engine the agent serves with), for `b` in 1, 4, 16 (those within the
  batch's `max_requests`). Each point has the tokens per second of all `b` requests
  together, the median time to first token and the median request seconds, counted from
  the submission of the first. One untimed request first starts the engine (allocating its
  KV cache), which is the engine's cost, not a request's.
- Images: `b` images of the model's default size, steps and guidance as one pipeline call
  (what the agent's image batcher runs for `b` compatible requests), for `b` in 1, 2, 4
  (within `max_images`); batch 1 is the profile's own default generation, not re-run.

Bounded cost, since every model is profiled in the background at agent start: a batch is
measured only when its no-batching bound, `b x` the batch-1 time, is within `max_s`
(`EDGE_PROFILE_THROUGHPUT_MAX_S`, 30 s by default), so a slow image pipeline on a CPU
host gets its batch-1 point and a note saying which batches were left out. A model that
cannot batch (text batching off, or the engine refuses the model) gets no points, and the
planner falls back to `generation_s`.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

from edge_agent.adapters.device import synchronize
from edge_agent.adapters.torch_models import ImagePipelineModel, TextModel
from edge_agent.core.batching import BatchLimits
from edge_agent.core.ports import ImageParams, TextParams, TextResult
from genedge.contract import BatchPoint, ChatMessage

TEXT_BATCHES = (1, 4, 16)
IMAGE_BATCHES = (1, 2, 4)


@dataclass(frozen=True)
class ThroughputBounds:
    """How far the profile measures: the agent's batch limits (the largest batch it would
    run) and `max_s`, the no-batching bound (`b x` batch-1 seconds) a batch must fit."""

    limits: BatchLimits = field(default_factory=BatchLimits)
    max_s: float = 30.0

    def sizes(self, candidates: tuple[int, ...], cap: int, base_s: float) -> list[int]:
        """The batch sizes of `candidates` the agent would run (up to `cap`) and the time
        bound allows."""
        return [b for b in candidates if b <= cap and (b == 1 or b * base_s <= self.max_s)]

    def left_out(self, candidates: tuple[int, ...], cap: int, base_s: float) -> str | None:
        """A note naming the batches the time bound left out, or None."""
        over = [b for b in candidates if b <= cap and b > 1 and b * base_s > self.max_s]
        if not over:
            return None
        return (
            f"throughput not measured at batch {', '.join(map(str, over))}: at "
            f"{base_s:.2f} s a request, {over[0]} of them could take {over[0] * base_s:.1f} s, "
            f"over the {self.max_s:g} s bound (EDGE_PROFILE_THROUGHPUT_MAX_S)"
        )


DEFAULT_BOUNDS = ThroughputBounds()


class _Request:
    """One request of a timed text batch: when its first text and its end came."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.end: float | None = None
        self.result: TextResult | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def on_token(self, delta: str) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def on_done(self, result: TextResult | None, error: BaseException | None) -> None:
        self.end = time.perf_counter()
        self.result, self.error = result, error
        self.done.set()


class CannotBatch(Exception):
    """The model's requests do not join a running batch (its reason is the message)."""


def _run_text_batch(
    model: TextModel,
    inputs: tuple[list[ChatMessage] | None, str | None],
    params: TextParams,
    limits: BatchLimits,
    batch: int,
    timeout_s: float,
) -> BatchPoint:
    """`batch` requests submitted at once; their point (times from the first submission)."""
    messages, prompt = inputs
    requests = [_Request() for _ in range(batch)]
    jobs = []
    t0 = time.perf_counter()
    for r in requests:
        job = model.start_text(messages, prompt, params, r.on_token, r.on_done, limits)
        if job is None:
            raise CannotBatch("the model's requests do not batch (the engine refused it)")
        jobs.append(job)
    deadline = t0 + timeout_s
    for r in requests:
        if not r.done.wait(max(0.0, deadline - time.perf_counter())):
            for job in jobs:
                job.cancel()
            raise TimeoutError(f"a batch of {batch} did not finish within {timeout_s:.0f} s")
        if r.error is not None:
            raise r.error
    ends = [(r.end or t0) - t0 for r in requests]
    # A request that ended before any text (EOS first) had its first token at its end.
    firsts = [(r.first or r.end or t0) - t0 for r in requests]
    tokens = sum(r.result.completion_tokens for r in requests if r.result is not None)
    span = max(ends)
    return BatchPoint(
        batch=batch,
        request_s=statistics.median(ends),
        tokens_per_s=tokens / span if span > 0 else None,
        ttft_s=statistics.median(firsts),
    )


def measure_text(
    model: TextModel,
    inputs: tuple[list[ChatMessage] | None, str | None],
    tokens: int,
    base_s: float,
    bounds: ThroughputBounds,
) -> tuple[list[BatchPoint], list[str]]:
    """The text points (see the module docstring) and notes on what was left out.
    `inputs` is the probe's (messages, prompt), `tokens` its new tokens, `base_s` the
    profile's batch-1 generation seconds (for the time bound)."""
    limits = bounds.limits
    if not limits.text:
        return [], ["throughput not measured: text batching is off (EDGE_TEXT_BATCHING)"]
    params = TextParams(max_tokens=tokens, temperature=0.0, top_p=1.0, seed=0)
    timeout_s = max(60.0, 4 * bounds.max_s)
    notes: list[str] = []
    try:  # start the engine (its KV cache is allocated here): not a request's time
        warm = TextParams(max_tokens=1, temperature=0.0, top_p=1.0, seed=0)
        _run_text_batch(model, inputs, warm, limits, 1, timeout_s)
    except CannotBatch as exc:
        return [], [f"throughput not measured: {exc}"]
    points: list[BatchPoint] = []
    for b in bounds.sizes(TEXT_BATCHES, limits.max_requests, base_s):
        try:
            points.append(_run_text_batch(model, inputs, params, limits, b, timeout_s))
        except TimeoutError as exc:
            notes.append(f"throughput stopped: {exc}")
            break
    if note := bounds.left_out(TEXT_BATCHES, limits.max_requests, base_s):
        notes.append(note)
    if limits.max_requests < TEXT_BATCHES[-1]:
        notes.append(f"text batches capped at {limits.max_requests} (EDGE_BATCH_MAX_REQUESTS)")
    return points, notes


def measure_images(
    model: ImagePipelineModel,
    prompt: str,
    params: ImageParams,
    base_s: float,
    bounds: ThroughputBounds,
    device: str,
) -> tuple[list[BatchPoint], list[str]]:
    """The image points (see the module docstring) and notes on what was left out.
    `params` are the default generation's (one image), `base_s` its seconds."""
    cap = bounds.limits.max_images
    points = [BatchPoint(batch=1, request_s=base_s, images_per_s=1 / base_s)]
    for b in bounds.sizes(IMAGE_BATCHES, cap, base_s):
        if b == 1:
            continue
        batch = ImageParams(
            width=params.width,
            height=params.height,
            steps=params.steps,
            guidance_scale=params.guidance_scale,
            n=b,
            seed=0,
        )
        t0 = time.perf_counter()
        model.generate_image(prompt, batch)
        synchronize(device)
        took = time.perf_counter() - t0
        points.append(BatchPoint(batch=b, request_s=took, images_per_s=b / took))
    notes = [n for n in [bounds.left_out(IMAGE_BATCHES, cap, base_s)] if n]
    if cap < IMAGE_BATCHES[-1]:
        notes.append(f"image batches capped at {cap} (EDGE_IMAGE_MAX_BATCH)")
    return points, notes
