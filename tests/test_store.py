"""The model store: layout inference, safetensors header validation, digests, the page cache.

Folders are real Hugging Face layouts written into temp dirs: a tiny GPT-2 saved by
transformers with a tokenizer made by `tokenizers`, and a structurally valid Stable
Diffusion pipeline folder (model_index.json, component configs, small real safetensors).
The store never loads a model, so the pipeline's tensors need not fit its configs.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from edge_agent.adapters import pagecache
from edge_agent.adapters.store import (
    folder_files,
    inspect_folder,
    read_safetensors_header,
    scan_store,
    weight_paths,
)
from edge_agent.errors import BadModelFolder, CorruptWeights
from genedge.contract import ImageDefaults, ModelFormat, ModelKind, TextDefaults

# --------------------------------------------------------------------------------------
# Builders (module-scoped: built once, copied per test)
# --------------------------------------------------------------------------------------


def _write_json(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


def _build_llm(dest: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        vocab_size=100,
        n_positions=32,
        bos_token_id=1,
        eos_token_id=2,
    )
    GPT2LMHeadModel(config).save_pretrained(dest)
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 100)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    tok.save(str(dest / "tokenizer.json"))
    return dest


def _build_pipeline(dest: Path) -> Path:
    torch.manual_seed(0)
    _write_json(
        dest / "model_index.json",
        {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    _write_json(
        dest / "unet" / "config.json",
        {"_class_name": "UNet2DConditionModel", "sample_size": 8, "block_out_channels": [8, 16]},
    )
    save_file(
        {"conv_in.weight": torch.randn(8, 4, 3, 3), "conv_in.bias": torch.zeros(8)},
        str(dest / "unet" / "diffusion_pytorch_model.safetensors"),
    )
    _write_json(
        dest / "vae" / "config.json",
        {"_class_name": "AutoencoderKL", "block_out_channels": [8, 16], "latent_channels": 4},
    )
    save_file(
        {"decoder.conv_out.weight": torch.randn(3, 8, 3, 3).half()},
        str(dest / "vae" / "diffusion_pytorch_model.safetensors"),
    )
    _write_json(
        dest / "text_encoder" / "config.json",
        {"architectures": ["CLIPTextModel"], "hidden_size": 16, "vocab_size": 100},
    )
    save_file(
        {"text_model.embeddings.token_embedding.weight": torch.randn(100, 16)},
        str(dest / "text_encoder" / "model.safetensors"),
    )
    _write_json(dest / "tokenizer" / "vocab.json", {"a</w>": 0, "<|endoftext|>": 1})
    (dest / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    _write_json(dest / "tokenizer" / "tokenizer_config.json", {"model_max_length": 77})
    _write_json(
        dest / "scheduler" / "scheduler_config.json",
        {"_class_name": "DDIMScheduler", "steps_offset": 1},
    )
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("built")
    return {
        "llm": _build_llm(base / "tiny-gpt2"),
        "sd": _build_pipeline(base / "tiny-sd"),
    }


@pytest.fixture
def llm(built: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(built["llm"], tmp_path / "tiny-gpt2"))


@pytest.fixture
def sd(built: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(built["sd"], tmp_path / "tiny-sd"))


def _sum_sizes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _bad(folder: Path) -> str:
    with pytest.raises((BadModelFolder, CorruptWeights)) as info:
        inspect_folder(folder)
    return str(info.value)


def _raw_safetensors(header: dict[str, object], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _one_tensor(dtype: str, shape: list[int], offsets: list[int]) -> bytes:
    """A safetensors file with one tensor `a` and as many data bytes as `offsets` claim."""
    data = b"\0" * max(offsets[-1], 0)
    return _raw_safetensors({"a": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}, data)


# --------------------------------------------------------------------------------------
# Layout inference
# --------------------------------------------------------------------------------------


def test_llm_folder_is_inferred(llm: Path) -> None:
    m = inspect_folder(llm)
    assert m.id == "tiny-gpt2"
    assert m.kind == ModelKind.TEXT and m.format == ModelFormat.TRANSFORMERS
    assert m.architecture == "GPT2LMHeadModel"
    assert m.weight_files == ["model.safetensors"]
    assert m.storage_bytes == _sum_sizes(llm)
    assert m.text_defaults == TextDefaults() and m.image_defaults is None
    assert Path(m.path) == llm.absolute()
    assert len(m.file_digest) == 64 and int(m.file_digest, 16) >= 0
    assert weight_paths(m) == [llm.absolute() / "model.safetensors"]


def test_pipeline_folder_is_inferred(sd: Path) -> None:
    m = inspect_folder(sd)
    assert m.id == "tiny-sd"
    assert m.kind == ModelKind.IMAGE and m.format == ModelFormat.DIFFUSERS
    assert m.architecture == "StableDiffusionPipeline"
    assert m.weight_files == [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert m.storage_bytes == _sum_sizes(sd)
    # sample_size 8 x 2**(2 blocks - 1): the tiny pipeline's default image is tiny.
    assert m.image_defaults == ImageDefaults(width=16, height=16)
    assert m.text_defaults is None
    assert all(p.is_file() for p in weight_paths(m))


def test_pipeline_defaults_fall_back_without_readable_configs(sd: Path) -> None:
    _write_json(sd / "vae" / "config.json", {"_class_name": "AutoencoderKL"})
    assert inspect_folder(sd).image_defaults == ImageDefaults()


def test_non_variant_weights_are_preferred_and_variants_accepted(sd: Path) -> None:
    unet = sd / "unet"
    variant = unet / "diffusion_pytorch_model.fp16.safetensors"
    save_file({"w": torch.zeros(2, dtype=torch.float16)}, str(variant))
    assert "unet/diffusion_pytorch_model.safetensors" in inspect_folder(sd).weight_files
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in inspect_folder(sd).weight_files


def test_sharded_llm_lists_every_shard(llm: Path) -> None:
    tensors = load_file(str(llm / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half]}
    shards["model-00002-of-00002.safetensors"] = names[half:]
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(llm / shard))
        weight_map.update(dict.fromkeys(keys, shard))
    (llm / "model.safetensors").unlink()
    _write_json(llm / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    m = inspect_folder(llm)
    assert m.weight_files == sorted(shards)
    assert m.storage_bytes == _sum_sizes(llm)

    (llm / "model-00002-of-00002.safetensors").unlink()
    reason = _bad(llm)
    assert "model.safetensors.index.json" in reason and "missing" in reason


def test_index_naming_a_tensor_not_in_its_shard_is_corrupt(llm: Path) -> None:
    (llm / "model.safetensors").rename(llm / "model-00001-of-00001.safetensors")
    weight_map = {"not.a.tensor": "model-00001-of-00001.safetensors"}
    _write_json(llm / "model.safetensors.index.json", {"weight_map": weight_map})
    assert "not.a.tensor" in _bad(llm)


# --------------------------------------------------------------------------------------
# genedge.json
# --------------------------------------------------------------------------------------


def test_manifest_overrides_id_and_defaults(llm: Path, sd: Path) -> None:
    _write_json(llm / "genedge.json", {"id": "chat-small", "text_defaults": {"max_tokens": 8}})
    m = inspect_folder(llm)
    assert m.id == "chat-small"
    assert m.text_defaults == TextDefaults(max_tokens=8)

    _write_json(sd / "genedge.json", {"kind": "image", "image_defaults": {"steps": 2}})
    m = inspect_folder(sd)
    assert m.id == "tiny-sd"
    # Given fields override, the inferred size stays.
    assert m.image_defaults == ImageDefaults(width=16, height=16, steps=2)


@pytest.mark.parametrize(
    ("doc", "expect"),
    [
        ('{"text_defaults": {"max_tokens": "many"}}', "text_defaults.max_tokens"),
        ('{"idd": "typo"}', "idd"),
        ('{"id": "has space"}', "not a valid model id"),
        ('{"kind": "image"}', "kind 'image'"),
        ('{"image_defaults": {"steps": 3}}', "image_defaults given for a text model"),
        ("[1, 2]", "genedge.json"),
        ("{not json", "not valid JSON"),
    ],
)
def test_invalid_manifest_makes_the_folder_bad(llm: Path, doc: str, expect: str) -> None:
    (llm / "genedge.json").write_text(doc)
    reason = _bad(llm)
    assert expect in reason
    assert "\n" not in reason


def test_folder_name_that_is_not_an_id_is_bad(llm: Path) -> None:
    bad = llm.rename(llm.parent / "my model")
    assert "not a valid model id" in _bad(bad)


# --------------------------------------------------------------------------------------
# Bad layouts
# --------------------------------------------------------------------------------------


def test_missing_component_subfolder(sd: Path) -> None:
    shutil.rmtree(sd / "vae")
    reason = _bad(sd)
    assert "vae" in reason and "subfolder missing" in reason


def test_missing_weights(sd: Path) -> None:
    (sd / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert _bad(sd).startswith("unet: no safetensors weights")


def test_bin_only_weights(llm: Path, sd: Path) -> None:
    (llm / "model.safetensors").unlink()
    (llm / "pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    assert "only .bin weights; convert to safetensors" in _bad(llm)

    (sd / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (sd / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    assert _bad(sd) == "unet: only .bin weights; convert to safetensors"


def test_truncated_safetensors(sd: Path) -> None:
    path = sd / "unet" / "diffusion_pytorch_model.safetensors"
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size - 5)
    with pytest.raises(CorruptWeights) as info:
        inspect_folder(sd)
    assert str(info.value) == (
        f"unet/diffusion_pytorch_model.safetensors: truncated: {size - 5} bytes, expected {size}"
    )


def test_truncated_inside_the_header(llm: Path) -> None:
    path = llm / "model.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    reason = _bad(llm)
    assert reason.startswith("model.safetensors: truncated")


def test_trailing_bytes_are_corrupt(llm: Path) -> None:
    with (llm / "model.safetensors").open("ab") as f:
        f.write(b"xx")
    assert "2 trailing bytes" in _bad(llm)


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"\x01\x02", "truncated"),
        (os.urandom(4096), "model.safetensors: "),
        (struct.pack("<Q", 6) + b"\xff{oops", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (_one_tensor("F17", [1], [0, 4]), "unknown dtype"),
        (_one_tensor("F32", [2], [0, 4]), "needs 8"),
        (_one_tensor("F32", [1], [4, 8]), "gap"),
        (_one_tensor("F32", [-1], [0, 4]), "not a list of non-negative integers"),
        (_one_tensor("F32", [1], [0]), "are not [begin, end]"),
        (
            _raw_safetensors(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
                },
                b"\0" * 8,
            ),
            "overlaps",
        ),
        (_one_tensor("F4", [3], [0, 2]), "byte boundary"),
    ],
)
def test_garbage_headers_are_corrupt(llm: Path, content: bytes, expect: str) -> None:
    (llm / "model.safetensors").write_bytes(content)
    with pytest.raises(CorruptWeights) as info:
        inspect_folder(llm)
    assert expect in str(info.value)
    assert str(info.value).startswith("model.safetensors: ")


def test_header_reader_agrees_with_the_library(llm: Path) -> None:
    path = llm / "model.safetensors"
    header = read_safetensors_header(path)
    with safe_open(str(path), framework="pt") as f:
        assert sorted(header.tensors) == sorted(f.keys())
    assert header.file_bytes == path.stat().st_size
    # Valid files the library writes: sub-byte-free dtypes, empty tensors, metadata.
    odd = llm / "odd.safetensors"
    save_file(
        {"e": torch.zeros(0, 3), "b": torch.ones(3, dtype=torch.bool), "h": torch.ones(5).half()},
        str(odd),
        metadata={"format": "pt"},
    )
    assert sorted(read_safetensors_header(odd).tensors) == ["b", "e", "h"]


def test_every_safetensors_file_is_validated(sd: Path) -> None:
    # An unused variant file that is broken still makes the folder bad.
    (sd / "vae" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"\0" * 3)
    assert _bad(sd).startswith("vae/diffusion_pytorch_model.fp16.safetensors: truncated")


def test_unparseable_config_json(llm: Path, sd: Path) -> None:
    (llm / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"],')
    reason = _bad(llm)
    assert reason.startswith("config.json: not valid JSON")

    (sd / "unet" / "config.json").write_text("{")
    assert _bad(sd).startswith("unet/config.json: not valid JSON")

    (sd / "unet" / "config.json").write_text("{}")
    (sd / "scheduler" / "scheduler_config.json").write_text("nope")
    assert _bad(sd).startswith("scheduler/scheduler_config.json: not valid JSON")


def test_not_a_causal_lm(llm: Path) -> None:
    config = json.loads((llm / "config.json").read_text())
    config["architectures"] = ["BertModel"]
    _write_json(llm / "config.json", config)
    reason = _bad(llm)
    assert "no model_index.json or config.json with a causal-LM architecture" in reason
    assert "BertModel" in reason


def test_missing_tokenizer(llm: Path) -> None:
    (llm / "tokenizer.json").unlink()
    assert "tokenizer" in _bad(llm)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert _bad(tmp_path / "empty") == (
        "no model_index.json or config.json with a causal-LM architecture"
    )


# --------------------------------------------------------------------------------------
# Scanning the store
# --------------------------------------------------------------------------------------


def test_scan_store_reports_every_bad_folder_and_never_raises(
    built: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "store"
    root.mkdir()
    shutil.copytree(built["llm"], root / "zz-gpt2")
    shutil.copytree(built["sd"], root / "aa-sd")
    # Ignored: downloads in flight, hidden and underscore folders, plain files.
    shutil.copytree(built["llm"], root / ".partial-abc123")
    (root / ".partial-abc123" / "model.safetensors").write_bytes(b"junk")
    (root / ".hidden").mkdir()
    (root / "_trash").mkdir()
    (root / "README.txt").write_text("models live here")
    # Bad ones.
    (root / "empty").mkdir()
    shutil.copytree(built["llm"], root / "truncated")
    with (root / "truncated" / "model.safetensors").open("r+b") as f:
        f.truncate(100)
    shutil.copytree(built["sd"], root / "no-vae")
    shutil.rmtree(root / "no-vae" / "vae")
    shutil.copytree(built["llm"], root / "bad-manifest")
    (root / "bad-manifest" / "genedge.json").write_text('{"kind": "video"}')

    models, bad = scan_store(root)
    assert [m.id for m in models] == ["aa-sd", "zz-gpt2"]
    assert [Path(b.path).name for b in bad] == ["bad-manifest", "empty", "no-vae", "truncated"]
    reasons = {Path(b.path).name: b.reason for b in bad}
    assert "truncated" in reasons["truncated"]
    assert "vae" in reasons["no-vae"]
    assert reasons["bad-manifest"].startswith("genedge.json: kind")
    assert all("\n" not in b.reason for b in bad)


def test_duplicate_ids_are_bad(built: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "store"
    for name in ("one", "two"):
        shutil.copytree(built["llm"], root / name)
        _write_json(root / name / "genedge.json", {"id": "same"})
    shutil.copytree(built["llm"], root / "same-not")
    models, bad = scan_store(root)
    assert [m.id for m in models] == ["same-not"]
    assert [Path(b.path).name for b in bad] == ["one", "two"]
    assert all("duplicate model id 'same'" in b.reason for b in bad)


def test_scan_store_of_a_missing_directory(tmp_path: Path) -> None:
    models, bad = scan_store(tmp_path / "nope")
    assert models == [] and len(bad) == 1 and "store directory" in bad[0].reason


def test_scan_store_survives_odd_files(built: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "loop").mkdir(parents=True)
    (root / "loop" / "config.json").symlink_to(root / "loop" / "config.json")
    shutil.copytree(built["llm"], root / "manifest-dir")
    (root / "manifest-dir" / "genedge.json").mkdir()
    shutil.copytree(built["llm"], root / "dangling")
    (root / "dangling" / "model.safetensors").unlink()
    (root / "dangling" / "model.safetensors").symlink_to(tmp_path / "gone.safetensors")
    models, bad = scan_store(root)
    assert models == []
    reasons = {Path(b.path).name: b.reason for b in bad}
    assert set(reasons) == {"loop", "manifest-dir", "dangling"}
    assert reasons["manifest-dir"].startswith("genedge.json: unreadable")
    # A broken link is named, not mistaken for a missing file.
    assert reasons["dangling"].startswith("model.safetensors: broken symbolic link to ")
    assert "gone.safetensors (its target is missing)" in reasons["dangling"]
    assert reasons["loop"].startswith("config.json: broken symbolic link")


def test_symlinked_weights_count_like_files(built: dict[str, Path], tmp_path: Path) -> None:
    # Hugging Face cache snapshots are folders of symlinks into a blob store.
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for f in built["llm"].iterdir():
        shutil.copy2(f, blobs / f.name)
        (snapshot / f.name).symlink_to(blobs / f.name)
    m = inspect_folder(snapshot)
    assert m.weight_files == ["model.safetensors"]
    assert m.storage_bytes == _sum_sizes(built["llm"])


# --------------------------------------------------------------------------------------
# Digest and files
# --------------------------------------------------------------------------------------


def test_digest_is_stable_and_changes_with_the_weights(llm: Path) -> None:
    first = inspect_folder(llm).file_digest
    assert inspect_folder(llm).file_digest == first
    # Same folder at another path: the digest is of relative paths, so it stays.
    moved = llm.rename(llm.parent / "elsewhere")
    assert inspect_folder(moved).file_digest == first

    weights = moved / "model.safetensors"
    st = weights.stat()
    tensors = load_file(str(weights))
    # Different header (one tensor's dtype) with size and mtime forced back to the old ones:
    # only the header bytes can tell.
    key = next(iter(sorted(tensors)))
    tensors[key] = tensors[key].double()
    save_file(tensors, str(weights))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert inspect_folder(moved).file_digest != first

    # A rewrite of the original content also changes it (new mtime).
    second = inspect_folder(moved).file_digest
    save_file(load_file(str(weights)), str(weights))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert inspect_folder(moved).file_digest != second


def test_folder_files_skips_hidden_entries(llm: Path) -> None:
    (llm / ".git").mkdir()
    (llm / ".git" / "HEAD").write_text("ref")
    (llm / ".gitattributes").write_text("*.safetensors filter=lfs")
    (llm / "sub").mkdir()
    (llm / "sub" / "notes.txt").write_text("x")
    names = [p.relative_to(llm).as_posix() for p in folder_files(llm)]
    assert names == sorted(names)
    assert "sub/notes.txt" in names and "model.safetensors" in names
    assert not any(n.startswith(".") for n in names)
    m = inspect_folder(llm)
    assert m.storage_bytes == sum(p.stat().st_size for p in folder_files(llm))


# --------------------------------------------------------------------------------------
# Page cache
# --------------------------------------------------------------------------------------


def test_drop_page_cache_never_raises(llm: Path, tmp_path: Path) -> None:
    files = folder_files(llm)
    assert isinstance(pagecache.drop_page_cache(files), bool)
    assert pagecache.drop_page_cache([]) is True
    assert pagecache.drop_page_cache([tmp_path / "missing"]) is False
    assert pagecache.drop_page_cache([tmp_path]) is False  # a directory
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert pagecache.drop_page_cache([fifo]) is False  # and it did not block
    locked = tmp_path / "locked"
    locked.write_bytes(b"x" * 10)
    locked.chmod(0)
    result = pagecache.drop_page_cache([locked])
    assert isinstance(result, bool)
    if sys.platform == "linux" and os.geteuid() != 0:
        assert result is False


def test_read_files_reads_everything(llm: Path) -> None:
    files = folder_files(llm)
    assert pagecache.read_files(files) == sum(p.stat().st_size for p in files)
    assert pagecache.read_files(files, chunk_bytes=1000) == sum(p.stat().st_size for p in files)
    assert pagecache.read_files([]) == 0
