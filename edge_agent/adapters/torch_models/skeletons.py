"""What a direct load builds without weights, and how it finishes: `prepare` builds the
torch modules of a model from its config with parameters on `meta` (buffers real, so
computed ones such as rotary `inv_freq` are right), plus its tokenizer or the pipeline's
tokenizers and schedulers; `finish` assigns the checkpoint tensors to them and wraps the
result as a `TextModel` or `ImagePipelineModel`. A `Prepared` is built during a load while
the weights are in transfer, or ahead of time for a cached copy."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_agent.adapters.fastload import UnsupportedByDirectLoader
from edge_agent.adapters.torch_models.assign import assign_checkpoint
from edge_agent.adapters.torch_models.image import ImagePipelineModel
from edge_agent.adapters.torch_models.sources import TensorSource
from edge_agent.adapters.torch_models.text import TextModel
from edge_agent.errors import BadModelFolder
from genedge.contract import ModelFormat, ModelManifest

# accelerate's `init_empty_weights` patches `nn.Module.register_parameter` process-wide, and
# diffusers' own loader uses it too: overlapping uses in two threads could leave the patch in
# place. Every skeleton build and every library load holds this lock (skeletons take
# milliseconds; library loads are only for profiling and fallback).
INIT_LOCK = threading.RLock()


@dataclass
class Prepared:
    """Everything of one model that needs no weights: the torch modules with parameters on
    `meta` (`to_assign`: name, module, its weight files), tokenizers, schedulers, configs.
    Built during a load while the transfer runs, or ahead of time for a cached copy (then
    a load from host RAM is little more than the copy). Used by one load only."""

    kind: str  # "text" | "image"
    to_assign: list[tuple[str, nn.Module, list[str]]] = field(default_factory=list)
    parts: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # pipeline config values
    pipe_cls: Any = None


def build_skeleton(build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` with parameters on `meta` and no random initialisation."""
    from accelerate import init_empty_weights
    from transformers.initialization import no_init_weights

    # Parameters on meta, buffers real; and no random init of parameters about to be
    # replaced (on meta tensors it still costs ~0.4 s of Python for a 135M model).
    with INIT_LOCK, init_empty_weights(include_buffers=False), no_init_weights():
        return build()


def prepare(manifest: ModelManifest) -> Prepared:
    """Everything of `manifest` that needs no weights (skeletons, tokenizers, ...)."""
    if manifest.format == ModelFormat.DIFFUSERS:
        return _prepare_pipeline(manifest)
    return _prepare_causal_lm(manifest)


def _prepare_causal_lm(manifest: ModelManifest) -> Prepared:
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    root = Path(manifest.path)
    rels = list(manifest.weight_files)
    if not rels:
        raise BadModelFolder(f"{manifest.id}: no weight files")
    config = AutoConfig.from_pretrained(root)
    # The class the config names (as the library does), else whatever the Auto class maps.
    cls = getattr(transformers, manifest.architecture, None)
    build: Any = getattr(cls, "_from_config", None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and callable(build)):
        build = AutoModelForCausalLM.from_config
    model: Any = build_skeleton(lambda: build(config))
    generation_config = None
    if (root / "generation_config.json").is_file():
        generation_config = GenerationConfig.from_pretrained(root)
    tokenizer = AutoTokenizer.from_pretrained(root)
    return Prepared(
        kind="text",
        to_assign=[(manifest.id, model, rels)],
        parts={"model": model, "tokenizer": tokenizer, "generation_config": generation_config},
    )


def _prepare_pipeline(manifest: ModelManifest) -> Prepared:
    root = Path(manifest.path)
    try:
        index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadModelFolder(f"model_index.json: {exc}") from None
    pipe_cls = _resolve_class("diffusers", str(index.get("_class_name")))
    weights = by_component(manifest.weight_files)
    prepared = Prepared(kind="image", pipe_cls=pipe_cls)
    for name, spec in index.items():
        if name.startswith("_"):
            continue
        if not (isinstance(spec, list) and len(spec) == 2):
            prepared.config[name] = spec  # a pipeline config value (requires_safety_...)
            continue
        lib, cls_name = spec
        if lib is None or cls_name is None:
            prepared.parts[name] = None
            continue
        cls = _resolve_class(str(lib), str(cls_name))
        sub = root / name
        if name in weights:
            module = _component_skeleton(cls, sub)
            prepared.to_assign.append((name, module, weights[name]))
            prepared.parts[name] = module
        else:  # tokenizers, schedulers...
            loader = getattr(cls, "from_pretrained", None)
            if loader is None:
                raise UnsupportedByDirectLoader(f"component {name}: {cls_name} has no loader")
            prepared.parts[name] = loader(sub)
    accepted = inspect.signature(pipe_cls).parameters
    unknown = [n for n in prepared.parts if n not in accepted]
    if unknown:
        raise UnsupportedByDirectLoader(f"{pipe_cls.__name__} takes no component {unknown}")
    return prepared


def finish(
    manifest: ModelManifest, prepared: Prepared, tensors: TensorSource, device: torch.device
) -> TextModel | ImagePipelineModel:
    """Assign the weights to the prepared skeletons and wrap the result. On CUDA the
    views are assigned while the copies may still run (kernels launched later queue
    behind them); `tensors.finish()` waits for the data before returning."""
    for name, module, rels in prepared.to_assign:
        assign_checkpoint(module, tensors.state(rels), name, device)
    tensors.finish()
    parts = prepared.parts
    if prepared.kind == "text":
        model = parts["model"]
        floating = {p.dtype for p in model.parameters() if p.is_floating_point()}
        if len(floating) == 1:
            model.config.dtype = floating.pop()
        if parts["generation_config"] is not None:
            model.generation_config = parts["generation_config"]
        return TextModel(manifest.id, model, parts["tokenizer"], device)
    pipe_cls = prepared.pipe_cls
    accepted = inspect.signature(pipe_cls).parameters
    kwargs: dict[str, Any] = {}
    for pname, p in accepted.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if pname in parts:
            kwargs[pname] = parts[pname]
        elif pname in prepared.config:
            kwargs[pname] = prepared.config[pname]
        elif p.default is inspect.Parameter.empty:
            kwargs[pname] = None  # an optional component the folder leaves out
    if "requires_safety_checker" in accepted:
        kwargs["requires_safety_checker"] = False
    pipe = pipe_cls(**kwargs)
    return ImagePipelineModel(manifest.id, pipe, device)


def _component_skeleton(cls: type, sub: Path) -> nn.Module:
    """The module of pipeline component folder `sub`, parameters on `meta`."""
    if not issubclass(cls, nn.Module):
        raise UnsupportedByDirectLoader(f"{sub.name}: {cls.__name__} is not a torch module")
    if hasattr(cls, "load_config") and hasattr(cls, "from_config"):  # diffusers
        cfg = cls.load_config(sub)
        module = build_skeleton(lambda: cls.from_config(cfg))
    elif hasattr(cls, "_from_config") and hasattr(cls, "config_class"):  # transformers
        tcfg = cls.config_class.from_pretrained(sub)
        module = build_skeleton(lambda: cls._from_config(tcfg))
    else:
        raise UnsupportedByDirectLoader(f"{sub.name}: do not know how to build {cls.__name__}")
    return module


def by_component(weight_files: Iterable[str]) -> dict[str, list[str]]:
    """Weight files grouped by their first folder ('' for files at the model root)."""
    out: dict[str, list[str]] = {}
    for rel in weight_files:
        head, _, _ = rel.rpartition("/")
        out.setdefault(head.split("/")[0] if head else "", []).append(rel)
    return out


def _resolve_class(library: str, name: str) -> type:
    """The class a `model_index.json` entry names: `["diffusers", "UNet2DConditionModel"]`,
    `["transformers", "CLIPTextModel"]`, or a diffusers pipeline module such as
    `["stable_diffusion", "StableDiffusionSafetyChecker"]`."""
    candidates = [library]
    if library not in ("diffusers", "transformers"):
        candidates = [f"diffusers.pipelines.{library}", "diffusers", "transformers"]
    for mod_name in candidates:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        cls = getattr(mod, name, None)
        if isinstance(cls, type):
            return cls
    raise UnsupportedByDirectLoader(f"unknown component class {library}.{name}")


def import_classes(manifest: ModelManifest) -> None:
    """Import the libraries and the classes a model names before a load's clock starts, so
    a load time never includes importing diffusers or transformers (seconds, once)."""
    import accelerate  # noqa: F401

    with contextlib.suppress(Exception):
        if manifest.format == ModelFormat.DIFFUSERS:
            import diffusers

            index = json.loads((Path(manifest.path) / "model_index.json").read_text("utf-8"))
            getattr(diffusers, str(index.get("_class_name")), None)
            getattr(diffusers, "DiffusionPipeline", None)
            for name, spec in index.items():
                named = isinstance(spec, list) and len(spec) == 2 and None not in spec
                if named and not name.startswith("_"):
                    with contextlib.suppress(UnsupportedByDirectLoader):
                        _resolve_class(str(spec[0]), str(spec[1]))
        else:
            import transformers

            getattr(transformers, manifest.architecture, None)
            getattr(transformers, "AutoModelForCausalLM", None)
            getattr(transformers, "AutoTokenizer", None)
