"""A diffusers pipeline on the device (`ImagePipelineModel`): images as PNG bytes, one
call at a time per pipeline, stopping between denoising steps when the client goes away.

`start_images` queues a request for the pipeline's batcher (`image_batching`), which runs
compatible requests as one call; `generate_image` runs one request alone, blocking its
thread (the profiler's baseline). Both seed each image with its own generator (image `i`
of seed `s` uses `s + i`), so a seed gives the same image either way."""

from __future__ import annotations

import contextlib
import inspect
import io
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edge_agent.adapters.torch_models.image_batching import ImageBatcher, ImageJob, ImagesDone
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
        self._batcher: ImageBatcher | None = None
        self._batcher_lock = threading.Lock()
        with contextlib.suppress(AttributeError):
            pipeline.set_progress_bar_config(disable=True)

    def torch_modules(self) -> list[nn.Module]:
        pipe = self.pipeline
        if pipe is None:
            return []
        return [c for c in pipe.components.values() if isinstance(c, nn.Module)]

    def _drop(self) -> None:
        with self._batcher_lock:
            batcher, self._batcher = self._batcher, None
        if batcher is not None:  # waits for a running batch before the modules go
            batcher.close()
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
        """Generate `params.n` images of `params.width` x `params.height` alone; PNG bytes.

        `should_stop` is polled after every denoising step (diffusers' `callback_on_step_end`)
        and before each pipeline call; once it says so, `ClientDisconnected` is raised from
        the step callback. Raising, rather than setting the pipeline's `_interrupt`, also
        skips the VAE decode that diffusers still runs after an interrupt (on CPU a large
        image's decode alone takes longer than a step). Pipelines without that callback
        stop only between images.
        """
        self._check(params)
        job = ImageJob(prompt, params, lambda pngs, error: None)
        stop = should_stop or (lambda: False)
        if stop():
            raise _stopped(self.model_id)
        return self._run_batch([job], stop)[0]

    def start_images(
        self, prompt: str, params: ImageParams, on_done: ImagesDone, max_images: int
    ) -> ImageJob:
        """Queue a request for the pipeline's batch (up to `max_images` images per call) and
        return at once; `on_done` is called from the worker thread."""
        self._check(params)
        with self._batcher_lock:
            if self._batcher is None:
                if self.pipeline is None:
                    raise ModelUnavailable(
                        f"model {self.model_id} has been closed", model=self.model_id
                    )
                self._batcher = ImageBatcher(self._run_batch, max_images, self.model_id)
            self._batcher.max_images = max(1, max_images)
            return self._batcher.submit(ImageJob(prompt, params, on_done))

    def _check(self, params: ImageParams) -> None:
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

    def _generators(self, params: ImageParams) -> list[torch.Generator]:
        """One generator per image: image `i` of seed `s` is seeded `s + i`."""
        gens = []
        for i in range(params.n):
            g = torch.Generator(device=self.device)
            if params.seed is not None:
                g.manual_seed(params.seed + i)
            else:
                g.seed()
            gens.append(g)
        return gens

    def _run_batch(
        self, jobs: list[ImageJob], should_stop: Callable[[], bool]
    ) -> list[list[bytes]]:
        """Run compatible requests as one pipeline call (one prompt and generator per
        image); each job's PNGs, in order. Raises `ClientDisconnected` once `should_stop`."""
        pipe = self.pipeline
        if pipe is None:
            raise ModelUnavailable(f"model {self.model_id} has been closed", model=self.model_id)
        first = jobs[0].params
        accepted = inspect.signature(pipe.__call__).parameters
        prompts: list[str] = []
        negatives: list[str] = []
        generators: list[torch.Generator] = []
        for job in jobs:
            prompts += [job.prompt] * job.params.n
            negatives += [job.params.negative_prompt or ""] * job.params.n
            generators += self._generators(job.params)
        kwargs: dict[str, Any] = {
            "width": first.width,
            "height": first.height,
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance_scale,
            "output_type": "pil",
        }
        if "callback_on_step_end" in accepted:
            kwargs["callback_on_step_end"] = _stop_on_step_end(should_stop, self.model_id)
        calls: list[tuple[list[str], list[str], list[torch.Generator]]]
        if "num_images_per_prompt" in accepted:  # one call for the whole batch
            calls = [(prompts, negatives, generators)]
        else:  # a pipeline that makes one image per call
            calls = [
                ([p], [n], [g]) for p, n, g in zip(prompts, negatives, generators, strict=True)
            ]
        use_negative = "negative_prompt" in accepted and any(negatives)
        images: list[Any] = []
        with self._lock, torch.inference_mode():
            for call_prompts, call_negatives, call_generators in calls:
                if should_stop():
                    raise _stopped(self.model_id)
                extra: dict[str, Any] = {}
                if use_negative:
                    extra["negative_prompt"] = call_negatives
                images.extend(
                    pipe(prompt=call_prompts, generator=call_generators, **kwargs, **extra).images
                )
        pngs = [_png(im) for im in images]
        out: list[list[bytes]] = []
        for job in jobs:
            out.append(pngs[: job.params.n])
            pngs = pngs[job.params.n :]
        return out


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
