"""The bounds of a model's running batch, as the agent's settings give them (pure data: the
torch adapters read it, the core and the routes pass it along)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchLimits:
    """How far one model's concurrent requests are batched.

    `text` False runs every text request alone (`model.generate`, one thread each);
    `max_requests` are decoded together, holding at most `max_tokens_in_flight` tokens of
    KV cache (prompt plus output, in whole pages of `page_size` tokens; requests past it
    wait); each forward pass takes at most `step_tokens` tokens (prefill chunks of joining
    requests plus one per decoding request). Images: up to `max_images` images of
    compatible requests per pipeline call.
    """

    text: bool = True
    max_requests: int = 16
    max_tokens_in_flight: int = 8192
    step_tokens: int = 2048
    page_size: int = 64
    max_images: int = 4
