"""A diffusers pipeline on the device (`ImagePipelineModel`): images as PNG bytes, one
call at a time per pipeline, stopping between denoising steps when the client goes away."""

from __future__ import annotations

import contextlib
import inspect
import io
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edge_agent.adapters.torch_models.loaded import LoadedTorchModel
from edge_agent.core.ports import ImageParams, TextParams, TextResult, TokenSink
from edge_agent.errors import ClientDisconnected, InvalidRequest, ModelUnavailable, WrongModelKind
from genedge.contract import ChatMessage


class ImagePipelineModel(LoadedTorchModel):
    """A diffusers pipeline on the device."""

    kind = "image"

    def __init__(self, model_id: str, pipeline: Any, device: torch.device):
        super().__init__(model_id, device)
        self.pipeline: Any = pipeline
        # A pipeline's scheduler keeps per-call state (its timesteps): one call at a time per
        # pipeline. Other models are never blocked by this lock.
        self._lock = threading.Lock()
        with contextlib.suppress(AttributeError):
            pipeline.set_progress_bar_config(disable=True)

    def torch_modules(self) -> list[nn.Module]:
        pipe = self.pipeline
        if pipe is None:
            return []
        return [c for c in pipe.components.values() if isinstance(c, nn.Module)]

    def _drop(self) -> None:
        pipe = self.pipeline
        self.pipeline = None
        if pipe is not None:
            # The pipeline may still be referenced by a caller: unhook its modules too.
            for name, comp in list(pipe.components.items()):
                if isinstance(comp, nn.Module):
                    with contextlib.suppress(Exception):
                        setattr(pipe, name, None)

    def generate_text(
        self,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        params: TextParams,
        on_token: TokenSink | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TextResult:
        raise WrongModelKind(
            f"{self.model_id} is an image model; it cannot generate text", model=self.model_id
        )

    def generate_image(
        self,
        prompt: str,
        params: ImageParams,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[bytes]:
        """Generate `params.n` images of `params.width` x `params.height`; PNG bytes.

        `should_stop` is polled after every denoising step (diffusers' `callback_on_step_end`)
        and before each pipeline call; once it says so, `ClientDisconnected` is raised from
        the step callback. Raising, rather than setting the pipeline's `_interrupt`, also
        skips the VAE decode that diffusers still runs after an interrupt (on CPU a large
        image's decode alone takes longer than a step). Pipelines without that callback
        stop only between images.
        """
        pipe = self.pipeline
        if pipe is None:
            raise ModelUnavailable(f"model {self.model_id} has been closed", model=self.model_id)
        factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
        if params.width % factor or params.height % factor:
            raise InvalidRequest(
                f"width and height must be multiples of {factor} for {self.model_id}",
                field="size",
                model=self.model_id,
            )
        accepted = inspect.signature(pipe.__call__).parameters
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "width": params.width,
            "height": params.height,
            "num_inference_steps": params.steps,
            "guidance_scale": params.guidance_scale,
            "output_type": "pil",
        }
        if "num_images_per_prompt" in accepted:
            kwargs["num_images_per_prompt"] = params.n
        if params.negative_prompt is not None and "negative_prompt" in accepted:
            kwargs["negative_prompt"] = params.negative_prompt
        if params.seed is not None:
            kwargs["generator"] = torch.Generator(device=self.device).manual_seed(params.seed)
        if should_stop is not None and "callback_on_step_end" in accepted:
            kwargs["callback_on_step_end"] = _stop_on_step_end(should_stop, self.model_id)
        calls = 1 if "num_images_per_prompt" in accepted else params.n
        images: list[Any] = []
        with self._lock, torch.inference_mode():
            for _ in range(calls):
                if should_stop is not None and should_stop():
                    raise _stopped(self.model_id)
                images.extend(pipe(**kwargs).images)
        return [_png(im) for im in images]


def _stopped(model_id: str) -> ClientDisconnected:
    return ClientDisconnected("the client went away: generation stopped", model=model_id)


def _stop_on_step_end(should_stop: Callable[[], bool], model_id: str) -> Callable[..., Any]:
    """A diffusers `callback_on_step_end` that ends the denoising loop once `should_stop()`."""

    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
        if should_stop():
            raise _stopped(model_id)
        return tensors

    return on_step_end


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
