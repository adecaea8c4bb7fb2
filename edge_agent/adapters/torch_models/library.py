"""The libraries' own loaders: `DiffusionPipeline.from_pretrained` or
`AutoModelForCausalLM.from_pretrained` (+ `AutoTokenizer`), then `.to(device)`. The profiler
times them as the yardstick for the direct loader, and `TorchModelLoader.load` falls back to
them when the direct loader cannot handle a folder. They always read from disk."""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from edge_agent.adapters.torch_models.image import ImagePipelineModel
from edge_agent.adapters.torch_models.skeletons import INIT_LOCK, by_component, import_classes
from edge_agent.adapters.torch_models.tensors import synchronize
from edge_agent.adapters.torch_models.text import TextModel
from edge_agent.core.ports import LoadReport
from edge_agent.errors import BadModelFolder, CorruptWeights
from genedge.contract import ModelFormat, ModelManifest

# safetensors header dtype codes of the floating types (for the library loader's dtype).
_ST_FLOAT = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def load_with_library(
    manifest: ModelManifest, device: torch.device, cast: torch.dtype | None
) -> tuple[TextModel | ImagePipelineModel, LoadReport]:
    """Load with `DiffusionPipeline.from_pretrained` / `AutoModelForCausalLM.from_pretrained`
    (+ `AutoTokenizer`), then move to the device. Always reads from disk."""
    from safetensors import SafetensorError

    root = Path(manifest.path)
    for rel in manifest.weight_files:
        _check_safetensors(root, rel)
    notes: list[str] = []
    import_classes(manifest)
    try:
        return _library_load(manifest, notes, device, cast)
    except SafetensorError as exc:  # a file changed under us since the check above
        raise CorruptWeights(f"{manifest.id}: unreadable safetensors file ({exc})") from None


def _library_load(
    manifest: ModelManifest, notes: list[str], device: torch.device, cast: torch.dtype | None
) -> tuple[TextModel | ImagePipelineModel, LoadReport]:
    root = Path(manifest.path)
    variant = _variant(manifest.weight_files)
    t0 = time.perf_counter()
    loaded: TextModel | ImagePipelineModel
    if manifest.format == ModelFormat.DIFFUSERS:
        from diffusers import DiffusionPipeline

        dtype: Any = cast
        if dtype is None:  # keep each component's stored dtype, as the direct loader does
            dtype = {"default": torch.float32}
            for name, rels in by_component(manifest.weight_files).items():
                stored = _header_float_dtype(root / rels[0])
                if stored is not None:
                    dtype[name] = stored
        with INIT_LOCK:
            pipe = DiffusionPipeline.from_pretrained(root, dtype=dtype, variant=variant)
        pipe.to(device)
        loaded = ImagePipelineModel(manifest.id, pipe, device)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model: Any
        with INIT_LOCK:
            model = AutoModelForCausalLM.from_pretrained(
                root, dtype=cast if cast is not None else "auto", variant=variant
            )
        model.to(device)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(root)
        loaded = TextModel(manifest.id, model, tokenizer, device)
    synchronize(device)
    seconds = time.perf_counter() - t0
    return loaded, LoadReport(loader="library", tier="disk", seconds=seconds, notes=notes)


def _check_safetensors(root: Path, rel: str) -> None:
    """Validate one weight file's header and size without reading its tensors (the same
    checks a load makes first): BadModelFolder when missing, CorruptWeights when broken."""
    from safetensors import SafetensorError, safe_open

    path = root / rel
    if not path.is_file():
        raise BadModelFolder(f"weight file {rel} is missing")
    if not rel.endswith(".safetensors"):
        return
    try:
        with safe_open(path, framework="pt"):
            pass
    except SafetensorError as exc:
        raise CorruptWeights(f"{rel}: unreadable safetensors file ({exc})") from None
    except OSError as exc:
        raise CorruptWeights(f"{rel}: cannot be read ({exc})") from None


def _header_float_dtype(path: Path) -> torch.dtype | None:
    """The dtype of the first floating tensor in a safetensors header (no tensor read)."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    for key, info in header.items():
        if key != "__metadata__" and isinstance(info, dict):
            dt = _ST_FLOAT.get(str(info.get("dtype")))
            if dt is not None:
                return dt
    return None


def _variant(weight_files: Iterable[str]) -> str | None:
    """The common weight variant (`fp16` in `model.fp16.safetensors`), if every file has it."""
    variants = set()
    for rel in weight_files:
        name = Path(rel).name.removesuffix(".safetensors")
        name = re.sub(r"-\d+-of-\d+$", "", name)
        variants.add(name.split(".", 1)[1] if "." in name else None)
    return variants.pop() if len(variants) == 1 else None
