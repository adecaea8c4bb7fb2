"""Tiny real models for the tests, built once per session.

`tiny_zoo` builds the three tiny models once per session; `manifest_for` (fixture
`manifest_of`) writes the manifest the store scanner would, from the folder layout alone (so
these tests need no scanner). Registered for every test module by `tests/conftest.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.adapters import tiny_models
from genedge.contract import ModelFormat, ModelKind, ModelManifest


def manifest_for(path: Path, model_id: str | None = None) -> ModelManifest:
    """A manifest for a Hugging Face folder: a diffusers pipeline (`model_index.json`) or a
    transformers causal LM (`config.json`), with every safetensors file as a weight file."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
        weights = sorted(
            f.relative_to(path).as_posix()
            for name in index
            if not name.startswith("_") and (path / name).is_dir()
            for f in (path / name).glob("*.safetensors")
        )
        return ModelManifest(
            id=model_id or path.name,
            kind=ModelKind.IMAGE,
            format=ModelFormat.DIFFUSERS,
            path=str(path),
            architecture=index["_class_name"],
            weight_files=weights,
        )
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return ModelManifest(
        id=model_id or path.name,
        kind=ModelKind.TEXT,
        format=ModelFormat.TRANSFORMERS,
        path=str(path),
        architecture=config["architectures"][0],
        weight_files=sorted(f.name for f in path.glob("*.safetensors")),
    )


@pytest.fixture(scope="session")
def manifest_of() -> Callable[..., ModelManifest]:
    """`manifest_for`, as a fixture (test modules load this file as a plugin, not an import)."""
    return manifest_for


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three tiny models, built once (tests that break files copy them first)."""
    root = tmp_path_factory.mktemp("tiny-zoo")
    tiny_models.build_tiny_sd(root / "tiny-sd", seed=3)
    tiny_models.build_tiny_llama(root / "tiny-llama", seed=1)
    tiny_models.build_tiny_gpt2(root / "tiny-gpt2", seed=2)
    return root


@pytest.fixture(scope="session")
def sd_manifest(tiny_zoo: Path) -> ModelManifest:
    return manifest_for(tiny_zoo / "tiny-sd")


@pytest.fixture(scope="session")
def llama_manifest(tiny_zoo: Path) -> ModelManifest:
    return manifest_for(tiny_zoo / "tiny-llama")


@pytest.fixture(scope="session")
def gpt2_manifest(tiny_zoo: Path) -> ModelManifest:
    return manifest_for(tiny_zoo / "tiny-gpt2")
