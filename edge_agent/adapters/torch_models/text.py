"""A transformers causal LM on the device (`TextModel`): chat or plain prompts, greedy or
seeded sampling, tokens streamed as text deltas, and stopping when the client goes away.

Two ways to run a request: `start_text` joins the model's running batch (continuous
batching, `batching.TextBatcher`) and returns at once; `generate_text` blocks its thread
and runs `model.generate` alone (the profiler's baseline, and the fallback for a model the
batching engine cannot run), or waits on the batch once one is running (the engine may
have switched the model's attention to its paged form)."""

from __future__ import annotations

import copy
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edge_agent.adapters.torch_models.batching import Decoding, Picked, TextBatcher
from edge_agent.adapters.torch_models.loaded import LoadedTorchModel
from edge_agent.core.batching import BatchLimits
from edge_agent.core.ports import (
    ImageParams,
    TextParams,
    TextResult,
    TokenLogprob,
    TokenSink,
)
from edge_agent.core.stops import StopScanner
from edge_agent.errors import ClientDisconnected, InvalidRequest, ModelUnavailable, WrongModelKind
from genedge.contract import ChatMessage

log = logging.getLogger("edge_agent.text")

TextDone = Callable[[TextResult | None, BaseException | None], None]
"""`(result, error)`: how a batched request ended (called on the engine's thread)."""


class _DeltaStreamer:
    """Decodes generated tokens incrementally and reports each new piece of text.

    Uses a sliding window (as text-generation-inference does): the text of the tokens after
    `prefix` minus the text of those before `read`, so tokenizers whose pieces depend on their
    neighbours (leading spaces) decode right; a piece ending in an incomplete UTF-8 character
    is held back until the character is complete. The concatenation of the deltas is the
    result text by construction.

    With stop strings, every delta goes through a `StopScanner` first: the end that might
    begin a stop string is held back, and once one is found (`stopped`) nothing more is
    reported; the caller then ends the generation.
    """

    def __init__(
        self, tokenizer: Any, on_token: TokenSink | None, stops: tuple[str, ...] = ()
    ) -> None:
        self.tokenizer = tokenizer
        self.on_token = on_token
        self.tokens: list[int] = []
        self.pieces: list[str] = []
        self._prefix = 0
        self._read = 0
        self._stops = StopScanner(stops)

    @property
    def stopped(self) -> bool:
        """A stop string has been found: the text is complete."""
        return self._stops.hit

    def _report(self, text: str) -> None:
        if text:
            self.pieces.append(text)
            if self.on_token is not None:
                self.on_token(text)

    def _decode(self, ids: list[int]) -> str:
        return str(
            self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )

    def _emit(self, final: bool) -> None:
        before = self._decode(self.tokens[self._prefix : self._read])
        after = self._decode(self.tokens[self._prefix :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            delta = after[len(before) :]
            self._prefix, self._read = self._read, len(self.tokens)
            self._report(self._stops.feed(delta))

    def push(self, ids: list[int]) -> None:
        """New generated tokens, in order."""
        if self.stopped:
            return
        self.tokens.extend(ids)
        self._emit(final=False)

    def end(self) -> None:
        if self.stopped:
            return
        if self._read < len(self.tokens):
            self._emit(final=True)
        self._report(self._stops.flush())

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@functools.cache
def _poll_stop_class() -> type:
    from transformers import StoppingCriteria

    class PollStop(StoppingCriteria):
        """Stops generation when `should_stop()` says so (polled after every token)."""

        def __init__(self, should_stop: Callable[[], bool]) -> None:
            self.should_stop = should_stop

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            stop = bool(self.should_stop())
            return torch.full(
                (input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device
            )

    return PollStop


@functools.cache
def _feed_class() -> type:
    from transformers import StoppingCriteria

    class Feed(StoppingCriteria):
        """Hands each new token to the `_DeltaStreamer` and stops once it has found a stop
        string. A stopping criterion rather than generate's `streamer`: generate asks its
        criteria before it hands the streamer the token, so a stop string found by the
        streamer would cost one more token, which the batched path does not generate."""

        def __init__(self, streamer: _DeltaStreamer, n_prompt: int) -> None:
            self.streamer = streamer
            self.seen = n_prompt

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            new = input_ids[0, self.seen :].tolist()
            self.seen = input_ids.shape[1]
            self.streamer.push([int(t) for t in new])
            return torch.full(
                (input_ids.shape[0],),
                self.streamer.stopped,
                dtype=torch.bool,
                device=input_ids.device,
            )

    return Feed


@functools.cache
def _chooser_class() -> type:
    from transformers import LogitsProcessor

    class Chooser(LogitsProcessor):
        """Picks the next token with the request's `Decoding` (penalties, seeded sampling,
        logprobs) and leaves only that token possible, so `generate(do_sample=False)` picks
        it: sampling stays off torch's global RNG (a seed reproduces its text even while
        other threads generate) and matches the batched path token for token."""

        def __init__(self, decoding: Decoding) -> None:
            self.decoding = decoding

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            chosen = self.decoding.choose(scores[0])
            out = torch.full_like(scores, float("-inf"))
            out[0, chosen] = 0.0
            return out

    return Chooser


def _token_texts(tok: Any, tokens: list[int], picked: list[Picked]) -> list[TokenLogprob]:
    """Each chosen token's text (and its alternatives') as it reads after the tokens before
    it: decoding a token alone drops the leading space of sentencepiece pieces, so each is
    decoded after up to 4 tokens of context, less that context's own text."""

    def decode(ids: list[int]) -> str:
        return str(tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    out = []
    for i, p in enumerate(picked):
        ctx = tokens[max(0, i - 4) : i]
        base = decode(ctx)

        def text(t: int, ctx: list[int] = ctx, base: str = base) -> str:
            full = decode([*ctx, t])
            return full[len(base) :] if full.startswith(base) else decode([t])

        out.append(TokenLogprob(text(p.token), p.logprob, [(text(t), lp) for t, lp in p.top]))
    return out


def _logprobs_of(
    tok: Any, decoding: Decoding, tokens: list[int], text: str, eos_ids: set[int]
) -> list[TokenLogprob] | None:
    """The logprobs of the tokens that make `text`: not an end-of-sequence token, and none
    that starts past the text's end (cut at a stop string)."""
    if decoding.top_logprobs is None:
        return None
    picked = decoding.picked[: len(tokens)]
    while picked and picked[-1].token in eos_ids:
        picked = picked[:-1]
    entries = _token_texts(tok, tokens, picked)
    kept: list[TokenLogprob] = []
    offset = 0
    for e in entries:
        if offset >= len(text) and kept:
            break
        kept.append(e)
        offset += len(e.token)
    return kept if text else []


class TextModel(LoadedTorchModel):
    """A transformers causal LM and its tokenizer on the device."""

    kind = "text"

    def __init__(self, model_id: str, model: nn.Module, tokenizer: Any, device: torch.device):
        super().__init__(model_id, device)
        self.model: Any = model
        self.tokenizer: Any = tokenizer
        self._batcher: TextBatcher | None = None
        self._batching_refused: str | None = None  # why the engine cannot run this model
        self._batcher_lock = threading.Lock()

    def torch_modules(self) -> list[nn.Module]:
        return [self.model] if self.model is not None else []

    def _drop(self) -> None:
        with self._batcher_lock:
            batcher, self._batcher = self._batcher, None
        if batcher is not None:  # its thread touches the model: stop it first
            batcher.close()
        self.model = None
        self.tokenizer = None

    # ---------------------------------------------------------------------- batching
    def batcher(self, limits: BatchLimits) -> TextBatcher | None:
        """The model's running batch, started on first use; None when the batching engine
        cannot run this model (the reason is logged once and requests run alone)."""
        with self._batcher_lock:
            if self._batcher is not None and self._batcher.alive:
                return self._batcher
            if self._batching_refused is not None or self.model is None:
                return None
            if self._batcher is not None:  # its thread died: start a fresh engine
                self._batcher.close()
                self._batcher = None
            eos_ids, pad = self._eos_and_pad(self.model, self.tokenizer)
            try:
                self._batcher = TextBatcher(self.model, sorted(eos_ids), pad, limits)
            except Exception as exc:
                self._batching_refused = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "%s: continuous batching unavailable, requests run one by one: %s",
                    self.model_id,
                    self._batching_refused,
                )
                return None
            return self._batcher

    @property
    def batching(self) -> bool:
        """Whether requests currently join a running batch."""
        return self._batcher is not None

    def start_text(
        self,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        params: TextParams,
        on_token: TokenSink | None,
        on_done: TextDone,
        limits: BatchLimits,
    ) -> TextJob | None:
        """Join the running batch (tokenise, check the context, queue) and return at once;
        `on_token` and then `on_done` are called from the engine's thread. None when the
        model cannot batch: the caller runs `generate_text` instead."""
        batcher = self.batcher(limits)
        if batcher is None:
            return None
        model, tok = self.model, self.tokenizer
        if model is None or tok is None:
            raise ModelUnavailable(f"model {self.model_id} has been closed", model=self.model_id)
        ids, eos_ids, _ = self._encode(model, tok, messages, prompt)
        max_new = self._max_new_tokens(model, len(ids), params, chat=messages is not None)
        decoding = self._decoding(params)
        streamer = _DeltaStreamer(tok, on_token, params.stop)
        job = TextJob(batcher, streamer, decoding, len(ids), max_new, eos_ids, on_done)
        job.rid = batcher.submit(ids, max_new, decoding, job.on_output)
        return job

    def _decoding(self, params: TextParams) -> Decoding:
        sampled = params.temperature > 0
        return Decoding(
            temperature=params.temperature,
            top_p=params.top_p,
            generator=self._generator(params.seed) if sampled else None,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            top_logprobs=params.logprobs,
        )

    def _generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
        return generator

    def _eos_and_pad(self, model: Any, tok: Any) -> tuple[set[int], int]:
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tok.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos_ids), 0)
        return eos_ids, pad

    def _encode(
        self, model: Any, tok: Any, messages: list[ChatMessage] | None, prompt: str | None
    ) -> tuple[list[int], set[int], int]:
        """The prompt's token ids (an empty prompt starts from BOS, or EOS as GPT-2 does),
        the end-of-sequence ids and the pad id."""
        text, special = self._prompt_text(tok, messages, prompt)
        ids = [int(t) for t in tok(text, add_special_tokens=special)["input_ids"]]
        eos_ids, pad = self._eos_and_pad(model, tok)
        if not ids:
            start = tok.bos_token_id if tok.bos_token_id is not None else next(iter(eos_ids), 0)
            ids = [int(start)]
        return ids, eos_ids, pad

    # ----------------------------------------------------------------------------------
    def _prompt_text(
        self, tokenizer: Any, messages: list[ChatMessage] | None, prompt: str | None
    ) -> tuple[str, bool]:
        """The text to tokenise and whether the tokenizer should add its special tokens."""
        if messages is not None:
            conv = [{"role": m.role, "content": m.content} for m in messages]
            if getattr(tokenizer, "chat_template", None):
                text = tokenizer.apply_chat_template(
                    conv, tokenize=False, add_generation_prompt=True
                )
                return str(text), False  # the template writes its own BOS
            lines = "".join(f"{m['role']}: {m['content']}\n" for m in conv)
            return lines + "assistant:", True
        if prompt is None:
            raise InvalidRequest("either messages or prompt is required")
        return prompt, True

    def context_length(self) -> int | None:
        """Tokens the model can attend to (prompt plus output), when its config says."""
        model = self.model
        return None if model is None else self._context_length(model)

    def prompt_tokens(self, messages: list[ChatMessage] | None, prompt: str | None) -> int:
        """How many tokens `generate_text` would feed the model for this prompt."""
        tok = self.tokenizer
        if tok is None:
            raise ModelUnavailable(f"model {self.model_id} has been closed", model=self.model_id)
        text, special = self._prompt_text(tok, messages, prompt)
        return max(1, len(tok(text, add_special_tokens=special)["input_ids"]))

    def _context_length(self, model: Any) -> int | None:
        cfg = model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            v = getattr(cfg, name, None)
            if isinstance(v, int) and v > 0:
                return v
        return None

    def _max_new_tokens(self, model: Any, n_prompt: int, params: TextParams, chat: bool) -> int:
        """`params.max_tokens`, checked against (or, with `fit_to_context`, cut to) what the
        model's context leaves after a prompt of `n_prompt` tokens."""
        max_new = params.max_tokens
        ctx = self._context_length(model)
        if ctx is None:
            return max_new
        if n_prompt >= ctx:
            raise InvalidRequest(
                f"the prompt is {n_prompt} tokens; {self.model_id} has a context of {ctx}",
                field="messages" if chat else "prompt",
                model=self.model_id,
            )
        if n_prompt + max_new > ctx and not params.fit_to_context:
            raise InvalidRequest(
                f"the prompt is {n_prompt} tokens and max_tokens is {max_new}: "
                f"{n_prompt + max_new} tokens, above the context of {ctx} of "
                f"{self.model_id}; ask for at most {ctx - n_prompt} tokens",
                field="max_tokens",
                model=self.model_id,
            )
        return min(max_new, ctx - n_prompt)

    def generate_text(
        self,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        params: TextParams,
        on_token: TokenSink | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TextResult:
        """Generate from chat `messages` (chat template applied, or a plain `role: content`
        transcript when the tokenizer has none) or from a raw `prompt`.

        Greedy when `temperature == 0`, else sampled (temperature, top-p) with a generator
        seeded by `params.seed`. Each decoded text delta goes to `on_token`; `should_stop` is
        polled after every token. finish_reason is "length" when `max_tokens` (or the
        model's context) ran out, else "stop".
        """
        if self._batcher is not None:  # the engine owns the model now: join its batch
            return self._generate_in_batch(
                messages, prompt, params, on_token, should_stop, self._batcher.limits
            )
        model, tok = self.model, self.tokenizer
        if model is None or tok is None:
            raise ModelUnavailable(f"model {self.model_id} has been closed", model=self.model_id)
        ids, eos_ids, pad = self._encode(model, tok, messages, prompt)
        input_ids = torch.tensor([ids])
        gen_cfg = copy.deepcopy(model.generation_config)
        n_prompt = len(ids)
        max_new = self._max_new_tokens(model, n_prompt, params, chat=messages is not None)
        _one_greedy_sequence(gen_cfg, max_new, pad)
        decoding = self._decoding(params)
        processors = [] if decoding.plain_greedy else [_chooser_class()(decoding)]
        streamer = _DeltaStreamer(tok, on_token, params.stop)
        criteria = [_feed_class()(streamer, n_prompt)]
        if should_stop is not None:
            criteria.append(_poll_stop_class()(should_stop))
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=torch.ones_like(input_ids).to(self.device),
                generation_config=gen_cfg,
                logits_processor=processors,
                stopping_criteria=criteria,
            )
        streamer.end()
        new = out[0, n_prompt:].tolist()
        n_new = len(new)
        hit_eos = bool(new) and new[-1] in eos_ids
        ended = hit_eos or streamer.stopped
        finish = "length" if n_new >= max_new and not ended else "stop"
        text = streamer.text
        return TextResult(
            text=text,
            prompt_tokens=n_prompt,
            completion_tokens=n_new,
            finish_reason=finish,
            logprobs=_logprobs_of(tok, decoding, new, text, eos_ids),
        )

    def _generate_in_batch(
        self,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        params: TextParams,
        on_token: TokenSink | None,
        should_stop: Callable[[], bool] | None,
        limits: BatchLimits,
    ) -> TextResult:
        """`generate_text` through the running batch, blocking this thread until done."""
        finished = threading.Event()
        ended: list[tuple[TextResult | None, BaseException | None]] = []

        def on_done(result: TextResult | None, error: BaseException | None) -> None:
            ended.append((result, error))
            finished.set()

        job = self.start_text(messages, prompt, params, on_token, on_done, limits)
        if job is None:
            raise ModelUnavailable(f"{self.model_id}: the batching engine stopped")
        while not finished.wait(0.05):
            if should_stop is not None and should_stop():
                job.cancel()
                raise ClientDisconnected(
                    "the client went away: generation stopped", model=self.model_id
                )
        result, error = ended[0]
        if error is not None:
            raise error
        assert result is not None
        return result

    def generate_image(
        self,
        prompt: str,
        params: ImageParams,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[bytes]:
        raise WrongModelKind(
            f"{self.model_id} is a text model; it cannot generate images", model=self.model_id
        )


class TextJob:
    """One request in a running batch: turns the engine's cumulative token lists into text
    deltas, and its end into a `TextResult` (or an error) for `on_done`."""

    def __init__(
        self,
        batcher: TextBatcher,
        streamer: _DeltaStreamer,
        decoding: Decoding,
        n_prompt: int,
        max_new: int,
        eos_ids: set[int],
        on_done: TextDone,
    ) -> None:
        self.batcher = batcher
        self.streamer = streamer
        self.decoding = decoding
        self.n_prompt = n_prompt
        self.max_new = max_new
        self.eos_ids = eos_ids
        self.on_done = on_done
        self.rid = ""
        self._seen = 0
        self._over = False

    def on_output(self, tokens: list[int], finished: bool, error: str | None) -> None:
        if self._over:
            return
        try:
            if error is not None:
                self._over = True
                self.on_done(None, ModelUnavailable(f"generation failed: {error}"))
                return
            new = tokens[self._seen :]
            self._seen = len(tokens)
            if finished and new and new[-1] in self.eos_ids:
                new = new[:-1]  # the end token is not text (decoding skips it anyway)
            if new:
                self.streamer.push(new)
            if self.streamer.stopped and not finished:  # a stop string: leave the batch now
                self.batcher.cancel(self.rid)
                finished = True
            if finished:
                self._over = True
                self.streamer.end()
                ended = self.streamer.stopped or (bool(tokens) and tokens[-1] in self.eos_ids)
                n = len(tokens)
                text = self.streamer.text
                self.on_done(
                    TextResult(
                        text=text,
                        prompt_tokens=self.n_prompt,
                        completion_tokens=n,
                        finish_reason="length" if n >= self.max_new and not ended else "stop",
                        logprobs=_logprobs_of(
                            self.streamer.tokenizer, self.decoding, tokens, text, self.eos_ids
                        ),
                    ),
                    None,
                )
        except BaseException as exc:  # a failing sink must not break the engine's thread
            self._over = True
            self.batcher.cancel(self.rid)
            self.on_done(None, exc)

    def cancel(self) -> None:
        """Leave the batch before its next step; `on_done` is not called afterwards."""
        self._over = True
        self.batcher.cancel(self.rid)


def _one_greedy_sequence(gen_cfg: Any, max_new: int, pad: int) -> None:
    """Make a copy of the model's generation config produce exactly one sequence of at
    most `max_new` tokens, greedily: sampling, when asked, is done by `Chooser`, and
    the model's own defaults (sampling, beams, lengths) must not override the request."""
    gen_cfg.max_new_tokens = max_new
    gen_cfg.max_length = None
    gen_cfg.min_new_tokens = None
    gen_cfg.min_length = 0
    gen_cfg.do_sample = False
    gen_cfg.num_beams = 1
    gen_cfg.num_return_sequences = 1
    gen_cfg.temperature = None
    gen_cfg.top_p = None
    gen_cfg.top_k = None
    gen_cfg.pad_token_id = pad
