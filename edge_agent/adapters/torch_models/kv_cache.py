"""Device bytes of a text model's running-batch KV cache, from its config (before a load).

The continuous-batching engine (`batching.TextBatcher`) allocates one paged cache tensor
when a model's batch starts: `ceil(max_tokens_in_flight / page_size)` pages of
`page_size` tokens, plus two spare pages the engine never hands out, each token holding a
key and a value for every layer: `layers x kv_heads x head_dim x 2 x dtype bytes`. That
memory is on top of the weights, so the agent's device budget must count it
(`ModelManager`); this computes it from the folder's `config.json` without loading the
model, which is what matches the engine's tensor exactly for the models we serve (one
attention type; tests compare the two).

The dtype is the loader's cast when it has one, else the config's `dtype` /
`torch_dtype`, else float32 (the widest the loader keeps, so never an under-count).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edge_agent.core.batching import BatchLimits

_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
SPARE_PAGES = 2  # the engine's two "trash" pages, never allocated to a request


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a (possibly multimodal) config."""
    inner = cfg.get("text_config")
    return inner if isinstance(inner, dict) else cfg


def _first(cfg: dict[str, Any], *names: str) -> int | None:
    for name in names:
        v = cfg.get(name)
        if isinstance(v, int) and v > 0:
            return v
    return None


def kv_bytes_per_token(cfg: dict[str, Any], dtype: str | None) -> int | None:
    """Bytes one token takes in the KV cache (every layer's key and value), or None when
    the config does not say (then nothing is reserved rather than a guess)."""
    text = _text_config(cfg)
    layers = _first(text, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(text, "num_attention_heads", "n_head")
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    if layers is None or heads is None:
        return None
    kv_heads = _first(text, "num_key_value_heads", "n_head_kv") or heads
    head_dim = _first(text, "head_dim") or (hidden // heads if hidden else None)
    if head_dim is None:
        return None
    name = dtype or text.get("dtype") or text.get("torch_dtype") or cfg.get("torch_dtype")
    width = _DTYPE_BYTES.get(str(name), 4)
    return layers * kv_heads * head_dim * 2 * width


def batch_cache_bytes(cfg: dict[str, Any], limits: BatchLimits, dtype: str | None) -> int:
    """Bytes of the cache the engine allocates for one model's batch under `limits`; 0
    when text batching is off or the config does not give the cache's shape."""
    if not limits.text:
        return 0
    per_token = kv_bytes_per_token(cfg, dtype)
    if per_token is None:
        return 0
    pages = max(1, math.ceil(limits.max_tokens_in_flight / limits.page_size))
    return per_token * limits.page_size * (pages + SPARE_PAGES)


def folder_batch_cache_bytes(folder: Path, limits: BatchLimits, dtype: str | None) -> int:
    """`batch_cache_bytes` of the model in `folder` (its `config.json`); 0 when it has none
    that can be read."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return 0
    return batch_cache_bytes(cfg, limits, dtype) if isinstance(cfg, dict) else 0
