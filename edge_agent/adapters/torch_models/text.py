"""A transformers causal LM on the device (`TextModel`): chat or plain prompts, greedy or
seeded sampling, tokens streamed as text deltas, and stopping when the client goes away."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edge_agent.adapters.torch_models.loaded import LoadedTorchModel
from edge_agent.core.ports import ImageParams, TextParams, TextResult, TokenSink
from edge_agent.errors import InvalidRequest, ModelUnavailable, WrongModelKind
from genedge.contract import ChatMessage


class _DeltaStreamer:
    """Decodes generated tokens incrementally and reports each new piece of text.

    Uses a sliding window (as text-generation-inference does): the text of the tokens after
    `prefix` minus the text of those before `read`, so tokenizers whose pieces depend on their
    neighbours (leading spaces) decode right; a piece ending in an incomplete UTF-8 character
    is held back until the character is complete. The concatenation of the deltas is the
    result text by construction.
    """

    def __init__(self, tokenizer: Any, on_token: TokenSink | None) -> None:
        self.tokenizer = tokenizer
        self.on_token = on_token
        self.tokens: list[int] = []
        self.pieces: list[str] = []
        self._prefix = 0
        self._read = 0
        self._prompt_seen = False

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
            self.pieces.append(delta)
            if self.on_token is not None:
                self.on_token(delta)

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt
            self._prompt_seen = True
            return
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist())
        self._emit(final=False)

    def end(self) -> None:
        if self._read < len(self.tokens):
            self._emit(final=True)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@functools.cache
def _streamer_class() -> type:
    """`_DeltaStreamer` as a transformers `BaseStreamer` (transformers imported lazily)."""
    from transformers.generation.streamers import BaseStreamer

    return type("DeltaStreamer", (_DeltaStreamer, BaseStreamer), {})


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
def _seeded_sampler_class() -> type:
    from transformers import LogitsProcessor, TopPLogitsWarper

    class SeededSampler(LogitsProcessor):
        """Samples the next token itself with a per-request `generator` and leaves only that
        token possible, so `generate(do_sample=False)` picks it. This keeps sampling off
        torch's global RNG: a seed reproduces its text even while other threads generate."""

        def __init__(self, temperature: float, top_p: float, generator: torch.Generator):
            self.temperature = temperature
            self.top = TopPLogitsWarper(top_p) if top_p < 1.0 else None
            self.generator = generator

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            logits = scores.float() / self.temperature
            if self.top is not None:
                logits = self.top(input_ids, logits)
            probs = torch.softmax(logits, dim=-1)
            chosen = torch.multinomial(probs, 1, generator=self.generator)
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(1, chosen, 0.0)

    return SeededSampler


class TextModel(LoadedTorchModel):
    """A transformers causal LM and its tokenizer on the device."""

    kind = "text"

    def __init__(self, model_id: str, model: nn.Module, tokenizer: Any, device: torch.device):
        super().__init__(model_id, device)
        self.model: Any = model
        self.tokenizer: Any = tokenizer

    def torch_modules(self) -> list[nn.Module]:
        return [self.model] if self.model is not None else []

    def _drop(self) -> None:
        self.model = None
        self.tokenizer = None

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
        model, tok = self.model, self.tokenizer
        if model is None or tok is None:
            raise ModelUnavailable(f"model {self.model_id} has been closed", model=self.model_id)
        text, special = self._prompt_text(tok, messages, prompt)
        enc = tok(text, return_tensors="pt", add_special_tokens=special)
        input_ids = enc["input_ids"]
        gen_cfg = copy.deepcopy(model.generation_config)
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else tok.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos_ids), 0)
        if input_ids.shape[1] == 0:  # an empty prompt: start from BOS (or EOS, as GPT-2 does)
            start = tok.bos_token_id if tok.bos_token_id is not None else next(iter(eos_ids), 0)
            input_ids = torch.tensor([[start]])
        n_prompt = int(input_ids.shape[1])
        max_new = self._max_new_tokens(model, n_prompt, params, chat=messages is not None)
        _one_greedy_sequence(gen_cfg, max_new, pad)
        processors = []
        if params.temperature > 0:
            generator = torch.Generator(device=self.device)
            if params.seed is not None:
                generator.manual_seed(params.seed)
            else:
                generator.seed()
            processors.append(_seeded_sampler_class()(params.temperature, params.top_p, generator))
        streamer = _streamer_class()(tok, on_token)
        criteria = [_poll_stop_class()(should_stop)] if should_stop is not None else []
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=torch.ones_like(input_ids).to(self.device),
                generation_config=gen_cfg,
                logits_processor=processors,
                stopping_criteria=criteria,
                streamer=streamer,
            )
        new = out[0, n_prompt:].tolist()
        n_new = len(new)
        hit_eos = bool(new) and new[-1] in eos_ids
        finish = "length" if n_new >= max_new and not hit_eos else "stop"
        return TextResult(
            text=streamer.text,
            prompt_tokens=n_prompt,
            completion_tokens=n_new,
            finish_reason=finish,
        )

    def generate_image(
        self,
        prompt: str,
        params: ImageParams,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[bytes]:
        raise WrongModelKind(
            f"{self.model_id} is a text model; it cannot generate images", model=self.model_id
        )


def _one_greedy_sequence(gen_cfg: Any, max_new: int, pad: int) -> None:
    """Make a copy of the model's generation config produce exactly one sequence of at
    most `max_new` tokens, greedily: sampling, when asked, is done by `SeededSampler`, and
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
