"""Profiles measure throughput at several batch sizes (issue 14, item 5): real tiny models
through the agent's batching paths, the time bound, the switch, and old profiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.adapters.profile_store import ProfileStore
from edge_agent.adapters.profiler import Profiler
from edge_agent.adapters.store import inspect_folder
from edge_agent.adapters.throughput import (
    DEFAULT_BOUNDS,
    ThroughputBounds,
    measure_images,
    measure_text,
)
from edge_agent.adapters.torch_models import ImagePipelineModel, TextModel, TorchModelLoader
from edge_agent.app import build_runtime
from edge_agent.core.batching import BatchLimits
from edge_agent.core.ports import ImageParams
from genedge.contract import ModelManifest, ModelProfile
from tests.conftest import agent_settings


def _profiler(throughput: ThroughputBounds | None = DEFAULT_BOUNDS) -> Profiler:
    return Profiler(
        TorchModelLoader("cpu"),
        fingerprint="test-host",
        description="cpu test host",
        versions={},
        text_tokens=4,
        throughput=throughput,
    )


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_text_profile_has_points_at_1_4_16(model_zoo: Path, model: str) -> None:
    p = _profiler().profile(inspect_folder(model_zoo / model))
    assert [b.batch for b in p.throughput] == [1, 4, 16]
    for b in p.throughput:
        assert b.request_s > 0 and b.tokens_per_s is not None and b.tokens_per_s > 0
        assert b.ttft_s is not None and 0 < b.ttft_s <= b.request_s
        assert b.images_per_s is None
    # 16 requests of 4 tokens each cannot all finish before one request of 4 tokens would.
    assert p.throughput[-1].request_s > 0.5 * p.throughput[0].request_s


def test_image_profile_has_points_at_1_2_4(model_zoo: Path) -> None:
    p = _profiler().profile(inspect_folder(model_zoo / "tiny-sd"))
    assert [b.batch for b in p.throughput] == [1, 2, 4]
    assert p.throughput[0].request_s == p.generation_s  # batch 1 is the default generation
    for b in p.throughput:
        assert b.request_s > 0 and b.images_per_s == pytest.approx(b.batch / b.request_s)
        assert b.tokens_per_s is None and b.ttft_s is None


def test_throughput_off_measures_batch_1_only(model_zoo: Path) -> None:
    p = _profiler(throughput=None).profile(inspect_folder(model_zoo / "tiny-gpt2"))
    assert p.throughput == []
    assert p.generation_s > 0
    assert not any("throughput" in n for n in p.notes)


def test_time_bound_leaves_large_batches_out_with_a_note(
    gpt2_manifest: ModelManifest, sd_manifest: ModelManifest
) -> None:
    tight = ThroughputBounds(max_s=1e-9)
    text, _ = TorchModelLoader("cpu").load(gpt2_manifest, None)
    try:
        assert isinstance(text, TextModel)
        points, notes = measure_text(text, (None, "the cat"), 2, 0.01, tight)
    finally:
        text.close()
    assert [b.batch for b in points] == [1]
    assert any("batch 4, 16" in n and "EDGE_PROFILE_THROUGHPUT_MAX_S" in n for n in notes)

    image, _ = TorchModelLoader("cpu").load(sd_manifest, None)
    try:
        assert isinstance(image, ImagePipelineModel)
        params = ImageParams(width=64, height=64, steps=2, guidance_scale=1.0)
        points, notes = measure_images(image, "a cat", params, 0.5, tight, "cpu")
    finally:
        image.close()
    assert [b.batch for b in points] == [1] and points[0].request_s == 0.5
    assert any("batch 2, 4" in n for n in notes)


def test_batch_sizes_follow_the_agents_limits() -> None:
    bounds = ThroughputBounds(BatchLimits(max_requests=8, max_images=2), max_s=10.0)
    assert bounds.sizes((1, 4, 16), 8, base_s=1.0) == [1, 4]  # 16 > max_requests
    assert bounds.sizes((1, 2, 4), 2, base_s=1.0) == [1, 2]
    assert bounds.sizes((1, 4, 16), 16, base_s=1.0) == [1, 4]  # 16 x 1 s > 10 s
    assert bounds.left_out((1, 4, 16), 16, base_s=1.0) is not None
    assert bounds.left_out((1, 4, 16), 8, base_s=1.0) is None


def test_text_batching_off_gives_no_points_and_says_why(gpt2_manifest: ModelManifest) -> None:
    model, _ = TorchModelLoader("cpu").load(gpt2_manifest, None)
    try:
        assert isinstance(model, TextModel)
        off = ThroughputBounds(BatchLimits(text=False))
        points, notes = measure_text(model, (None, "the cat"), 2, 0.01, off)
    finally:
        model.close()
    assert points == [] and any("EDGE_TEXT_BATCHING" in n for n in notes)


def test_a_profile_stored_before_throughput_still_loads(model_zoo: Path, tmp_path: Path) -> None:
    manifest = inspect_folder(model_zoo / "tiny-gpt2")
    p = _profiler(throughput=None).profile(manifest)
    store = ProfileStore(tmp_path, "test-host")
    path = store.put(p)
    old = json.loads(path.read_text())
    del old["throughput"]  # as an agent before throughput profiles wrote it
    path.write_text(json.dumps(old))
    got = store.get("tiny-gpt2", manifest.file_digest)
    assert got is not None and got.throughput == []
    assert ModelProfile.model_validate(old).generation_s == p.generation_s


def test_settings_switch_throughput_off(store: Path, tmp_path: Path) -> None:
    on = build_runtime(agent_settings(store, tmp_path, profile_throughput_max_s=12.0))
    assert isinstance(on.profiler, Profiler) and on.profiler.throughput is not None
    assert on.profiler.throughput.max_s == 12.0
    assert on.profiler.throughput.limits == on.settings.batch_limits()
    off = build_runtime(agent_settings(store, tmp_path, profile_throughput=False))
    assert isinstance(off.profiler, Profiler) and off.profiler.throughput is None
