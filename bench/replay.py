"""Replay a real serving trace through every placement policy (`sim.simulator`).

    python bench/replay.py --trace PATH --kind gentd26|azure-llm [--speedup X] [--sample P]
        [--load-latencies measured|trace] [--max-slots N] [--max-requests N] [--json FILE]
        [--doc docs/benchmarks.md --label NAME]

Traces are read in place (`../shared/traces/`, never copied into the repository):

- `gentd26`: `--trace` is the folder `alibaba_gentd26/` (or its `lora_request_trace.csv`).
  Each base model (`checkpoint_model_version_id`) is one model, mapped by its popularity
  rank in the whole trace to a measured diffusion profile: rank r (0 = most requested) is
  `sdxl-base-1.0` when r % 3 == 0, else `sd-1.5` (a third of the checkpoints in the SDXL
  size class, the most popular among them). A request's work is (steps / 20) × images (the
  measured generation is one image in 20 steps), normalised by the trace's mean, and the
  planner's inference time is the profile's times that mean. `--load-latencies trace`
  replaces each model's disk-load time by a seeded draw from the trace's measured base-model
  load latencies (`basemodel_update_latency_anon.csv`): sd-1.5-class models from the lower
  half of the distribution, sdxl-class from the upper half. Edge: two L40S-class hosts (44
  GB GPU, inference 1.6 × the H200's, RAM loads at half the Gen5 rate), 100 GB disk and 32
  GB of pinned RAM each, 10 Gbit/s backhaul. By default 15% of the requests of all 12 days
  are kept (`--sample`, seeded, so every part of the trace and most models are seen in a few
  minutes of running) and time is compressed (`--speedup`) so that their offered work is
  `--load` (default 0.5) × the edge's GPU time.
- `azure-llm`: `--trace` is the folder `azure_llm_2023/`. Two models: the code service is
  qwen2.5-1.5B, the conversation service llama-3.1-8B. A request's work is its generated
  tokens / 32 (the measured generation made 32), normalised by the model's mean. Edge: one
  L40S-class host. Rates are thinned (each request kept with probability `--sample`, seeded)
  so that the offered work is `--load` (default 1.5) × the host's GPU time: contended.

Both: slots of 60 s, the first `--warmup-slots` played but not counted, utilisation cap
ρ_max = `--rho-max` (default 0.9, the orchestrator's), the cloud at the cost model's
default (1.5 × the mean edge inference time behind an 80 ms round trip), default prices.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from bench.common import quiet_native_stdout  # noqa: E402
from orchestrator.core.placement import (  # noqa: E402
    CloudSpec,
    HostSpec,
    Instance,
    ModelSpec,
    Perf,
    Prices,
)
from sim.scenarios import MeasuredModel, load_measured  # noqa: E402
from sim.simulator import (  # noqa: E402
    POLICIES,
    Request,
    SimConfig,
    SimResult,
    simulate,
)

DEFAULT_MEASURED = REPO.parent / "shared/measured/h200-characterisation.json"
TRACES = REPO.parent / "shared/traces"
SLOT_S = 60.0
GB = 1e9

GENTD26_REQUESTS = "lora_request_trace.csv"
GENTD26_LOADS = "basemodel_update_latency_anon.csv"
AZURE_CODE = "AzureLLMInferenceTrace_code.csv"
AZURE_CONV = "AzureLLMInferenceTrace_conv.csv"
AZURE_PROFILES = {"code": "qwen2.5-1.5B", "conv": "llama-3.1-8B"}


@dataclass(frozen=True)
class EdgeHost:
    """An edge host kind for the replays (capacities in bytes)."""

    name: str
    gpu_bytes: int
    disk_bytes: int
    ram_bytes: int
    infer_factor: float
    ram_load_factor: float
    backhaul_Bps: float = 1.25e9


L40S = EdgeHost("l40s", 44_000_000_000, 100_000_000_000, 32_000_000_000, 1.6, 2.0)


@dataclass(frozen=True)
class TraceRecord:
    """One request of a trace: seconds from the trace's start, model, raw work (1 = the
    measured generation)."""

    t: float
    model: str
    work: float


# ---------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------


def _float(text: str | None, default: float) -> float:
    try:
        value = float(text) if text not in (None, "") else default
    except ValueError:
        return default
    return value if value > 0 else default


def read_gentd26(path: Path) -> list[TraceRecord]:
    """The Alibaba GenTD26 request trace: every row with a base model, in time order."""
    if path.is_dir():
        path = path / GENTD26_REQUESTS
    rows: list[tuple[datetime, str, float]] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            model = (row.get("checkpoint_model_version_id") or "").strip()
            stamp = (row.get("gmt_create") or "").strip()
            if not model or not stamp:
                continue
            steps = _float(row.get("num_inference_steps"), 20.0)
            images = _float(row.get("num_images_per_prompt"), 1.0)
            rows.append((datetime.fromisoformat(stamp), model, steps / 20.0 * images))
    rows.sort(key=lambda r: r[0])
    if not rows:
        return []
    t0 = rows[0][0]
    return [TraceRecord((t - t0).total_seconds(), m, w) for t, m, w in rows]


def read_load_latencies(path: Path) -> list[float]:
    """The trace's measured base-model load latencies, in seconds (the file is in ms)."""
    if path.is_dir():
        path = path / GENTD26_LOADS
    with path.open(newline="") as f:
        return [float(r["value"]) / 1000.0 for r in csv.DictReader(f) if r.get("value")]


def _azure_stamp(text: str) -> datetime:
    # 100 ns precision ("...03.9799600"): Python takes at most 6 fractional digits
    head, _, frac = text.strip().partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}" if frac else head)


def read_azure(path: Path) -> list[TraceRecord]:
    """The Azure LLM 2023 code and conversation traces merged: model "code" or "conv",
    raw work = generated tokens / 32."""
    rows: list[tuple[datetime, str, float]] = []
    for name, model in ((AZURE_CODE, "code"), (AZURE_CONV, "conv")):
        with (path / name).open(newline="") as f:
            for row in csv.DictReader(f):
                tokens = _float(row.get("GeneratedTokens"), 1.0)
                rows.append((_azure_stamp(row["TIMESTAMP"]), model, tokens / 32.0))
    rows.sort(key=lambda r: r[0])
    if not rows:
        return []
    t0 = rows[0][0]
    return [TraceRecord((t - t0).total_seconds(), m, w) for t, m, w in rows]


# ---------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------


def popularity_ranks(records: Sequence[TraceRecord]) -> list[str]:
    """Model ids, most requested first (ties by id)."""
    counts = Counter(r.model for r in records)
    return sorted(counts, key=lambda m: (-counts[m], m))


def diffusion_profile(rank: int) -> str:
    """The measured diffusion profile a base model of this popularity rank gets."""
    return "sdxl-base-1.0" if rank % 3 == 0 else "sd-1.5"


def trace_load_times(
    ranked: Sequence[str], profiles: dict[str, str], latencies: Sequence[float], seed: int
) -> dict[str, float]:
    """Each model's disk-load seconds drawn from the trace's latencies: sd-1.5-class models
    from the lower half of the distribution, larger ones from the upper half (seeded)."""
    lat = np.sort(np.asarray(latencies, dtype=float))
    half = lat.size // 2
    lower, upper = lat[:half] if half else lat, lat[half:]
    rng = np.random.default_rng(seed)
    return {m: float(rng.choice(lower if profiles[m] == "sd-1.5" else upper)) for m in ranked}


def build_instance(
    measured: dict[str, MeasuredModel],
    profiles: dict[str, str],
    mean_work: dict[str, float],
    hosts: Sequence[EdgeHost],
    rho_max: float,
    load_disk_s: dict[str, float] | None = None,
) -> Instance:
    """Models named by `profiles` (model -> measured profile id) on copies of `hosts`;
    inference times are the profile's × host factor × the model's mean work."""
    specs = [
        HostSpec(f"{h.name}-{j}", h.disk_bytes, h.ram_bytes, h.gpu_bytes, rho_max, h.backhaul_Bps)
        for j, h in enumerate(hosts)
    ]
    models, perf = [], {}
    for m, pid in profiles.items():
        src = measured[pid]
        models.append(ModelSpec(m, src.kind, src.storage_bytes))
        for spec, kind in zip(specs, hosts, strict=True):
            perf[(m, spec.id)] = Perf(
                vram_bytes=src.vram_bytes,
                load_disk_s=(load_disk_s or {}).get(m, src.load_disk_s),
                load_ram_s=src.load_ram_s * kind.ram_load_factor,
                infer_s=src.infer_s * kind.infer_factor * mean_work[m],
            )
    return Instance(
        hosts=specs,
        models=models,
        perf=perf,
        rates={},
        slot_s=SLOT_S,
        cloud=CloudSpec(wan_rtt_s=0.08),
        prices=Prices(),
    )


def to_requests(
    records: Sequence[TraceRecord], mean_work: dict[str, float], speedup: float
) -> list[Request]:
    """Trace records on the compressed clock, work normalised by the model's mean."""
    return [Request(r.t / speedup, r.model, r.work / mean_work[r.model]) for r in records]


def thin(records: Sequence[TraceRecord], keep: float, seed: int) -> list[TraceRecord]:
    """Each record kept with probability `keep` (seeded)."""
    if keep >= 1.0:
        return list(records)
    rng = np.random.default_rng(seed)
    mask = rng.random(len(records)) < keep
    return [r for r, k in zip(records, mask, strict=True) if k]


def offered_load(inst: Instance, requests: Sequence[Request], duration_s: float) -> float:
    """GPU seconds the requests need on the edge's first host kind / the edge's seconds."""
    host = inst.hosts[0].id
    work = sum(r.work * inst.perf[(r.model, host)].infer_s for r in requests)
    return work / (duration_s * len(inst.hosts)) if duration_s > 0 else 0.0


@dataclass
class Replay:
    """A prepared replay: the instance, the requests and what was assumed."""

    instance: Instance
    requests: list[Request]
    config: SimConfig
    assumptions: dict[str, object]


def _window(records: list[TraceRecord], max_requests: int | None) -> list[TraceRecord]:
    """The first `max_requests` records (all when 0 or None)."""
    return records[:max_requests] if max_requests else records


def prepare_gentd26(args: argparse.Namespace) -> Replay:
    folder = args.trace if args.trace.is_dir() else args.trace.parent
    every = read_gentd26(args.trace)
    measured = {m.id: m for m in load_measured(args.measured)}
    ranked = popularity_ranks(every)  # ranks, profiles and mean work from the whole trace
    profiles = {m: diffusion_profile(r) for r, m in enumerate(ranked)}
    mean = statistics.fmean(r.work for r in every) if every else 1.0
    mean_work = dict.fromkeys(ranked, mean)
    sample = args.sample if args.sample is not None else 0.15
    records = _window(thin(every, sample, args.seed), args.max_requests)
    loads = None
    if args.load_latencies == "trace":
        loads = trace_load_times(ranked, profiles, read_load_latencies(folder), args.seed)
    inst = build_instance(measured, profiles, mean_work, [L40S, L40S], args.rho_max, loads)
    speedup = args.speedup
    load = args.load if args.load is not None else 0.5
    if speedup is None:  # compress time to the target load over the replayed requests
        natural = to_requests(records, mean_work, 1.0)
        span = natural[-1].t if natural else 0.0
        speedup = max(1.0, load / max(offered_load(inst, natural, span), 1e-12))
    reqs = to_requests(records, mean_work, speedup)
    n_slots = _slots(reqs, args.max_slots)
    reqs = [r for r in reqs if r.t < n_slots * SLOT_S]
    assumptions: dict[str, object] = {
        "trace": str(args.trace),
        "kind": "gentd26",
        "requests": len(reqs),
        "sample": sample,
        "base_models": len(ranked),
        "base_models_requested": len({r.model for r in reqs}),
        "profiles": dict(Counter(profiles.values())),
        "mapping": "popularity rank r: sdxl-base-1.0 if r % 3 == 0 else sd-1.5",
        "work": "(steps / 20) x images, normalised by the trace mean",
        "mean_work": mean,
        "load_latencies": args.load_latencies,
        "speedup": speedup,
        "hosts": "2 x L40S-class (44 GB GPU, 100 GB disk, 32 GB RAM, 10 Gbit/s)",
        "rho_max": args.rho_max,
        "slot_s": SLOT_S,
        "slots": n_slots,
        "warmup_slots": args.warmup_slots,
        "offered_load": offered_load(inst, reqs, n_slots * SLOT_S),
        "prices": "placement.Prices defaults",
        "overflow": not args.no_overflow,
    }
    if loads:
        assumptions["load_disk_s_mean"] = statistics.fmean(loads.values())
    return Replay(inst, reqs, sim_config(args, n_slots), assumptions)


def prepare_azure(args: argparse.Namespace) -> Replay:
    records = read_azure(args.trace)
    measured = {m.id: m for m in load_measured(args.measured)}
    mean_work = {
        m: statistics.fmean(r.work for r in records if r.model == m) for m in AZURE_PROFILES
    }
    inst = build_instance(measured, AZURE_PROFILES, mean_work, [L40S], args.rho_max)
    speedup = args.speedup if args.speedup is not None else 1.0
    full = to_requests(records, mean_work, speedup)
    duration = (full[-1].t + 1e-9) if full else 0.0
    keep = args.sample
    load = args.load if args.load is not None else 1.5
    if keep is None:  # thin to the target load
        keep = min(1.0, load / max(offered_load(inst, full, duration), 1e-12))
    kept = _window(thin(records, keep, args.seed), args.max_requests)
    reqs = to_requests(kept, mean_work, speedup)
    n_slots = _slots(reqs, args.max_slots)
    reqs = [r for r in reqs if r.t < n_slots * SLOT_S]
    assumptions: dict[str, object] = {
        "trace": str(args.trace),
        "kind": "azure-llm",
        "requests": len(reqs),
        "mapping": AZURE_PROFILES,
        "work": "generated tokens / 32, normalised by the model's mean",
        "mean_work": mean_work,
        "sample": keep,
        "speedup": speedup,
        "hosts": "1 x L40S-class (44 GB GPU, 100 GB disk, 32 GB RAM, 10 Gbit/s)",
        "rho_max": args.rho_max,
        "slot_s": SLOT_S,
        "slots": n_slots,
        "warmup_slots": args.warmup_slots,
        "offered_load": offered_load(inst, reqs, n_slots * SLOT_S),
        "prices": "placement.Prices defaults",
        "overflow": not args.no_overflow,
    }
    return Replay(inst, reqs, sim_config(args, n_slots), assumptions)


def sim_config(args: argparse.Namespace, n_slots: int) -> SimConfig:
    """The simulator's settings from the command line (both trace kinds)."""
    return SimConfig(
        start_s=0.0,
        n_slots=n_slots,
        warmup_slots=args.warmup_slots,
        seed=args.seed,
        time_limit_s=args.time_limit,
        overflow=not args.no_overflow,
    )


def _slots(reqs: Sequence[Request], max_slots: int | None) -> int:
    n = int(reqs[-1].t // SLOT_S) + 1 if reqs else 0
    return min(n, max_slots) if max_slots else n


# ---------------------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------------------


def run_policies(replay: Replay, policies: Sequence[str] = POLICIES) -> dict[str, SimResult]:
    """Every policy on the replay (HiGHS's native chatter silenced)."""
    out = {}
    for p in policies:
        with quiet_native_stdout():
            out[p] = simulate(replay.instance, replay.requests, p, replay.config)
    return out


def markdown_table(results: dict[str, SimResult], reference: str = "lru") -> str:
    """One row per policy: cost (and vs `reference`), latency, cloud share, switches, bytes."""
    ref = results[reference].cost.total if reference in results else None
    lines = [
        f"| policy | total cost | vs {reference} | mean latency (s) | p95 latency (s) "
        "| cloud share | switches | fetched (GB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        vs = f"{100 * (r.cost.total / ref - 1):+.1f}%" if ref else "n/a"
        lines.append(
            f"| {name} | {r.cost.total:,.0f} | {vs} | {r.mean_latency_s:.2f} | "
            f"{r.p95_latency_s:.2f} | {r.cloud_share:.2f} | {r.switches} | "
            f"{r.bytes_fetched / GB:.1f} |"
        )
    return "\n".join(lines)


def update_doc(doc: Path, label: str, body: str) -> None:
    """Replace the text between `<!-- label:begin -->` and `<!-- label:end -->` in `doc`
    (appended at the end when the markers are missing)."""
    begin, end = f"<!-- {label}:begin -->", f"<!-- {label}:end -->"
    text = doc.read_text() if doc.exists() else ""
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)


def default_label(args: argparse.Namespace) -> str:
    """The doc section of a run: kind, load-latency variant (gentd26), overflow."""
    label = f"replay-{args.kind}"
    if args.kind == "gentd26":
        label += f"-{args.load_latencies}"
    return label + ("-no-overflow" if args.no_overflow else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", type=Path, required=True, help="trace folder (or file)")
    ap.add_argument("--kind", choices=["gentd26", "azure-llm"], required=True)
    ap.add_argument(
        "--speedup", type=float, help="time compression (default: gentd26 to --load, azure 1)"
    )
    ap.add_argument(
        "--sample",
        type=float,
        help="keep this fraction of the requests, seeded (default: gentd26 0.15, azure-llm "
        "to --load)",
    )
    ap.add_argument(
        "--load",
        type=float,
        help="target offered load, the edge GPU time all requests need / the edge's time "
        "(default: gentd26 0.5 by --speedup, azure-llm 1.5 by --sample)",
    )
    ap.add_argument("--load-latencies", choices=["measured", "trace"], default="measured")
    ap.add_argument("--max-slots", type=int, default=400, help="0: no limit")
    ap.add_argument(
        "--max-requests", type=int, default=0, help="replay the first N kept requests (0: all)"
    )
    ap.add_argument("--warmup-slots", type=int, default=10)
    ap.add_argument("--rho-max", type=float, default=0.9)
    ap.add_argument(
        "--no-overflow", action="store_true", help="never reroute edge requests to the cloud"
    )
    ap.add_argument("--time-limit", type=float, default=5.0, help="seconds per MILP")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", nargs="*", default=list(POLICIES))
    ap.add_argument("--measured", type=Path, default=DEFAULT_MEASURED)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--doc", type=Path, help="update a marked section of this markdown file")
    ap.add_argument("--label", help="the section's label (default: kind and variant)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    replay = prepare_gentd26(args) if args.kind == "gentd26" else prepare_azure(args)
    print(json.dumps(replay.assumptions, indent=1))
    results = run_policies(replay, args.policies)
    table = markdown_table(results)
    print(table)
    for name, r in results.items():
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in r.cost.as_dict().items())
        print(f"  {name}: {parts}; {r.requests} requests")
    if "mlds" in results:
        m = results["mlds"].cost.total
        for other in ("lru", "exact-hindsight", "exact"):
            if other in results:
                o = results[other].cost.total
                print(f"mlds vs {other}: {100 * (m / o - 1):+.2f}%")
    elapsed = time.perf_counter() - t0
    print(f"Total {elapsed:.1f} s")
    if args.json:
        doc = {
            "policies": {name: r.summary() for name, r in results.items()},
            "assumptions": {**replay.assumptions, "elapsed_s": elapsed},
        }
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    if args.doc:
        label = args.label or default_label(args)
        update_doc(args.doc, label, table)
        print(f"updated {args.doc} ({label})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
