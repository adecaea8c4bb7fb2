"""The profiler on real tiny models, the profile cache, and profiling inside a running agent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edge_agent.adapters import host as hostmod
from edge_agent.adapters.profile_store import ProfileStore
from edge_agent.adapters.profiler import Profiler
from edge_agent.adapters.store import folder_files, inspect_folder
from edge_agent.adapters.torch_models import ImagePipelineModel, TextModel, TorchModelLoader
from edge_agent.core.ports import LoadReport
from genedge.contract import ModelManifest, ModelProfile
from launcher.cli import main as cli_main
from tests.conftest import agent_settings, running_agent


def _profiler() -> Profiler:
    return Profiler(
        TorchModelLoader("cpu"),
        fingerprint="test-host",
        description="cpu test host",
        versions=hostmod.library_versions(),
        text_tokens=4,
    )


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2", "tiny-sd"])
def test_profile_fields_are_sane(model_zoo: Path, model: str) -> None:
    manifest = inspect_folder(model_zoo / model)
    p = _profiler().profile(manifest)
    assert p.model_id == model and p.host_fingerprint == "test-host"
    assert p.storage_bytes == sum(f.stat().st_size for f in folder_files(model_zoo / model))
    assert p.params > 0
    # Resident memory on CPU is the model's tensor bytes: close to the weights on disk.
    weights = sum((model_zoo / model / w).stat().st_size for w in manifest.weight_files)
    assert 0.5 * weights < p.resident_bytes <= weights
    assert p.peak_bytes >= p.resident_bytes
    for t in (p.load_cold_s, p.load_warm_s, p.load_ram_s, p.generation_s):
        assert t > 0
    assert set(p.loaders) == {"genedge", "library"}
    assert p.loaders["library"].cold_s and p.loaders["library"].warm_s
    assert p.loaders["library"].ram_s is None  # the library has no host-RAM tier
    ours = p.loaders["genedge"]
    assert (ours.cold_s, ours.warm_s, ours.ram_s) == (p.load_cold_s, p.load_warm_s, p.load_ram_s)
    assert any("pipelined reader" in n for n in p.notes)
    assert any(n.startswith("filling the cached tier") for n in p.notes)
    assert p.memory_method == "tensor_bytes+rss_growth"
    assert p.evict_s is not None and p.evict_s >= 0
    assert p.file_digest == manifest.file_digest


class _RecordingLoader(TorchModelLoader):
    """The real CPU loader, keeping every model it loads and its report, so a test can see
    which loads the profile timed and that each model was closed; `broken` makes text
    generation fail."""

    def __init__(self, broken: bool = False) -> None:
        super().__init__("cpu")
        self.broken = broken
        self.loads: list[tuple[TextModel | ImagePipelineModel, LoadReport]] = []

    def _keep(
        self, loaded: tuple[TextModel | ImagePipelineModel, LoadReport]
    ) -> tuple[TextModel | ImagePipelineModel, LoadReport]:
        model = loaded[0]
        if self.broken and isinstance(model, TextModel):

            def broken(*args: object, **kwargs: object) -> None:
                raise RuntimeError("generation broke")

            model.generate_text = broken  # type: ignore[method-assign,assignment]
        self.loads.append(loaded)
        return loaded

    def load(self, manifest: ModelManifest, source: object) -> tuple:  # type: ignore[override]
        return self._keep(super().load(manifest, source))  # type: ignore[arg-type]

    def load_with_library(self, manifest: ModelManifest) -> tuple:  # type: ignore[override]
        return self._keep(super().load_with_library(manifest))


def _recording_profiler(loader: _RecordingLoader) -> Profiler:
    return Profiler(loader, fingerprint="h", description="d", versions={}, text_tokens=2)


def test_every_timed_load_is_closed(model_zoo: Path) -> None:
    loader = _RecordingLoader()
    _recording_profiler(loader).profile(inspect_folder(model_zoo / "tiny-gpt2"))
    # Warm-up, then ours cold, warm and from host RAM, then the library's cold and warm.
    assert [(r.loader, r.tier) for _, r in loader.loads] == [
        ("genedge", "disk"),
        ("genedge", "disk"),
        ("genedge", "disk"),
        ("genedge", "ram"),
        ("library", "disk"),
        ("library", "disk"),
    ]
    assert all(m.torch_modules() == [] and m.memory_bytes() == 0 for m, _ in loader.loads)


def test_a_failed_measurement_still_closes_its_model(model_zoo: Path) -> None:
    loader = _RecordingLoader(broken=True)
    with pytest.raises(RuntimeError, match="generation broke"):
        _recording_profiler(loader).profile(inspect_folder(model_zoo / "tiny-gpt2"))
    assert len(loader.loads) == 1  # the warm-up load: nothing ran after it failed
    assert loader.loads[0][0].torch_modules() == []


def test_profile_store_roundtrip_and_invalidation(model_zoo: Path, tmp_path: Path) -> None:
    manifest = inspect_folder(model_zoo / "tiny-llama")
    p = _profiler().profile(manifest)
    store = ProfileStore(tmp_path, "test-host")
    path = store.put(p)
    assert path.parent.name == "test-host"
    assert store.get("tiny-llama", manifest.file_digest) == p
    assert store.get("tiny-llama", "other-digest") is None  # files changed: measure again
    assert ProfileStore(tmp_path, "other-host").get("tiny-llama", manifest.file_digest) is None
    path.write_text("{broken")
    assert store.get("tiny-llama", manifest.file_digest) is None


def test_cli_profile_writes_json(model_zoo: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "p.json"
    rc = cli_main(
        [
            "profile",
            str(model_zoo / "tiny-gpt2"),
            "--json",
            str(out),
            "--device",
            "cpu",
            "--quiet",
            "--text-tokens",
            "2",
        ]
    )
    assert rc == 0
    doc = ModelProfile.model_validate(json.loads(out.read_text()))
    assert doc.model_id == "tiny-gpt2"
    printed = capsys.readouterr().out
    assert "tiny-gpt2" in printed and "cold s" in printed
    assert cli_main(["profile", str(tmp_path / "nowhere")]) == 2


async def test_agent_profiles_in_background_and_reuses_cache(store: Path, tmp_path: Path) -> None:
    settings = agent_settings(store, tmp_path, profile_on_start=True, profile_text_tokens=2)

    async def profile_statuses(c) -> dict[str, str]:
        for _ in range(600):
            doc = (await c.get("/v1/models")).json()["data"]
            statuses = {m["id"]: m["profile_status"] for m in doc}
            if all(s not in ("pending", "running") for s in statuses.values()):
                return statuses
            await asyncio.sleep(0.1)
        raise AssertionError("profiling never finished")

    async with running_agent(settings) as c:
        # Requests are served while the profiler works.
        r = await c.post(
            "/v1/completions", json={"model": "tiny-gpt2", "prompt": "a", "max_tokens": 2}
        )
        assert r.status_code == 200
        assert await profile_statuses(c) == dict.fromkeys(
            ("tiny-gpt2", "tiny-llama", "tiny-sd"), "done"
        )
        m = (await c.get("/v1/models/tiny-sd/status")).json()
        assert m["profile"]["load_cold_s"] > 0
    # A restart on unchanged files reuses the profiles; a changed model is measured again.
    (store / "tiny-gpt2" / "extra-note.txt").write_text("changed")
    async with running_agent(settings) as c:
        statuses = await profile_statuses(c)
        assert statuses["tiny-sd"] == "cached"
        assert statuses["tiny-gpt2"] == "done"
