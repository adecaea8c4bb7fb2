"""The torch adapters on tiny real models: the direct loader against the libraries' own
loaders, the host-RAM tier, text and image generation, corrupt files, closing, dtypes, GPU."""

from __future__ import annotations

import gc
import io
import re
import shutil
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from edge_agent.adapters.fastload import ALIGN
from edge_agent.adapters.torch_models import (
    BlockHostCopy,
    ImagePipelineModel,
    SafetensorsHostCopy,
    TextModel,
    TorchModelLoader,
    dtype_name,
    param_count,
)
from edge_agent.core.ports import ImageParams, TextParams
from edge_agent.errors import (
    BadModelFolder,
    CorruptWeights,
    InvalidRequest,
    ModelUnavailable,
    WrongModelKind,
)
from genedge.contract import ChatMessage, ModelManifest

# Fixtures of our own (`tiny_zoo`, `*_manifest`), so this file needs no conftest.

MANIFESTS = ["sd_manifest", "llama_manifest", "gpt2_manifest"]
CHAT = [
    ChatMessage(role="system", content="You are helpful."),
    ChatMessage(role="user", content="Tell me a story about a cat."),
]


def _tensors(loaded: TextModel | ImagePipelineModel) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (non-persistent ones too) of every module, by name."""
    out: dict[str, torch.Tensor] = {}
    for i, module in enumerate(loaded.torch_modules()):
        prefix = f"{i}:{type(module).__name__}."
        for name, t in module.named_parameters(remove_duplicate=False):
            out[prefix + name] = t
        for name, t in module.named_buffers(remove_duplicate=False):
            out[prefix + name] = t
    return out


def _assert_identical(a: TextModel | ImagePipelineModel, b: TextModel | ImagePipelineModel) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert set(ta) == set(tb)
    for name in ta:
        x, y = ta[name], tb[name]
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        assert torch.equal(x.cpu(), y.cpu()), name


@pytest.fixture(scope="module")
def cpu_loader() -> TorchModelLoader:
    return TorchModelLoader("cpu")


@pytest.fixture(scope="module")
def llama(cpu_loader: TorchModelLoader, llama_manifest: ModelManifest) -> Iterator[TextModel]:
    model, _ = cpu_loader.load(llama_manifest, None)
    assert isinstance(model, TextModel)
    yield model
    model.close()


@pytest.fixture(scope="module")
def gpt2(cpu_loader: TorchModelLoader, gpt2_manifest: ModelManifest) -> Iterator[TextModel]:
    model, _ = cpu_loader.load(gpt2_manifest, None)
    assert isinstance(model, TextModel)
    yield model
    model.close()


@pytest.fixture(scope="module")
def sd(cpu_loader: TorchModelLoader, sd_manifest: ModelManifest) -> Iterator[ImagePipelineModel]:
    model, _ = cpu_loader.load(sd_manifest, None)
    assert isinstance(model, ImagePipelineModel)
    yield model
    model.close()


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


def test_builders_are_deterministic_scalable_and_leave_the_rng_alone(
    tiny_zoo: Path, tmp_path: Path
) -> None:
    from edge_agent.adapters import tiny_models

    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    again = tiny_models.build_tiny_gpt2(tmp_path / "gpt2", seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    name = "model.safetensors"
    assert (again / name).read_bytes() == (tiny_zoo / "tiny-gpt2" / name).read_bytes()
    bigger = tiny_models.build_tiny_llama(tmp_path / "llama2", seed=1, scale=2)
    small = (tiny_zoo / "tiny-llama" / name).stat().st_size
    assert (bigger / name).stat().st_size > 4 * small
    with pytest.raises(ValueError):
        tiny_models.build_tiny_sd(tmp_path / "sd0", scale=0)


def test_tokenizers_round_trip_english(llama: TextModel, gpt2: TextModel) -> None:
    text = "The quick brown fox jumps over the lazy dog. It's 50% done!"
    for model in (llama, gpt2):
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) < len(text)  # merges were learnt
        assert model.tokenizer.decode(ids) == text


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", MANIFESTS)
def test_genedge_load_is_bit_identical_to_library(
    which: str, cpu_loader: TorchModelLoader, request: pytest.FixtureRequest
) -> None:
    manifest: ModelManifest = request.getfixturevalue(which)
    ours, report = cpu_loader.load(manifest, None)
    lib, lib_report = cpu_loader.load_with_library(manifest)
    try:
        assert (report.loader, report.tier, report.notes) == ("genedge", "disk", [])
        assert (lib_report.loader, lib_report.tier) == ("library", "disk")
        assert report.seconds > 0 and lib_report.seconds > 0
        _assert_identical(ours, lib)
        assert all(not t.is_meta for t in _tensors(ours).values())
        assert all(not m.training for m in ours.torch_modules())
        # One block for every tensor: the same bytes, plus alignment padding (`ALIGN` at
        # most before each file and each tensor the file itself leaves unaligned).
        slack = ALIGN * (len(_tensors(ours)) + len(manifest.weight_files))
        assert lib.memory_bytes() <= ours.memory_bytes() <= lib.memory_bytes() + slack
        assert lib.memory_bytes() > 0
        assert param_count(ours) == param_count(lib) > 0
        assert dtype_name(ours) == dtype_name(lib) == "float32"
    finally:
        ours.close()
        lib.close()


def test_gpt2_weights_stay_tied(cpu_loader: TorchModelLoader, gpt2_manifest: ModelManifest) -> None:
    ours, _ = cpu_loader.load(gpt2_manifest, None)
    try:
        model = ours.torch_modules()[0]
        head = model.get_output_embeddings().weight
        emb = model.get_input_embeddings().weight
        assert head is emb
        stored = load_file(Path(gpt2_manifest.path) / "model.safetensors")
        assert "lm_head.weight" not in stored  # the checkpoint holds the tied weight once
        # ...and memory counts it once.
        per_tensor = sum(p.numel() * p.element_size() for p in model.parameters())
        per_tensor += sum(b.numel() * b.element_size() for b in model.buffers())
        assert ours.memory_bytes() == per_tensor
        assert param_count(ours) == sum(p.numel() for p in model.parameters())
    finally:
        ours.close()


def test_llama_keeps_untied_head_and_computed_rotary_buffer(
    cpu_loader: TorchModelLoader, llama_manifest: ModelManifest
) -> None:
    ours, _ = cpu_loader.load(llama_manifest, None)
    try:
        model = ours.torch_modules()[0]
        assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
        inv_freq = dict(model.named_buffers())["model.rotary_emb.inv_freq"]
        assert inv_freq.device.type == "cpu" and bool((inv_freq > 0).all())
    finally:
        ours.close()


@pytest.fixture(scope="module")
def st_loader() -> TorchModelLoader:
    """The previous reader (safetensors per file), kept as the pipelined one's fallback."""
    return TorchModelLoader("cpu", reader="safetensors")


@pytest.mark.parametrize("which", MANIFESTS)
@pytest.mark.parametrize("reader", ["pipelined", "safetensors"])
def test_load_from_host_copy_equals_load_from_disk(
    which: str,
    reader: str,
    cpu_loader: TorchModelLoader,
    st_loader: TorchModelLoader,
    request: pytest.FixtureRequest,
) -> None:
    manifest: ModelManifest = request.getfixturevalue(which)
    loader = cpu_loader if reader == "pipelined" else st_loader
    copy = loader.read_to_host(manifest)
    assert copy.model_id == manifest.id
    assert sorted(copy.files()) == sorted(manifest.weight_files)
    expected = sum(
        t.numel() * t.element_size()
        for rel in manifest.weight_files
        for t in load_file(Path(manifest.path) / rel).values()
    )
    if reader == "pipelined":
        assert isinstance(copy, BlockHostCopy)
        # One block laid out as on the device: the tensor bytes plus alignment padding.
        assert expected <= copy.nbytes <= expected + ALIGN * (len(copy.layout.files) + 64)
    else:
        assert isinstance(copy, SafetensorsHostCopy)
        assert copy.nbytes == expected
    from_ram, report = loader.load(manifest, copy)
    from_disk, _ = loader.load(manifest, None)
    try:
        assert (report.loader, report.tier, report.notes) == ("genedge", "ram", [])
        _assert_identical(from_ram, from_disk)
        copy.release()
        copy.release()  # idempotent
        assert copy.nbytes == 0 and copy.released and copy.files() == []
        # The loaded model owns its memory: it still works once the copy is gone.
        if isinstance(from_ram, TextModel):
            params = TextParams(max_tokens=3, temperature=0.0, top_p=1.0)
            assert from_ram.generate_text(None, "hello", params).completion_tokens >= 1
    finally:
        from_ram.close()
        from_disk.close()


def test_both_readers_give_identical_models(
    cpu_loader: TorchModelLoader, st_loader: TorchModelLoader, sd_manifest: ModelManifest
) -> None:
    ours, _ = cpu_loader.load(sd_manifest, None)
    old, report = st_loader.load(sd_manifest, None)
    try:
        assert (report.loader, report.notes) == ("genedge", [])
        _assert_identical(ours, old)
        # The pipelined reader's tensors are views of one block per model.
        storages = {t.untyped_storage().data_ptr() for t in _tensors(ours).values() if t.numel()}
        assert len(storages) < len(_tensors(ours)) / 4
    finally:
        ours.close()
        old.close()


def test_a_released_block_copy_loads_from_disk(
    cpu_loader: TorchModelLoader, llama_manifest: ModelManifest
) -> None:
    copy = cpu_loader.read_to_host(llama_manifest)
    copy.release()
    model, report = cpu_loader.load(llama_manifest, copy)
    try:
        assert report.loader == "genedge"
        assert report.notes == ["the host copy was released: read from disk"]
    finally:
        model.close()


def test_truncated_weights_raise_corrupt_weights_naming_the_file(
    tiny_zoo: Path,
    manifest_of: Callable[..., ModelManifest],
    tmp_path: Path,
    cpu_loader: TorchModelLoader,
) -> None:
    folder = tmp_path / "broken-sd"
    shutil.copytree(tiny_zoo / "tiny-sd", folder)
    rel = "unet/diffusion_pytorch_model.safetensors"
    data = (folder / rel).read_bytes()
    (folder / rel).write_bytes(data[: len(data) // 2])
    manifest = manifest_of(folder)
    with pytest.raises(CorruptWeights, match=re.escape("unet/diffusion_pytorch_model.safetensors")):
        cpu_loader.load(manifest, None)
    with pytest.raises(CorruptWeights, match=re.escape("unet/diffusion_pytorch_model.safetensors")):
        cpu_loader.read_to_host(manifest)
    with pytest.raises(CorruptWeights, match=re.escape("unet/diffusion_pytorch_model.safetensors")):
        cpu_loader.load_with_library(manifest)


def test_garbage_llm_weights_raise_corrupt_weights(
    tiny_zoo: Path,
    manifest_of: Callable[..., ModelManifest],
    tmp_path: Path,
    cpu_loader: TorchModelLoader,
) -> None:
    folder = tmp_path / "broken-llama"
    shutil.copytree(tiny_zoo / "tiny-llama", folder)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CorruptWeights, match=r"model\.safetensors"):
        cpu_loader.load(manifest_of(folder), None)


def test_missing_weight_file_raises_bad_model_folder(
    tiny_zoo: Path,
    manifest_of: Callable[..., ModelManifest],
    tmp_path: Path,
    cpu_loader: TorchModelLoader,
) -> None:
    folder = tmp_path / "partial-sd"
    shutil.copytree(tiny_zoo / "tiny-sd", folder)
    manifest = manifest_of(folder)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(BadModelFolder, match=re.escape("vae/diffusion_pytorch_model.safetensors")):
        cpu_loader.load(manifest, None)
    with pytest.raises(BadModelFolder, match=re.escape("vae/diffusion_pytorch_model.safetensors")):
        cpu_loader.load_with_library(manifest)


def test_falls_back_to_library_loader_and_says_why(
    tiny_zoo: Path,
    manifest_of: Callable[..., ModelManifest],
    tmp_path: Path,
    cpu_loader: TorchModelLoader,
) -> None:
    # A checkpoint tensor the model does not use: genedge refuses, the library ignores it.
    folder = tmp_path / "odd-gpt2"
    shutil.copytree(tiny_zoo / "tiny-gpt2", folder)
    state = load_file(folder / "model.safetensors")
    state["transformer.not_a_weight"] = torch.zeros(3)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    model, report = cpu_loader.load(manifest_of(folder), None)
    try:
        assert report.loader == "library"
        assert "not_a_weight" in report.notes[0]
        params = TextParams(max_tokens=2, temperature=0.0, top_p=1.0)
        assert model.generate_text(None, "hi", params).completion_tokens >= 1
    finally:
        model.close()


@pytest.mark.parametrize(
    ("which", "dtype"), [("llama_manifest", "bfloat16"), ("gpt2_manifest", "float16")]
)
def test_dtype_cast_for_text_models(which: str, dtype: str, request: pytest.FixtureRequest) -> None:
    manifest: ModelManifest = request.getfixturevalue(which)
    loader = TorchModelLoader("cpu", dtype=dtype)
    ours, _ = loader.load(manifest, None)
    lib, _ = loader.load_with_library(manifest)
    copy = loader.read_to_host(manifest)
    from_ram, _ = loader.load(manifest, copy)
    copy.release()
    try:
        assert dtype_name(ours) == dtype
        assert all(p.dtype == getattr(torch, dtype) for p in ours.torch_modules()[0].parameters())
        _assert_identical(ours, lib)
        _assert_identical(ours, from_ram)
        f32 = sum(p.numel() for p in ours.torch_modules()[0].parameters()) * 4
        assert ours.memory_bytes() < f32
        result = ours.generate_text(
            CHAT, None, TextParams(max_tokens=4, temperature=0.0, top_p=1.0)
        )
        assert result.completion_tokens >= 1
    finally:
        for m in (ours, lib, from_ram):
            m.close()


def test_bad_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="dtype"):
        TorchModelLoader("cpu", dtype="int8")


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


def test_chat_uses_the_chat_template(llama: TextModel) -> None:
    tok = llama.tokenizer
    conv = [{"role": m.role, "content": m.content} for m in CHAT]
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<s><|system|>") and text.endswith("<|assistant|>\n")
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    result = llama.generate_text(CHAT, None, TextParams(max_tokens=5, temperature=0.0, top_p=1.0))
    assert result.prompt_tokens == n
    assert 1 <= result.completion_tokens <= 5


def test_chat_without_template_uses_a_plain_transcript(gpt2: TextModel) -> None:
    assert not getattr(gpt2.tokenizer, "chat_template", None)
    expected = "system: You are helpful.\nuser: Tell me a story about a cat.\nassistant:"
    n = len(gpt2.tokenizer(expected)["input_ids"])
    result = gpt2.generate_text(CHAT, None, TextParams(max_tokens=3, temperature=0.0, top_p=1.0))
    assert result.prompt_tokens == n


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_raw_prompt_greedy_matches_model_generate(
    name: str, request: pytest.FixtureRequest
) -> None:
    model: TextModel = request.getfixturevalue(name)
    params = TextParams(max_tokens=12, temperature=0.0, top_p=1.0)
    result = model.generate_text(None, "The quick brown fox", params)
    ids = model.tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=model.tokenizer.pad_token_id or model.tokenizer.eos_token_id,
        )
    new = out[0, ids.shape[1] :]
    assert result.prompt_tokens == ids.shape[1]
    assert result.completion_tokens == len(new)
    assert result.text == model.tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_streaming_deltas_concatenate_to_the_text(
    name: str, request: pytest.FixtureRequest
) -> None:
    model: TextModel = request.getfixturevalue(name)
    deltas: list[str] = []
    params = TextParams(max_tokens=24, temperature=1.0, top_p=0.95, seed=7)
    result = model.generate_text(CHAT, None, params, on_token=deltas.append)
    assert deltas and all(deltas)
    assert "".join(deltas) == result.text
    # Streaming does not change what is generated.
    assert model.generate_text(CHAT, None, params).text == result.text


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_same_seed_same_text(name: str, request: pytest.FixtureRequest) -> None:
    model: TextModel = request.getfixturevalue(name)
    texts = {
        seed: [
            model.generate_text(
                None, "Once upon a time", TextParams(16, temperature=1.2, top_p=0.9, seed=seed)
            ).text
            for _ in range(2)
        ]
        for seed in (1, 2)
    }
    assert texts[1][0] == texts[1][1]
    assert texts[2][0] == texts[2][1]
    assert texts[1][0] != texts[2][0]


def test_max_tokens_gives_finish_reason_length(gpt2: TextModel) -> None:
    # Greedy on this random model does not produce EOS in the first tokens.
    result = gpt2.generate_text(None, "Hello", TextParams(max_tokens=6, temperature=0.0, top_p=1.0))
    assert result.completion_tokens == 6
    assert result.finish_reason == "length"


def test_should_stop_ends_generation_early(llama: TextModel) -> None:
    params = TextParams(max_tokens=50, temperature=0.0, top_p=1.0)
    result = llama.generate_text(None, "Hello", params, should_stop=lambda: True)
    assert result.completion_tokens == 1
    assert result.finish_reason == "stop"


def test_prompt_longer_than_the_context_is_refused(gpt2: TextModel) -> None:
    with pytest.raises(InvalidRequest, match="context"):
        gpt2.generate_text(None, "cat " * 1100, TextParams(4, temperature=0.0, top_p=1.0))
    # Near the end of the context, generation stops at the context with "length".
    ids = gpt2.tokenizer("cat " * 1100)["input_ids"][:1021]
    near = gpt2.tokenizer.decode(ids)
    result = gpt2.generate_text(None, near, TextParams(10, temperature=0.0, top_p=1.0))
    assert result.prompt_tokens + result.completion_tokens <= 1024
    assert result.finish_reason == "length"


def test_two_text_models_generate_concurrently(llama: TextModel, gpt2: TextModel) -> None:
    """Each model's first token waits for the other's: a shared lock would deadlock."""
    seen = {"llama": threading.Event(), "gpt2": threading.Event()}
    met: dict[str, bool] = {}
    results: dict[str, str] = {}
    params = TextParams(max_tokens=8, temperature=0.9, top_p=1.0, seed=5)

    def run(name: str, model: TextModel, other: str) -> None:
        def on_token(delta: str) -> None:
            seen[name].set()
            met.setdefault(name, seen[other].wait(20))

        results[name] = model.generate_text(None, "Hello", params, on_token=on_token).text

    threads = [
        threading.Thread(target=run, args=("llama", llama, "gpt2")),
        threading.Thread(target=run, args=("gpt2", gpt2, "llama")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert met == {"llama": True, "gpt2": True}
    # Seeded sampling is per request: concurrency does not change the text.
    assert results["llama"] == llama.generate_text(None, "Hello", params).text
    assert results["gpt2"] == gpt2.generate_text(None, "Hello", params).text


def test_text_model_refuses_images(llama: TextModel) -> None:
    with pytest.raises(WrongModelKind):
        llama.generate_image("a cat", ImageParams(width=32, height=32, steps=2, guidance_scale=1))


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def test_image_generation_returns_pngs_of_the_requested_size(sd: ImagePipelineModel) -> None:
    params = ImageParams(width=32, height=48, steps=2, guidance_scale=7.5, n=2, seed=11)
    pngs = sd.generate_image("a lighthouse on a cliff", params)
    assert len(pngs) == 2
    for data in pngs:
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.size == (32, 48)
    again = sd.generate_image("a lighthouse on a cliff", params)
    assert again == pngs  # same seed, same images
    neg = ImageParams(
        width=32, height=32, steps=2, guidance_scale=3.0, n=1, negative_prompt="fog", seed=1
    )
    assert len(sd.generate_image("a cat", neg)) == 1


def test_image_size_must_fit_the_vae(sd: ImagePipelineModel) -> None:
    with pytest.raises(InvalidRequest):
        sd.generate_image("x", ImageParams(width=33, height=32, steps=1, guidance_scale=1.0))


def test_image_model_refuses_text(sd: ImagePipelineModel) -> None:
    with pytest.raises(WrongModelKind):
        sd.generate_text(None, "hi", TextParams(max_tokens=2, temperature=0.0, top_p=1.0))


# --------------------------------------------------------------------------------------
# Closing
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", MANIFESTS)
def test_close_frees_the_modules(
    which: str, cpu_loader: TorchModelLoader, request: pytest.FixtureRequest
) -> None:
    manifest: ModelManifest = request.getfixturevalue(which)
    model, _ = cpu_loader.load(manifest, None)
    assert model.memory_bytes() > 0
    refs = [weakref.ref(m) for m in model.torch_modules()]
    model.close()
    model.close()  # idempotent
    gc.collect()
    assert all(r() is None for r in refs)
    assert model.memory_bytes() == 0
    with pytest.raises(ModelUnavailable):
        if isinstance(model, TextModel):
            model.generate_text(None, "hi", TextParams(2, temperature=0.0, top_p=1.0))
        else:
            model.generate_image("x", ImageParams(width=32, height=32, steps=1, guidance_scale=1))


# --------------------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("which", MANIFESTS)
def test_on_cuda(which: str, request: pytest.FixtureRequest) -> None:
    manifest: ModelManifest = request.getfixturevalue(which)
    dev = torch.device("cuda", torch.cuda.current_device())
    loader = TorchModelLoader("cuda")
    cpu, _ = TorchModelLoader("cpu").load(manifest, None)
    # cuBLAS keeps a workspace once it has run: create it now, it is not the model's memory.
    x = torch.ones(8, 8, device=dev)
    torch.nn.functional.linear(x @ x, x, x[0])
    del x
    gc.collect()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(dev)

    model, report = loader.load(manifest, None)
    assert report.loader == "genedge" and report.notes == []
    assert all(t.device == dev for t in _tensors(model).values())
    loaded_alloc = torch.cuda.memory_allocated(dev)
    mem = model.memory_bytes()
    n_storages = len(_tensors(model))
    # The CUDA allocator rounds every block up to 512 bytes.
    assert mem <= loaded_alloc - base <= mem + 512 * n_storages
    _assert_identical(model, cpu)

    copy = loader.read_to_host(manifest)
    assert copy.pinned
    from_ram, ram_report = loader.load(manifest, copy)
    assert ram_report.tier == "ram"
    _assert_identical(from_ram, cpu)
    from_ram.close()
    copy.release()

    if isinstance(model, TextModel):
        deltas: list[str] = []
        params = TextParams(max_tokens=8, temperature=0.8, top_p=0.9, seed=3)
        r1 = model.generate_text(CHAT, None, params, on_token=deltas.append)
        assert "".join(deltas) == r1.text
        assert model.generate_text(CHAT, None, params).text == r1.text
    else:
        pngs = model.generate_image(
            "a cat", ImageParams(width=32, height=32, steps=2, guidance_scale=7.5, n=2, seed=1)
        )
        assert len(pngs) == 2 and all(p.startswith(b"\x89PNG") for p in pngs)

    torch.cuda.synchronize()
    before_close = torch.cuda.memory_allocated(dev)
    model.close()
    cpu.close()
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated(dev)
    assert before_close - after >= mem
    assert after - base <= 64 * 1024
