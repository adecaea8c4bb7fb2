"""A text model's running batch holds a KV cache on the device next to its weights (up to
EDGE_BATCH_MAX_TOKENS tokens): the agent's device budget counts it. Fakes for the manager's
accounting; the real loader's size against the engine's own cache tensor."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.adapters.torch_models import TextModel, TorchModelLoader
from edge_agent.adapters.torch_models.kv_cache import batch_cache_bytes, kv_bytes_per_token
from edge_agent.app import build_runtime
from edge_agent.core.batching import BatchLimits
from edge_agent.core.manager import ModelManager
from edge_agent.errors import DoesNotFit, ModelUnavailable
from genedge.contract import Level, ModelKind, ModelManifest
from tests.conftest import agent_settings
from tests.fakes import FakeDevice, FakeLoader, manifest
from tests.test_manager import generate

LIMITS = BatchLimits(max_tokens_in_flight=1024, page_size=64)


def _manager(
    budget: int, caches: dict[str, int], limits: BatchLimits | None = LIMITS
) -> tuple[ModelManager, FakeDevice]:
    dev = FakeDevice(10_000)
    loader = FakeLoader(dev, {"chat": 500, "img": 300})
    loader.batch_caches = caches
    models = [manifest("chat", 500), manifest("img", 300, kind=ModelKind.IMAGE)]
    mgr = ModelManager(
        models, loader, device_budget_bytes=budget, cache_budget_bytes=0, batch_limits=limits
    )
    return mgr, dev


async def test_weights_that_fit_but_not_with_their_batch_cache_are_refused() -> None:
    mgr, dev = _manager(budget=600, caches={"chat": 200})
    with pytest.raises(DoesNotFit) as refused:
        await mgr.set_level("chat", Level.RESIDENT)
    msg = refused.value.message
    assert "700 bytes (500 of weights and 200 of KV cache" in msg
    assert "EDGE_BATCH_MAX_TOKENS" in msg and "1024 tokens" in msg
    assert mgr.status("chat").level == Level.STORED and dev.allocated == 0
    # Nor does the swap pool take it.
    with pytest.raises(ModelUnavailable, match="KV cache"):
        await generate(mgr, "chat")
    assert mgr.status("chat").level == Level.STORED


async def test_a_resident_model_holds_its_weights_and_its_batch_cache() -> None:
    mgr, _ = _manager(budget=800, caches={"chat": 200})
    await mgr.set_level("chat", Level.RESIDENT, wait=True)
    assert mgr.device_used_bytes() == 700
    assert mgr.status("chat").memory_bytes == 700
    assert mgr.status("chat").batch_cache_bytes == 200  # the orchestrator plans with it
    assert mgr.status("img").batch_cache_bytes == 0
    # 100 bytes left: the 300-byte image pipeline no longer fits beside it.
    with pytest.raises(DoesNotFit, match="300 bytes"):
        mgr.check_fits("img", Level.RESIDENT)


async def test_without_batching_only_the_weights_count() -> None:
    for limits in (None, BatchLimits(text=False)):
        mgr, _ = _manager(budget=600, caches={"chat": 200}, limits=limits)
        await mgr.set_level("chat", Level.RESIDENT, wait=True)
        assert mgr.device_used_bytes() == 500 and mgr.batch_cache_bytes("chat") == 0


async def test_a_loader_that_cannot_size_the_cache_leaves_the_weights() -> None:
    mgr, _ = _manager(budget=600, caches={})

    def broken(manifest: ModelManifest, limits: BatchLimits) -> int:
        raise RuntimeError("no config")

    mgr.loader.batch_cache_bytes = broken  # type: ignore[method-assign]
    await mgr.set_level("chat", Level.RESIDENT, wait=True)
    assert mgr.device_used_bytes() == 500


# ------------------------------------------------------------------ the real sizes


def _engine_cache_bytes(model: TextModel, limits: BatchLimits) -> int:
    """The bytes of the paged cache tensor the engine allocated for the model's batch."""
    batcher = model.batcher(limits)
    assert batcher is not None
    mgr: Any = batcher._mgr
    deadline = time.monotonic() + 30
    while getattr(getattr(mgr, "batch_processor", None), "cache", None) is None:
        assert time.monotonic() < deadline, "the engine never built its cache"
        time.sleep(0.01)
    tensor = mgr.batch_processor.cache.cache_tensor
    return int(tensor.numel() * tensor.element_size())


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_the_loaders_size_is_the_engines_cache(
    which: str, llama_manifest: ModelManifest, gpt2_manifest: ModelManifest
) -> None:
    m = llama_manifest if which == "llama" else gpt2_manifest
    loader = TorchModelLoader("cpu")
    limits = BatchLimits(max_tokens_in_flight=1000, page_size=16)  # not a whole page count
    expected = loader.batch_cache_bytes(m, limits)
    model, _ = loader.load(m, None)
    try:
        assert isinstance(model, TextModel)
        assert expected > 0 and _engine_cache_bytes(model, limits) == expected
    finally:
        model.close()
    assert loader.batch_cache_bytes(m, BatchLimits(text=False)) == 0


def test_an_image_pipeline_has_no_batch_cache(sd_manifest: ModelManifest) -> None:
    assert TorchModelLoader("cpu").batch_cache_bytes(sd_manifest, LIMITS) == 0


def test_the_cache_size_from_a_config() -> None:
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 dims, bfloat16.
    cfg = {
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "hidden_size": 576,
        "torch_dtype": "bfloat16",
    }
    assert kv_bytes_per_token(cfg, None) == 30 * 3 * 64 * 2 * 2
    assert kv_bytes_per_token(cfg, "float32") == 30 * 3 * 64 * 2 * 4  # the loader's cast wins
    # 8192 tokens in pages of 64, plus the engine's two spare pages: ~190 MB.
    assert batch_cache_bytes(cfg, BatchLimits(), None) == 23_040 * 64 * (128 + 2)
    assert kv_bytes_per_token({"hidden_size": 8}, None) is None  # no shape: nothing reserved
    nested = {"text_config": cfg, "torch_dtype": "float32"}
    assert kv_bytes_per_token(nested, None) == 30 * 3 * 64 * 2 * 2


def test_the_agent_counts_the_batch_cache_of_its_settings(store: Path, tmp_path: Path) -> None:
    on = build_runtime(agent_settings(store, tmp_path, batch_max_tokens=2048))
    assert on.manager.batch_limits == on.settings.batch_limits()
    assert on.manager.batch_cache_bytes("tiny-llama") > 0
    assert on.manager.batch_cache_bytes("tiny-sd") == 0
    off = build_runtime(agent_settings(store, tmp_path, text_batching=False))
    assert off.manager.batch_cache_bytes("tiny-llama") == 0
