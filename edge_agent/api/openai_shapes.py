"""OpenAI's response pieces from the agent's generation results: usage over several
choices, and log-probabilities in chat's and the completions API's shapes."""

from __future__ import annotations

import math
from collections.abc import Sequence

from edge_agent.core.ports import TextResult, TokenLogprob
from genedge.contract import ChatLogprobs, CompletionLogprobs, TopLogprob, Usage
from genedge.contract import TokenLogprob as ContractTokenLogprob

RULED_OUT = -9999.0
"""What OpenAI reports for a token the model rules out (JSON has no -Infinity)."""


def usage(results: Sequence[TextResult]) -> Usage:
    """The prompt counts once (every choice reads the same prompt); outputs add up."""
    prompt = results[0].prompt_tokens if results else 0
    completion = sum(r.completion_tokens for r in results)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _lp(value: float) -> float:
    return value if math.isfinite(value) else RULED_OUT


def _top(token: str, logprob: float) -> TopLogprob:
    return TopLogprob(token=token, logprob=_lp(logprob), bytes=list(token.encode()))


def chat_logprobs(tokens: list[TokenLogprob] | None) -> ChatLogprobs | None:
    if tokens is None:
        return None
    content = [
        ContractTokenLogprob(
            token=t.token,
            logprob=_lp(t.logprob),
            bytes=list(t.token.encode()),
            top_logprobs=[_top(s, lp) for s, lp in t.top],
        )
        for t in tokens
    ]
    return ChatLogprobs(content=content)


def completion_logprobs(tokens: list[TokenLogprob] | None) -> CompletionLogprobs | None:
    """`text_offset` counts characters of the completion from its start."""
    if tokens is None:
        return None
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[_lp(t.logprob) for t in tokens],
        top_logprobs=[{s: _lp(lp) for s, lp in t.top} for t in tokens],
        text_offset=offsets,
    )
