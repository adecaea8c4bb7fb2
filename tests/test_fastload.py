"""The pipelined safetensors reader (`edge_agent.adapters.fastload`): layouts, bit-identical
tensors of every dtype through every path (direct, staged, host block), clear errors for
broken files, no host or pinned memory kept across load/evict cycles, and the same on CUDA."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file, save_file

from edge_agent.adapters import fastload
from edge_agent.adapters.fastload import (
    ALIGN,
    ST_DTYPES,
    BlockLayout,
    HostMemory,
    PipelinedReader,
    UnsupportedByDirectLoader,
    plan_layout,
)
from edge_agent.adapters.torch_models import (
    BlockHostCopy,
    ImagePipelineModel,
    TextModel,
    TorchModelLoader,
    assign_tensors,
)
from edge_agent.errors import BadModelFolder, CorruptWeights
from genedge.contract import ModelManifest

MiB = 1024**2


def write_safetensors(path: Path, entries: list[tuple[str, str, list[int], bytes]]) -> None:
    """A safetensors file with the tensors in exactly this order (the library sorts them by
    dtype, which hides misaligned layouts); the header is padded to 8 bytes as it does."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, code, shape, raw in entries:
        header[key] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + b"".join(e[3] for e in entries))


def _random_bytes(gen: torch.Generator, n: int) -> bytes:
    return bytes(torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen).tolist())


def every_dtype_entries(seed: int = 0, scale: int = 1) -> list[tuple[str, str, list[int], bytes]]:
    """Every dtype this torch has, in odd sizes (so tensors land misaligned in the file),
    plus a scalar and empty tensors; random bit patterns (NaNs included) except for BOOL."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    shapes = [[3 * scale, 5], [7 * scale], [], [0, 4], [1, 1, 9 * scale + 2]]
    for i, (code, dtype) in enumerate(sorted(ST_DTYPES.items())):
        shape = shapes[i % len(shapes)]
        n = 1
        for d in shape:
            n *= d
        size = n * torch.empty((), dtype=dtype).element_size()
        raw = _random_bytes(gen, size)
        if dtype == torch.bool:
            raw = bytes(b & 1 for b in raw)
        out.append((f"t{i}.{code}", code, shape, raw))
    return out


def _as_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).tolist())


def check_views(
    layout: BlockLayout,
    block: torch.Tensor,
    rel: str,
    entries: list[tuple[str, str, list[int], bytes]],
) -> None:
    views = layout.views(block, rel)
    assert set(views) == {e[0] for e in entries}
    for key, code, shape, raw in entries:
        t = views[key]
        assert t.dtype == ST_DTYPES[code], key
        assert list(t.shape) == shape, key
        assert _as_bytes(t) == raw, key
        if t.numel():
            assert t.untyped_storage().data_ptr() == block.untyped_storage().data_ptr()
            assert (t.data_ptr() - block.data_ptr()) % ALIGN == 0, key


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, dict[str, list[tuple[str, str, list[int], bytes]]]]:
    """A folder with two weight files: every dtype (misaligned) and bigger float tensors."""
    files = {
        "a/every.safetensors": every_dtype_entries(seed=1, scale=40),
        "b/floats.safetensors": [
            ("w", "F32", [301, 7], _random_bytes(torch.Generator().manual_seed(2), 301 * 7 * 4)),
            ("odd", "F16", [33], _random_bytes(torch.Generator().manual_seed(3), 66)),
            ("v", "BF16", [1001], _random_bytes(torch.Generator().manual_seed(4), 2002)),
        ],
    }
    for rel, entries in files.items():
        write_safetensors(tmp_path / rel, entries)
    return tmp_path, files


@pytest.fixture
def reader() -> Iterator[PipelinedReader]:
    r = PipelinedReader("cpu", threads=3, chunk_bytes=4096)
    yield r
    r.close()


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------


def test_layout_aligns_every_tensor_and_keeps_aligned_files_in_one_segment(
    mixed: tuple[Path, dict], tmp_path: Path
) -> None:
    root, files = mixed
    layout = plan_layout(root, list(files))
    assert [f.rel for f in layout.files] == list(files)
    assert layout.data_bytes == sum(len(e[3]) for es in files.values() for e in es)
    assert layout.file_bytes == sum((root / rel).stat().st_size for rel in files)
    assert layout.data_bytes <= layout.nbytes <= layout.data_bytes + ALIGN * 40
    previous_end = 0
    for f in layout.files:
        for t in f.tensors:
            assert t.offset % ALIGN == 0 or t.nbytes == 0
        # Segments tile the data section in order, in increasing block offsets.
        assert sum(s.nbytes for s in f.segments) == f.data_end - f.data_start
        pos = f.data_start
        for s in f.segments:
            assert s.file_offset == pos and s.block_offset >= previous_end
            assert s.block_offset % ALIGN == 0
            pos += s.nbytes
            previous_end = s.block_offset + s.nbytes
    # A file written by the safetensors library (sorted by dtype size) with sizes that keep
    # the alignment is one segment, with no padding; an odd size starts a new segment.
    tensors = {"x": torch.ones(4, 4), "y": torch.zeros(3, dtype=torch.float16)}
    save_file(tensors, tmp_path / "lib.safetensors")
    one = plan_layout(tmp_path, ["lib.safetensors"])
    assert len(one.files[0].segments) == 1 and one.nbytes == 64 + 6
    tensors = {"x": torch.ones(5, 3), "y": torch.zeros(3, dtype=torch.float16)}
    save_file(tensors, tmp_path / "odd.safetensors")
    two = plan_layout(tmp_path, ["odd.safetensors"])
    assert [(s.nbytes, s.block_offset) for s in two.files[0].segments] == [(60, 0), (6, 64)]


def test_layout_refuses_what_it_does_not_handle(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"pickle")
    with pytest.raises(UnsupportedByDirectLoader, match=r"model\.bin"):
        plan_layout(tmp_path, ["model.bin"])
    write_safetensors(tmp_path / "f4.safetensors", [("x", "F4", [4], b"\x00\x00")])
    with pytest.raises(UnsupportedByDirectLoader, match="F4"):
        plan_layout(tmp_path, ["f4.safetensors"])


# --------------------------------------------------------------------------------------
# Bit identity
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threads", "chunk", "staging"),
    [(1, 4096, False), (3, 4096, False), (3, 4096, True), (2, 64 * MiB, True)],
)
def test_every_dtype_is_bit_identical_through_every_path(
    mixed: tuple[Path, dict], threads: int, chunk: int, staging: bool
) -> None:
    root, files = mixed
    layout = plan_layout(root, list(files))
    reader = PipelinedReader("cpu", threads=threads, chunk_bytes=chunk, staging=staging)
    try:
        block = reader.read(layout).wait()
        host = reader.read_to_host(layout, pinned=False)
        assert host.tensor is not None and not host.pinned
        copied = reader.copy_from_host(layout, host.tensor).wait()
        assert copied.data_ptr() != host.tensor.data_ptr()  # a copy, not the host block
        host.free()
        for rel, entries in files.items():
            for b in (block, copied):
                check_views(layout, b, rel, entries)
        # ...and the same tensors as the safetensors library reads (for its dtypes).
        for rel in files:
            expected = load_file(root / rel)
            views = layout.views(block, rel)
            for key, t in expected.items():
                assert _as_bytes(views[key]) == _as_bytes(t), key
    finally:
        reader.close()


def test_short_reads_are_continued(
    mixed: tuple[Path, dict], reader: PipelinedReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, files = mixed
    real = os.preadv

    def stingy(fd: int, buffers: list, offset: int) -> int:
        # At most 1000 bytes per call, as a filesystem may return.
        first = buffers[0]
        return real(fd, [first[: min(len(first), 1000)]], offset)

    monkeypatch.setattr(fastload.os, "preadv", stingy)
    layout = plan_layout(root, list(files))
    block = reader.read(layout).wait()
    for rel, entries in files.items():
        check_views(layout, block, rel, entries)


def test_concurrent_loads_share_the_reader(mixed: tuple[Path, dict], tmp_path: Path) -> None:
    root, files = mixed
    other = tmp_path / "other"
    shutil.copytree(root / "b", other / "b")
    reader = PipelinedReader("cpu", threads=2, chunk_bytes=4096, staging=True)
    results: dict[str, torch.Tensor] = {}

    def load(name: str, base: Path, rels: list[str]) -> None:
        results[name] = reader.read(plan_layout(base, rels)).wait()

    try:
        jobs = [
            threading.Thread(target=load, args=("all", root, list(files))),
            threading.Thread(target=load, args=("b", other, ["b/floats.safetensors"])),
        ]
        for j in jobs:
            j.start()
        for j in jobs:
            j.join()
        every = "a/every.safetensors"
        check_views(plan_layout(root, list(files)), results["all"], every, files[every])
        layout_b = plan_layout(other, ["b/floats.safetensors"])
        check_views(layout_b, results["b"], "b/floats.safetensors", files["b/floats.safetensors"])
    finally:
        reader.close()


# --------------------------------------------------------------------------------------
# Broken files
# --------------------------------------------------------------------------------------


def test_broken_files_raise_clear_errors_naming_the_file(
    mixed: tuple[Path, dict], reader: PipelinedReader
) -> None:
    root, files = mixed
    path = root / "b/floats.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CorruptWeights, match=r"b/floats\.safetensors: truncated"):
        plan_layout(root, list(files))
    path.write_bytes(b"\x0a\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CorruptWeights, match=r"b/floats\.safetensors: header is not valid JSON"):
        plan_layout(root, list(files))
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CorruptWeights, match=r"b/floats\.safetensors: truncated"):
        plan_layout(root, list(files))
    path.unlink()
    with pytest.raises(BadModelFolder, match=r"b/floats\.safetensors is missing"):
        plan_layout(root, list(files))
    # Changed between planning and reading: refused before any byte is used.
    path.write_bytes(data)
    layout = plan_layout(root, list(files))
    path.write_bytes(data[:-100])
    with pytest.raises(CorruptWeights, match=r"b/floats\.safetensors: .*changed while loading"):
        reader.read(layout).wait()
    path.unlink()
    with pytest.raises(BadModelFolder, match=r"b/floats\.safetensors is missing"):
        reader.read(layout).wait()
    with pytest.raises(BadModelFolder):
        reader.read_to_host(layout, pinned=False)
    assert reader.memory.live_buffers == 0  # the host block of the failed read was freed


def test_a_file_ending_mid_read_fails_the_whole_transfer(
    mixed: tuple[Path, dict], reader: PipelinedReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, files = mixed
    layout = plan_layout(root, list(files))
    real = os.preadv
    calls = {"n": 0}

    def shrinking(fd: int, buffers: list, offset: int) -> int:
        calls["n"] += 1
        return 0 if calls["n"] == 3 else real(fd, buffers, offset)  # the file "ended"

    monkeypatch.setattr(fastload.os, "preadv", shrinking)
    with pytest.raises(CorruptWeights, match=r"truncated: the file ends at byte \d+"):
        reader.read(layout).wait()
    monkeypatch.setattr(fastload.os, "preadv", real)
    block = reader.read(layout).wait()  # the reader is still usable
    check_views(layout, block, "a/every.safetensors", files["a/every.safetensors"])


def test_cancel_stops_a_transfer_quietly(mixed: tuple[Path, dict], reader: PipelinedReader):
    root, files = mixed
    layout = plan_layout(root, list(files))
    transfer = reader.read(layout)
    transfer.cancel()
    transfer.cancel()
    assert transfer.block is None


# --------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------


def test_host_memory_counts_and_frees_buffers() -> None:
    memory = HostMemory()
    a = memory.allocate(10_000, pinned=False)
    b = memory.allocate(3 * MiB, pinned=True)  # pinned only where CUDA is available
    assert a.tensor is not None and a.tensor.numel() == 10_000
    assert a.tensor.data_ptr() % 4096 == 0  # page-aligned, for DMA and registering
    assert memory.live_bytes == 10_000 + 3 * MiB and memory.live_buffers == 2
    assert memory.pinned_bytes == (3 * MiB if torch.cuda.is_available() else 0)
    a.free()
    a.free()
    assert a.freed and memory.live_bytes == 3 * MiB
    del b  # dropped without free(): the finaliser gives it back
    gc.collect()
    assert memory.live_bytes == 0 and memory.pinned_bytes == 0


def _rss() -> int:
    """Resident bytes, after handing the C heap's free pages back to the system (glibc's
    `malloc_trim`, where there is one): memory freed but kept by the allocator is not kept
    by us, and how much of it the allocator keeps varies with the tests run before."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return int(psutil.Process().memory_info().rss)


def test_no_host_memory_kept_across_100_load_evict_cycles(tmp_path: Path) -> None:
    # ~4 MB of weights in two files: the cached tier's block, the device block and the
    # staging ring go through 100 cycles; nothing may stay behind.
    gen = torch.Generator().manual_seed(0)
    save_file({"w": torch.randn(512, 1024, generator=gen)}, tmp_path / "a.safetensors")
    save_file({"v": torch.randn(1001, generator=gen).half()}, tmp_path / "b.safetensors")
    rels = ["a.safetensors", "b.safetensors"]
    reader = PipelinedReader("cpu", threads=2, chunk_bytes=MiB, staging=True)
    try:
        layout = plan_layout(tmp_path, rels)

        def cycle() -> None:
            host = reader.read_to_host(layout, pinned=True)
            assert host.tensor is not None
            block = reader.copy_from_host(layout, host.tensor).wait()
            from_disk = reader.read(layout).wait()
            assert torch.equal(block, from_disk)
            host.free()

        for _ in range(10):  # warm-up: the allocator and the staging ring settle
            cycle()
        staging = reader.memory.live_bytes
        assert staging <= 4 * MiB  # 2 x threads staging buffers, nothing else
        base = _rss()
        for _ in range(100):
            cycle()
        assert reader.memory.live_bytes == staging
        assert reader.memory.pinned_bytes == (staging if torch.cuda.is_available() else 0)
        assert _rss() - base < 32 * MiB
    finally:
        reader.close()
    assert reader.memory.live_bytes == 0


def test_no_host_memory_kept_across_model_load_evict_cycles(
    llama_manifest: ModelManifest,
) -> None:
    loader = TorchModelLoader("cpu")
    try:

        def cycle() -> None:
            copy = loader.read_to_host(llama_manifest)
            assert isinstance(copy, BlockHostCopy)
            model, report = loader.load(llama_manifest, copy)
            assert report.tier == "ram"
            copy.release()  # the model keeps its own block
            model.close()

        for _ in range(5):
            cycle()
        base, live = _rss(), loader.host_memory.live_bytes
        for _ in range(100):
            cycle()
        assert loader.host_memory.live_bytes == live == 0  # CPU: read straight in place
        assert _rss() - base < 32 * MiB
    finally:
        loader.close()


def test_release_waits_for_a_load_in_progress(llama_manifest: ModelManifest) -> None:
    loader = TorchModelLoader("cpu")
    copy = loader.read_to_host(llama_manifest)
    assert isinstance(copy, BlockHostCopy)
    held = copy.acquire()
    assert held is not None
    copy.release()
    assert copy.released and loader.host_memory.live_buffers == 1  # still being read
    copy.unuse()
    assert loader.host_memory.live_buffers == 0
    assert copy.acquire() is None
    loader.close()


# --------------------------------------------------------------------------------------
# Assigning, and the cached tier's prepared models
# --------------------------------------------------------------------------------------


def _meta(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.device("meta"):
        return build()


def test_assign_tensors_does_what_load_state_dict_does() -> None:
    def net() -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(4, 3), torch.nn.Sequential(torch.nn.Linear(3, 2))
        )

    torch.manual_seed(0)
    state = {k: v.clone() for k, v in net().state_dict().items()}
    state["extra.weight"] = torch.zeros(1)
    ours, theirs = _meta(net), _meta(net)
    assert assign_tensors(ours, state) == ["extra.weight"]
    result = theirs.load_state_dict(state, strict=False, assign=True)
    assert list(result.unexpected_keys) == ["extra.weight"]
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert isinstance(a, torch.nn.Parameter) and a.requires_grad == b.requires_grad
        assert a.data_ptr() == state[name].data_ptr()  # the tensor itself: no copy
        assert torch.equal(a, b)
    # A shape mismatch changes nothing and says which tensor.
    bad = _meta(lambda: torch.nn.Linear(4, 5))
    with pytest.raises(RuntimeError, match=r"size mismatch: weight: checkpoint \(3, 4\)"):
        assign_tensors(bad, {"weight": state["0.weight"], "bias": state["0.bias"]})
    assert bad.weight.is_meta and bad.bias.is_meta
    # A module with its own loading (BatchNorm's version handling) is left to torch.
    assert assign_tensors(_meta(lambda: torch.nn.BatchNorm1d(3)), {}) is None


def test_a_cached_copy_is_prepared_for_each_load(llama_manifest: ModelManifest) -> None:
    loader = TorchModelLoader("cpu")
    copy = loader.read_to_host(llama_manifest)
    assert isinstance(copy, BlockHostCopy) and copy.ready(0)
    try:
        first, _ = loader.load(llama_manifest, copy)
        assert copy.ready(timeout=30)  # prepared again, in the background
        second, _ = loader.load(llama_manifest, copy)
        a, b = _tensors(first), _tensors(second)
        assert first.model is not second.model and first.tokenizer is not second.tokenizer
        assert all(torch.equal(a[k], b[k]) and a[k].data_ptr() != b[k].data_ptr() for k in a)
        first.close()
        second.close()
    finally:
        copy.release()
        loader.close()
    assert not copy.ready(0)  # released: nothing kept
    plain = TorchModelLoader("cpu", prepare_cached=False)
    copy = plain.read_to_host(llama_manifest)
    assert not copy.ready(0)
    model, report = plain.load(llama_manifest, copy)
    assert report.tier == "ram" and not copy.ready(0)
    model.close()
    copy.release()
    plain.close()


# --------------------------------------------------------------------------------------
# Tiny models in half precision, against the libraries' loaders
# --------------------------------------------------------------------------------------


def _tensors(loaded: TextModel | ImagePipelineModel) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for i, module in enumerate(loaded.torch_modules()):
        for name, t in module.named_parameters(remove_duplicate=False):
            out[f"{i}.{name}"] = t
        for name, t in module.named_buffers(remove_duplicate=False):
            out[f"{i}.{name}"] = t
    return out


def _half_copy(src: Path, dest: Path, dtype_of: Callable[[str], torch.dtype]) -> Path:
    """`src` copied with every floating weight file stored in `dtype_of(rel)` (and its
    config saying so, as a real half-precision checkpoint's does)."""
    shutil.copytree(src, dest)
    for path in dest.rglob("*.safetensors"):
        rel = path.relative_to(dest).as_posix()
        tensors = {
            k: v.to(dtype_of(rel)) if v.is_floating_point() else v
            for k, v in load_file(path).items()
        }
        save_file(tensors, path, metadata={"format": "pt"})
        config = path.parent / "config.json"
        if config.is_file():
            doc = json.loads(config.read_text())
            if "dtype" in doc or "torch_dtype" in doc:
                doc["dtype"] = str(dtype_of(rel)).removeprefix("torch.")
                doc.pop("torch_dtype", None)
                config.write_text(json.dumps(doc))
    return dest


@pytest.mark.parametrize("which", ["llama", "sd"])
def test_half_precision_models_match_the_library_loader(
    which: str,
    tiny_zoo: Path,
    tmp_path: Path,
    manifest_of: Callable[..., ModelManifest],
) -> None:
    if which == "llama":
        folder = _half_copy(tiny_zoo / "tiny-llama", tmp_path / "m", lambda rel: torch.bfloat16)
    else:
        folder = _half_copy(
            tiny_zoo / "tiny-sd",
            tmp_path / "m",
            lambda rel: torch.bfloat16 if rel.startswith("text_encoder") else torch.float16,
        )
    manifest = manifest_of(folder)
    loader = TorchModelLoader("cpu")
    ours, report = loader.load(manifest, None)
    lib, _ = loader.load_with_library(manifest)
    try:
        assert (report.loader, report.notes) == ("genedge", [])
        a, b = _tensors(ours), _tensors(lib)
        assert set(a) == set(b)
        for name in a:
            assert a[name].dtype == b[name].dtype, name
            assert _as_bytes(a[name]) == _as_bytes(b[name]), name
        dtypes = {t.dtype for t in a.values()}
        assert (torch.bfloat16 in dtypes) and (which == "llama" or torch.float16 in dtypes)
    finally:
        ours.close()
        lib.close()
        loader.close()


# --------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_paths_are_bit_identical_and_free_everything(mixed: tuple[Path, dict]) -> None:
    root, files = mixed
    layout = plan_layout(root, list(files))
    dev = torch.device("cuda", torch.cuda.current_device())
    reader = PipelinedReader(dev, threads=3, chunk_bytes=4096)
    try:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(dev)

        def cycle(check: bool) -> None:
            block = reader.read(layout).wait()
            host = reader.read_to_host(layout, pinned=True)
            assert host.pinned and host.tensor is not None and host.tensor.is_pinned()
            copied = reader.copy_from_host(layout, host.tensor).wait()
            torch.cuda.synchronize()
            host.free()
            assert block.device == dev and copied.device == dev
            if check:
                for rel, entries in files.items():
                    check_views(layout, block, rel, entries)
                    check_views(layout, copied, rel, entries)

        cycle(check=True)
        staging = reader.memory.pinned_bytes
        assert 0 < staging <= 6 * 4096  # the staging ring only
        for _ in range(100):
            cycle(check=False)
        torch.cuda.synchronize()
        assert reader.memory.pinned_bytes == staging
        assert torch.cuda.memory_allocated(dev) == base
    finally:
        reader.close()
    assert reader.memory.pinned_bytes == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("which", ["sd_manifest", "llama_manifest", "gpt2_manifest"])
def test_cuda_model_loads_match_cpu_and_free_pinned_memory(
    which: str, request: pytest.FixtureRequest
) -> None:
    manifest: ModelManifest = request.getfixturevalue(which)
    dev = torch.device("cuda", torch.cuda.current_device())
    loader = TorchModelLoader("cuda")
    cpu, _ = TorchModelLoader("cpu").load(manifest, None)
    expected = {k: _as_bytes(v) for k, v in _tensors(cpu).items()}
    cpu.close()
    try:
        for i in range(30):
            copy = loader.read_to_host(manifest)
            assert isinstance(copy, BlockHostCopy) and copy.pinned
            for source in (copy, None):
                model, report = loader.load(manifest, source)
                assert (report.loader, report.notes) == ("genedge", [])
                if i == 0:
                    got = _tensors(model)
                    assert all(t.device == dev for t in got.values())
                    assert {k: _as_bytes(v) for k, v in got.items()} == expected
                model.close()
            copy.release()
        pinned_staging = loader.host_memory.pinned_bytes
        assert pinned_staging == loader.host_memory.live_bytes  # no cached block left
        assert pinned_staging <= 2 * loader._reader.threads * loader._reader.chunk_bytes
    finally:
        loader.close()
    assert loader.host_memory.pinned_bytes == 0
