"""Request limits: turn a validated request plus the model's defaults into generation
parameters, or raise `InvalidRequest` naming the field that is out of the agent's limits.

Two kinds of limit, both checked before a request takes a lease (so a refusal costs the
model and the swap pool nothing):

- per field (`text_params`, `image_params`): prompt length, max_tokens, steps, size, n;
- the request's cost (`check_text_cost`, `check_image_cost`): fields each within their
  limits can still multiply into minutes of work (1024x1024 at 100 steps, 4 images), which
  would hold the model, and the swap pool with every pooled model behind it, that long. The
  run time is estimated from what this host measured for the model (its `ModelProfile`)
  and refused past `Limits.max_request_s`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from edge_agent.core.ports import ImageParams, TextParams
from edge_agent.errors import InvalidRequest
from genedge.contract import (
    MAX_SEED,
    ChatCompletionRequest,
    CompletionRequest,
    ImageDefaults,
    ImageGenerationRequest,
    ModelProfile,
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
    # Estimated seconds one request may run (None: no bound); see `check_text_cost`.
    max_request_s: float | None = None
    # New tokens of the profiler's text generation, when its description does not say.
    profile_text_tokens: int = 16


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
        # A max_tokens the client chose is refused when it overruns the context; the
        # model's default is shortened to fit.
        fit_to_context=req.max_tokens is None,
        stop=req.stop_strings(),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logprobs=req.logprobs_k(),
    )


def choice_params(params: TextParams, n: int) -> list[TextParams]:
    """The parameters of each of `n` choices: choice i of a seeded request uses seed + i
    (so choices differ, and the whole answer is reproducible); unseeded choices each draw
    their own."""
    if params.seed is None:
        return [params] * n
    return [replace(params, seed=(params.seed + i) % (MAX_SEED + 1)) for i in range(n)]


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


# --------------------------------------------------------------------------------------
# The cost of one request
# --------------------------------------------------------------------------------------

# What the profiler's `generation_what` says it ran (adapters/profiler.py writes it).
_WHAT_TOKENS = re.compile(r"(\d+) new tokens")
_WHAT_IMAGE = re.compile(r"(\d+)x(\d+), (\d+) steps")
_WHAT_IMAGES = re.compile(r"(\d+) images?\b")


def _measured(profile: ModelProfile | None) -> float | None:
    """Seconds of the profiled default generation, or None when there is none to scale."""
    if profile is None or not profile.generation_s > 0:
        return None
    return profile.generation_s


def _too_costly(
    field: str, est: float, limit: float, what: str, profile: ModelProfile
) -> InvalidRequest:
    return InvalidRequest(
        f"{what} would take about {est:.1f} s on this host (estimated from "
        f"{profile.generation_s:.3f} s measured for {profile.generation_what}), above its "
        f"limit of {limit:g} s per request (max_request_s): lower {field}",
        field=field,
    )


def estimate_text_s(
    params: TextParams, profile: ModelProfile | None, limits: Limits
) -> float | None:
    """Estimated seconds of a text generation: the profile's default generation scaled by
    `max_tokens` over the tokens it generated (its description says how many; else
    `limits.profile_text_tokens`). The profile's time includes its prompt's prefill, so the
    per-token rate errs high; a long prompt's own prefill is bounded by `max_prompt_chars`
    rather than here. None when the model has no measured profile yet."""
    seconds = _measured(profile)
    if seconds is None or profile is None:
        return None
    m = _WHAT_TOKENS.search(profile.generation_what)
    ref_tokens = int(m.group(1)) if m else limits.profile_text_tokens
    return seconds * params.max_tokens / max(1, ref_tokens)


def check_text_cost(
    params: TextParams, profile: ModelProfile | None, limits: Limits
) -> float | None:
    """Refuse (422 naming `max_tokens`) a text request estimated past `max_request_s`.

    Without a measured profile (not profiled yet, or profiling failed) there is nothing to
    estimate from: only the per-field limits apply. Returns the estimate, if any."""
    est = estimate_text_s(params, profile, limits)
    limit = limits.max_request_s
    if est is not None and profile is not None and limit is not None and est > limit:
        raise _too_costly(
            "max_tokens", est, limit, f"generating {params.max_tokens} tokens", profile
        )
    return est


def estimate_image_s(
    params: ImageParams, profile: ModelProfile | None, defaults: ImageDefaults
) -> tuple[float, str] | None:
    """Estimated seconds of an image request, and the field that drives it: the profile's
    default generation scaled by pixels x steps x images (and x2 for classifier-free
    guidance when the measurement had none, /2 the other way round). The measured size,
    steps and images come from the profile's description, else from `defaults` (the
    manifest's image defaults, which the profiler runs). Attention grows faster than the
    pixel count, so a much larger image may take longer still. None without a profile."""
    seconds = _measured(profile)
    if seconds is None or profile is None:
        return None
    what = profile.generation_what
    m = _WHAT_IMAGE.search(what)
    w0, h0, s0 = (
        (int(g) for g in m.groups()) if m else (defaults.width, defaults.height, defaults.steps)
    )
    n_match = _WHAT_IMAGES.search(what)
    n0 = int(n_match.group(1)) if n_match else 1
    factors = {
        "size": params.width * params.height / max(1, w0 * h0),
        "steps": params.steps / max(1, s0),
        "n": params.n / max(1, n0),
    }
    cfg = (2.0 if params.guidance_scale > 1 else 1.0) / (2.0 if "with CFG" in what else 1.0)
    est = seconds * cfg
    for f in factors.values():
        est *= f
    driver = max(factors, key=lambda k: factors[k])  # the first of the largest, on ties
    return est, driver


def check_image_cost(
    params: ImageParams, profile: ModelProfile | None, defaults: ImageDefaults, limits: Limits
) -> float | None:
    """Refuse (422 naming `size`, `steps` or `n`, whichever grew most over the measured
    generation) an image request estimated past `max_request_s`.

    Without a measured profile only the per-field limits apply. Returns the estimate."""
    found = estimate_image_s(params, profile, defaults)
    if found is None:
        return None
    est, field = found
    limit = limits.max_request_s
    if profile is not None and limit is not None and est > limit:
        images = f"{params.n} image{'s' if params.n != 1 else ''}"
        what = f"{images} of {params.width}x{params.height} in {params.steps} steps"
        raise _too_costly(field, est, limit, what, profile)
    return est
