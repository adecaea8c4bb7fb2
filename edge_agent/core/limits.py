"""Request limits: turn a validated request plus the model's defaults into generation
parameters, or raise `InvalidRequest` naming the field that is out of the agent's limits."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.core.ports import ImageParams, TextParams
from edge_agent.errors import InvalidRequest
from genedge.contract import (
    ChatCompletionRequest,
    CompletionRequest,
    ImageDefaults,
    ImageGenerationRequest,
    TextDefaults,
)


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int
    max_messages: int
    max_tokens: int
    max_steps: int
    max_image_side: int
    max_images: int


def _over(field: str, value: int | float, limit: int | float) -> InvalidRequest:
    return InvalidRequest(f"{field} is {value}, above this host's limit of {limit}", field=field)


def text_params(
    req: ChatCompletionRequest | CompletionRequest, defaults: TextDefaults, limits: Limits
) -> TextParams:
    if isinstance(req, ChatCompletionRequest):
        if len(req.messages) > limits.max_messages:
            raise _over("messages", len(req.messages), limits.max_messages)
        chars = sum(len(m.content) for m in req.messages)
        if chars > limits.max_prompt_chars:
            raise InvalidRequest(
                f"messages hold {chars} characters, above this host's limit of "
                f"{limits.max_prompt_chars}",
                field="messages",
            )
    elif len(req.prompt) > limits.max_prompt_chars:
        raise _over("prompt", len(req.prompt), limits.max_prompt_chars)
    max_tokens = req.max_tokens if req.max_tokens is not None else defaults.max_tokens
    if max_tokens > limits.max_tokens:
        raise _over("max_tokens", max_tokens, limits.max_tokens)
    return TextParams(
        max_tokens=max_tokens,
        temperature=req.temperature if req.temperature is not None else defaults.temperature,
        top_p=req.top_p if req.top_p is not None else defaults.top_p,
        seed=req.seed,
    )


def image_params(
    req: ImageGenerationRequest, defaults: ImageDefaults, limits: Limits
) -> ImageParams:
    if len(req.prompt) > limits.max_prompt_chars:
        raise _over("prompt", len(req.prompt), limits.max_prompt_chars)
    if req.negative_prompt is not None and len(req.negative_prompt) > limits.max_prompt_chars:
        raise _over("negative_prompt", len(req.negative_prompt), limits.max_prompt_chars)
    if req.n > limits.max_images:
        raise _over("n", req.n, limits.max_images)
    width, height = req.dimensions() or (defaults.width, defaults.height)
    if max(width, height) > limits.max_image_side:
        raise _over("size", max(width, height), limits.max_image_side)
    if width % 8 or height % 8:
        # The VAE downsamples by 8; other sizes fail deep inside the UNet.
        raise InvalidRequest(
            f"size {width}x{height}: both sides must be multiples of 8", field="size"
        )
    steps = req.steps if req.steps is not None else defaults.steps
    if steps > limits.max_steps:
        raise _over("steps", steps, limits.max_steps)
    return ImageParams(
        width=width,
        height=height,
        steps=steps,
        guidance_scale=(
            req.guidance_scale if req.guidance_scale is not None else defaults.guidance_scale
        ),
        n=req.n,
        negative_prompt=req.negative_prompt,
        seed=req.seed,
    )
