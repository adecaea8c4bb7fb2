"""Continuous batching of one text model's requests, on transformers' own engine.

Concurrent requests for one loaded causal LM join one running batch: transformers'
`ContinuousBatchingManager` (`model.init_continuous_batching()`, with its paged attention
cache) runs a background thread that, between decoding steps, admits waiting requests
(their prompts prefilled in the same forward pass as the others' next tokens), drops
finished or cancelled ones and frees their cache blocks. On CPU it works with the `sdpa`
attention of the models we serve (and switches `eager` models to `paged|eager`).

What we add on top, and why:

* Per-request token choice (`Decoding`). The engine samples every request with torch's
  global RNG and one `do_sample` flag for the whole manager, so a seed could not reproduce
  its text and greedy and sampled requests could not share a batch; nor does it know
  OpenAI's penalties or top logprobs. `SeededSampling` is a continuous-batching logits
  processor (the engine's own per-request extension point): each request that samples,
  is penalised or asks for logprobs picks its token with its own `Decoding` (its own
  `torch.Generator`, the counts of its own tokens) and leaves only that token possible;
  the manager runs greedy (argmax), so plain greedy requests are untouched.
* Bounded memory. By default the engine sizes its cache from 60% of the device's free
  memory (on CPU, of the host's RAM) and takes 10+ seconds to allocate it; the agent gives
  it `BatchLimits` instead: requests per batch, KV-cache tokens in flight (whole pages of
  `page_size` tokens) and tokens per forward step.
* Delivery to our own callbacks from the engine's thread (`_Direct`) rather than through
  an asyncio loop, so both the agent's event loop and blocking callers (the profiler)
  can wait on a request.

Stop sequences and client disconnects end a request with `cancel_request`: the engine
removes it before its next step and frees its cache blocks.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from edge_agent.core.batching import BatchLimits

log = logging.getLogger("edge_agent.batching")


@dataclass
class Picked:
    """A chosen token with its log-probability and the likeliest alternatives (ids)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Decoding:
    """How one request picks each next token from the model's logits, in the batch and
    alone alike (so both paths give the same text for the same seed):

    * OpenAI's penalties on the tokens it generated so far: logit -= presence * [count > 0]
      + frequency * count (counted here, from the tokens this object chose);
    * greedy (`temperature` 0: the likeliest token) or sampled at `temperature` within the
      nucleus `top_p`, drawn with the request's own `generator`;
    * with `top_logprobs` not None, a `Picked` per token: the log-probabilities are those
      of the model's distribution after the penalties, before temperature and top_p (what
      the model says of each token, whatever sampling then did with it).
    """

    temperature: float
    top_p: float
    generator: torch.Generator | None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_logprobs: int | None = None
    counts: dict[int, int] = field(default_factory=dict)
    picked: list[Picked] = field(default_factory=list)

    @property
    def plain_greedy(self) -> bool:
        """Nothing to do beyond the engine's own argmax."""
        return (
            self.temperature <= 0
            and not self.presence_penalty
            and not self.frequency_penalty
            and self.top_logprobs is None
        )

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from one row of logits (vocabulary-sized); records it."""
        x = logits.float()
        if self.counts and (self.presence_penalty or self.frequency_penalty):
            ids = torch.tensor(list(self.counts), dtype=torch.long, device=x.device)
            seen = torch.tensor(list(self.counts.values()), dtype=x.dtype, device=x.device)
            x = x.clone()
            x[ids] -= self.frequency_penalty * seen + self.presence_penalty
        if self.temperature <= 0 or self.generator is None:
            token = int(torch.argmax(x).item())
        else:
            token = _sample(x, self.temperature, self.top_p, self.generator)
        if self.top_logprobs is not None:
            lp = torch.log_softmax(x, dim=-1)
            top: list[tuple[int, float]] = []
            if self.top_logprobs > 0:
                vals, idx = torch.topk(lp, min(self.top_logprobs, lp.numel()))
                top = [(int(i), float(v)) for i, v in zip(idx.tolist(), vals.tolist(), strict=True)]
            self.picked.append(Picked(token, float(lp[token]), top))
        self.counts[token] = self.counts.get(token, 0) + 1
        return token


class _Direct:
    """Stands in for the event loop transformers' output router hands results to: runs the
    callback at once, on the engine's thread (our callbacks only queue or hand on)."""

    @staticmethod
    def call_soon_threadsafe(callback: Callable[..., Any], *args: Any) -> None:
        callback(*args)


@functools.cache
def _seeded_sampling_class() -> type:
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
    )

    class SeededSampling(ContinuousBatchingLogitsProcessor):  # type: ignore[misc]
        """Picks the tokens of requests with a `Decoding` slot (sampled, penalised or asking
        for logprobs) with `Decoding.choose` and leaves only that token possible; slot 0
        (plain greedy) rows are left to the engine's argmax."""

        supported_kwargs: dict[str, type] = {"sampler": int}  # noqa: RUF012 - the base's
        ignored_kwargs: tuple[str, ...] = ()

        def __init__(self, samplers: dict[int, Decoding]) -> None:
            self.samplers = samplers

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            slots = [
                r.state.logit_processor_kwargs.get("sampler", 0) for r in requests_with_new_token
            ]
            return torch.tensor(slots, dtype=torch.int32, device="cpu")

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            slots = tensor_arg[: scores.size(0)].tolist()
            if not any(slots):
                return scores
            out = scores.clone()
            for row, slot in enumerate(slots):
                s = self.samplers.get(int(slot))
                if s is None:
                    continue
                chosen = s.choose(scores[row])
                out[row].fill_(float("-inf"))
                out[row, chosen] = 0.0
            return out

    return SeededSampling


def _sample(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> int:
    """One token from `logits` at `temperature` within nucleus `top_p`, drawn with
    `generator`."""
    x = logits.float().unsqueeze(0) / temperature
    if top_p < 1.0:
        from transformers import TopPLogitsWarper

        x = TopPLogitsWarper(top_p)(torch.empty(0), x)
    probs = torch.softmax(x, dim=-1)
    if generator.device != probs.device:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator).item())


OnOutput = Callable[[list[int], bool, str | None], None]
"""`(generated_tokens_so_far, finished, error)`, called on the engine's thread."""


class TextBatcher:
    """One text model's running batch (see the module docstring). Thread-safe."""

    def __init__(self, model: Any, eos_ids: list[int], pad_id: int, limits: BatchLimits) -> None:
        from transformers import GenerationConfig, LogitsProcessorList
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
        from transformers.generation.continuous_batching.cb_logits_processors import (
            ContinuousBatchingLogitsProcessorList,
        )

        self.limits = limits
        self._samplers: dict[int, Decoding] = {}
        self._slot_of: dict[str, int] = {}  # request id -> its `Decoding` slot
        self._slots = itertools.count(1)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        gen_cfg = GenerationConfig(
            max_new_tokens=64,
            do_sample=False,
            eos_token_id=eos_ids or -1,
            pad_token_id=pad_id,
        )
        pages = max(1, math.ceil(limits.max_tokens_in_flight / limits.page_size))
        cb_cfg = ContinuousBatchingConfig(
            page_size=limits.page_size,
            num_blocks=pages,
            max_batch_tokens=limits.step_tokens,
            max_requests_per_batch=limits.max_requests,
            max_blocks_per_request=0,  # no decode fast path: it needs a compiled kernel
            use_cuda_graph=False,  # our sampler runs Python per step
            use_async_batching=False,
            auto_switch_to_flash=False,
            allow_block_sharing=False,
            scheduler_type="fifo",
        )
        mgr = model.init_continuous_batching(
            generation_config=gen_cfg, continuous_batching_config=cb_cfg
        )
        processors = ContinuousBatchingLogitsProcessorList(
            LogitsProcessorList([_seeded_sampling_class()(self._samplers)])
        )
        processors.tensors_required = 1  # our processor's slot column
        mgr.logit_processor = processors
        self._mgr = mgr
        self._model = model
        mgr.start()

    def submit(
        self,
        input_ids: list[int],
        max_new_tokens: int,
        decoding: Decoding,
        on_output: OnOutput,
    ) -> str:
        """Queue one request; `on_output` gets its tokens as they come. Returns its id."""
        rid = f"r{next(self._ids)}"
        slot = 0
        if not decoding.plain_greedy:
            slot = next(self._slots)
            self._samplers[slot] = decoding
            self._slot_of[rid] = slot

        def deliver(out: Any) -> None:
            done = out.is_finished()
            if done:
                self._samplers.pop(slot, None)
                self._slot_of.pop(rid, None)
            on_output(list(out.generated_tokens), done, out.error)

        with self._mgr.output_router._lock:
            self._mgr.output_router.result_handlers[rid] = (
                self._auto_cleanup(rid, deliver),
                _Direct,
            )
        added = self._mgr.add_request(
            input_ids, request_id=rid, max_new_tokens=max_new_tokens, streaming=True, sampler=slot
        )
        if added is None:  # the engine refused it (stopping, or its thread failed)
            self._forget(rid, slot)
            raise RuntimeError("the batching engine is not accepting requests")
        return rid

    def _auto_cleanup(self, rid: str, deliver: Callable[[Any], None]) -> Callable[[Any], None]:
        def handler(out: Any) -> None:
            try:
                deliver(out)
            finally:
                if out.is_finished():
                    with self._mgr.output_router._lock:
                        self._mgr.output_router.result_handlers.pop(rid, None)

        return handler

    def _forget(self, rid: str, slot: int) -> None:
        with self._mgr.output_router._lock:
            self._mgr.output_router.result_handlers.pop(rid, None)
        self._samplers.pop(slot, None)
        self._slot_of.pop(rid, None)

    def cancel(self, rid: str) -> None:
        """End a request before its next step (its cache blocks are freed); no further
        output is delivered for it."""
        with self._mgr.output_router._lock:
            self._mgr.output_router.result_handlers.pop(rid, None)
        self._mgr.cancel_request(rid)
        slot = self._slot_of.pop(rid, None)
        if slot is not None:  # a cancelled request is never delivered finished: drop it here
            self._samplers.pop(slot, None)

    @property
    def alive(self) -> bool:
        return bool(self._mgr.is_running())

    def close(self) -> None:
        """Stop the engine's thread and drop its cache (the model can then be freed)."""
        mgr = self._mgr
        try:
            mgr.stop(block=True, timeout=30, hard_stop=True)
        except Exception:  # a broken engine must not keep its model from closing
            log.warning("stopping the batching engine failed", exc_info=True)
        try:
            mgr.destroy()
        except Exception:
            log.debug("destroying the batching engine failed", exc_info=True)
        self._model.__dict__.pop("_cached_continuous_batching_manager", None)
        self._samplers.clear()
        self._slot_of.clear()
