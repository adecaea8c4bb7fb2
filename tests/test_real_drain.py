"""The manager with the real torch loader: eviction during a running generation on a real
model, the swap pool switching real models, and (on a GPU) memory really given back."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from pathlib import Path

import pytest

from edge_agent.adapters.store import inspect_folder
from edge_agent.adapters.torch_models import TorchModelLoader
from edge_agent.core.manager import ModelManager
from edge_agent.core.ports import TextParams
from genedge.contract import ChatMessage, Level, ModelKind, ModelState

P = TextParams(max_tokens=6, temperature=0.0, top_p=1.0)
MSG = [ChatMessage(role="user", content="hello")]


def _manager(model_zoo: Path, device: str = "cpu") -> ModelManager:
    manifests = [inspect_folder(model_zoo / m) for m in ("tiny-llama", "tiny-gpt2", "tiny-sd")]
    return ModelManager(
        manifests,
        TorchModelLoader(device),
        device_budget_bytes=10**10,
        cache_budget_bytes=10**10,
    )


async def _drain_while_generating(mgr: ModelManager) -> None:
    await mgr.set_level("tiny-llama", Level.RESIDENT, wait=True)
    entry = mgr._entries["tiny-llama"]
    module_ref = weakref.ref(entry.loaded.model)  # type: ignore[union-attr]
    held = entry.device_bytes
    assert held > 0
    in_token = threading.Event()
    release = threading.Event()

    def on_token(delta: str) -> None:  # holds the generating thread inside the model
        in_token.set()
        release.wait(10)

    async with mgr.lease("tiny-llama", ModelKind.TEXT) as lease:
        work = asyncio.ensure_future(
            asyncio.to_thread(lease.model.generate_text, MSG, None, P, on_token)
        )
        assert await asyncio.to_thread(in_token.wait, 10)
        await mgr.set_level("tiny-llama", Level.STORED)
        for _ in range(1000):
            if mgr.status("tiny-llama").state == ModelState.DRAINING:
                break
            await asyncio.sleep(0.01)
        st = mgr.status("tiny-llama")
        assert st.state == ModelState.DRAINING and st.memory_bytes == held
        assert lease.model.memory_bytes() == held  # nothing freed under the generation
        release.set()
        result = await work
        assert result.completion_tokens >= 1
    await mgr.wait_idle()
    st = mgr.status("tiny-llama")
    assert st.level == Level.STORED and st.memory_bytes == 0 and st.state == ModelState.READY
    gc.collect()
    assert module_ref() is None  # the torch module is really gone


async def test_eviction_waits_for_a_real_generation(model_zoo: Path) -> None:
    mgr = _manager(model_zoo)
    try:
        await _drain_while_generating(mgr)
    finally:
        await mgr.close()


async def test_swap_pool_switches_real_models(model_zoo: Path) -> None:
    mgr = _manager(model_zoo)
    try:
        for model in ("tiny-llama", "tiny-gpt2", "tiny-llama"):
            async with mgr.lease(model, ModelKind.TEXT) as lease:
                assert lease.served_from == Level.POOLED and lease.preload_tier == "disk"
                res = await asyncio.to_thread(lease.model.generate_text, MSG, None, P)
                assert res.completion_tokens >= 1
            assert mgr.pool_model == model
        # From the cached tier the pool loads from host RAM.
        await mgr.set_level("tiny-gpt2", Level.CACHED, wait=True)
        async with mgr.lease("tiny-gpt2", ModelKind.TEXT) as lease:
            assert lease.preload_tier == "ram"
        assert mgr.status("tiny-llama").memory_bytes == 0
    finally:
        await mgr.close()


@pytest.mark.gpu
async def test_eviction_frees_cuda_memory(model_zoo: Path) -> None:
    import torch

    mgr = _manager(model_zoo, device="cuda:0")
    try:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        await mgr.set_level("tiny-sd", Level.RESIDENT, wait=True)
        resident = mgr.status("tiny-sd").memory_bytes
        assert torch.cuda.memory_allocated() - before >= resident * 0.95
        await mgr.set_level("tiny-sd", Level.STORED, wait=True)
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() - before <= resident * 0.05
        await _drain_while_generating(mgr)
    finally:
        await mgr.close()
