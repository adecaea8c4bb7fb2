"""Replay a serving trace through every placement policy (`sim.simulator`).

    python bench/replay.py --trace PATH --kind gentd26|azure-llm|mooncake|requests
        [--speedup X] [--sample P] [--load L] [--hosts N] [--work-mean trace|model]
        [--load-latencies measured|trace] [--max-slots N] [--max-requests N]
        [--json FILE] [--export FILE.csv] [--doc docs/benchmarks.md --label NAME]

Every kind is read into one generic format, `requests`: a CSV with the header
`time_s,model,kind,work` (`time_s`: seconds from the trace's start, any order; `kind`:
`text` or `image`; `work`: the request's size relative to the measured default generation
of its profile, 1 = one default generation). `--kind requests --trace FILE.csv` replays
such a file; `--export FILE.csv` writes any trace in it (so `--kind requests` with the same
`--hosts`, `--work-mean`, `--sample` and `--load` replays a GenTD26 or Azure export exactly
as its own kind does). Traces are read in place (`../shared/traces/`, never copied into the
repository).

Models are mapped to measured profiles by popularity rank r (0 = most requested) among the
models of their kind: image models `sdxl-base-1.0` when r % 3 == 0, else `sd-1.5` (a third
in the SDXL size class, the most popular among them); text models `llama-3.1-8B`,
`qwen2.5-1.5B`, `gpt2-124M` for r % 3 = 0, 1, 2. The planner's inference time of a model is
its profile's × the host's factor × the mean work (the trace's, or the model's: `--work-mean`),
and a request's work is divided by that mean.

- `gentd26`: `--trace` is the folder `alibaba_gentd26/` (or its `lora_request_trace.csv`).
  Each base model (`checkpoint_model_version_id`) is one image model; work is (steps / 20)
  × images (the measured generation is one image in 20 steps), normalised by the trace's
  mean. `--load-latencies trace` replaces each model's disk-load time by a seeded draw
  from the trace's measured base-model load latencies (`basemodel_update_latency_anon.csv`):
  sd-1.5-class models from the lower half of the distribution, sdxl-class from the upper
  half. Two hosts. By default 15% of the requests of all 12 days are kept (`--sample`,
  seeded, so every part of the trace and most models are seen in a few minutes of running)
  and time is compressed (`--speedup`) so that their offered work is `--load` (default
  0.5) × the edge's GPU time.
- `azure-llm`: `--trace` is the folder `azure_llm_2023/`. Two text models, `conv` (more
  requested: llama-3.1-8B) and `code` (qwen2.5-1.5B); work is generated tokens / 32 (the
  measured generation made 32), normalised by the model's mean. One host. Rates are
  thinned (each request kept with probability `--sample`, seeded) so that the offered work
  is `--load` (default 1.5) × the host's GPU time: contended.
- `mooncake`: `--trace` is the folder `mooncake_fast25/`: one text model (`kimi`, mapped
  to llama-3.1-8B), work = output tokens / 32; one host, thinned to `--load` 1.5 as Azure.
- `requests`: two hosts, work normalised per model, time compressed to `--load` 0.5, all
  requests kept unless `--sample`.

Edge hosts are L40S-class (44 GB GPU, inference 1.6 × the H200's, RAM loads at half the Gen5
rate, 100 GB disk, 32 GB of pinned RAM, 10 Gbit/s backhaul). All: slots of 60 s, the first
`--warmup-slots` played but not counted, utilisation cap ρ_max = `--rho-max` (default 0.9,
the orchestrator's), the cloud at the cost model's default (1.5 × the mean edge inference
time behind an 80 ms round trip), default prices.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from bench.common import quiet_native_stdout  # noqa: E402
from bench.paired import across_seeds, paired_by_slot  # noqa: E402
from genedge.pool_schedule import DEFAULT_MAX_WAIT_S  # noqa: E402
from orchestrator.core.placement import (  # noqa: E402
    CloudSpec,
    HostSpec,
    Instance,
    ModelSpec,
    Perf,
    Prices,
)
from orchestrator.core.rates import DEFAULT_HALF_LIVES_S  # noqa: E402
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
MOONCAKE = "conversation_trace.jsonl"


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
    """One request of a trace in the generic `requests` format: seconds from the trace's
    start, model, kind (`text` or `image`), work (1 = one default generation of the
    measured profile the model is mapped to)."""

    t: float
    model: str
    work: float
    kind: str = "image"


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
    return [TraceRecord((t - t0).total_seconds(), m, w, "image") for t, m, w in rows]


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
    return [TraceRecord((t - t0).total_seconds(), m, w, "text") for t, m, w in rows]


REQUESTS_HEADER = ("time_s", "model", "kind", "work")


def read_requests(path: Path) -> list[TraceRecord]:
    """The generic format: a CSV with the header `time_s,model,kind,work` (any row order;
    `kind` text or image; `work` > 0, 1 = one default generation). A bad row is an error
    naming its line."""
    out = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != REQUESTS_HEADER:
            raise ValueError(f"{path}: the header must be {','.join(REQUESTS_HEADER)}")
        for line, row in enumerate(reader, start=2):
            try:
                t, work = float(row["time_s"]), float(row["work"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: time_s and work must be numbers") from None
            model, kind = (row["model"] or "").strip(), (row["kind"] or "").strip()
            if not model or kind not in ("text", "image"):
                raise ValueError(f"{path}:{line}: a model id and kind text or image are needed")
            if not (t >= 0 and work > 0 and np.isfinite(t) and np.isfinite(work)):
                raise ValueError(f"{path}:{line}: time_s must be >= 0 and work > 0")
            out.append(TraceRecord(t, model, work, kind))
    out.sort(key=lambda r: r.t)  # stable: rows at the same time keep the file's order
    return out


def write_requests(records: Sequence[TraceRecord], path: Path) -> None:
    """Records in the generic format (`read_requests` reads them back)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQUESTS_HEADER)
        for r in records:
            w.writerow([repr(r.t), r.model, r.kind, repr(r.work)])  # exact round trip


def read_mooncake(path: Path) -> list[TraceRecord]:
    """The Mooncake FAST'25 conversation trace (one model, `kimi`): work = output tokens /
    32 (the measured generation made 32)."""
    if path.is_dir():
        path = path / MOONCAKE
    out = []
    with path.open() as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                tokens = max(1.0, float(row.get("output_length") or 1))
                out.append(
                    TraceRecord(float(row["timestamp"]) / 1000.0, "kimi", tokens / 32, "text")
                )
    out.sort(key=lambda r: r.t)
    return [TraceRecord(r.t - out[0].t, r.model, r.work, r.kind) for r in out] if out else []


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


TEXT_PROFILES = ("llama-3.1-8B", "qwen2.5-1.5B", "gpt2-124M")


def text_profile(rank: int) -> str:
    """The measured language profile a text model of this popularity rank (among the
    trace's text models) gets: the largest for the most requested, then down the sizes."""
    return TEXT_PROFILES[rank % len(TEXT_PROFILES)]


def profiles_by_rank(records: Sequence[TraceRecord]) -> dict[str, str]:
    """Model -> measured profile: by popularity rank among the models of its kind."""
    out = {}
    for kind, rule in (("image", diffusion_profile), ("text", text_profile)):
        ranked = popularity_ranks([r for r in records if r.kind == kind])
        out.update({m: rule(rank) for rank, m in enumerate(ranked)})
    return out


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
    records: list[TraceRecord]  # the whole trace as read, in the generic format


def _window(records: list[TraceRecord], max_requests: int | None) -> list[TraceRecord]:
    """The first `max_requests` records (all when 0 or None)."""
    return records[:max_requests] if max_requests else records


@dataclass(frozen=True)
class TraceKind:
    """How a kind of trace is replayed: its reader, the edge, how work is normalised
    (`trace`: by the whole trace's mean, every model's work meaning the same; `model`: by
    each model's mean) and how the offered load is reached (`speedup`: time compressed;
    `sample`: requests thinned), with the defaults of --load and --sample."""

    reader: Callable[[Path], list[TraceRecord]]
    hosts: int
    work_mean: str
    compress: str
    load: float
    sample: float | None


KINDS: dict[str, TraceKind] = {
    "gentd26": TraceKind(read_gentd26, 2, "trace", "speedup", 0.5, 0.15),
    "azure-llm": TraceKind(read_azure, 1, "model", "sample", 1.5, None),
    "mooncake": TraceKind(read_mooncake, 1, "model", "sample", 1.5, None),
    "requests": TraceKind(read_requests, 2, "model", "speedup", 0.5, 1.0),
}


def prepare(args: argparse.Namespace) -> Replay:
    """Any kind: its records in the generic format, models mapped to measured profiles by
    popularity rank within their kind, work normalised, the load reached, the instance."""
    spec = KINDS[args.kind]
    every = spec.reader(args.trace)
    if not every:
        raise ValueError(f"{args.trace}: no requests")
    measured = {m.id: m for m in load_measured(args.measured)}
    profiles = profiles_by_rank(every)  # ranks, profiles and mean work from the whole trace
    models = sorted(profiles)
    work_mean = args.work_mean or spec.work_mean
    if work_mean == "trace":
        mean = statistics.fmean(r.work for r in every)
        mean_work = dict.fromkeys(models, mean)
    else:
        mean_work = {m: statistics.fmean(r.work for r in every if r.model == m) for m in models}
    loads = None
    if args.load_latencies == "trace":
        folder = args.trace if args.trace.is_dir() else args.trace.parent
        loads = trace_load_times(models, profiles, read_load_latencies(folder), args.seed)
    n_hosts = args.hosts or spec.hosts
    inst = build_instance(measured, profiles, mean_work, [L40S] * n_hosts, args.rho_max, loads)
    load = args.load if args.load is not None else spec.load
    if spec.compress == "speedup":
        sample = args.sample if args.sample is not None else (spec.sample or 1.0)
        records = _window(thin(every, sample, args.seed), args.max_requests)
        speedup = args.speedup
        if speedup is None:  # compress time to the target load over the replayed requests
            natural = to_requests(records, mean_work, 1.0)
            span = natural[-1].t if natural else 0.0
            speedup = max(1.0, load / max(offered_load(inst, natural, span), 1e-12))
    else:
        speedup = args.speedup if args.speedup is not None else 1.0
        full = to_requests(every, mean_work, speedup)
        duration = (full[-1].t + 1e-9) if full else 0.0
        sample = args.sample
        if sample is None:  # thin to the target load
            sample = min(1.0, load / max(offered_load(inst, full, duration), 1e-12))
        records = _window(thin(every, sample, args.seed), args.max_requests)
    reqs = to_requests(records, mean_work, speedup)
    n_slots = _slots(reqs, args.max_slots)
    reqs = [r for r in reqs if r.t < n_slots * SLOT_S]
    assumptions: dict[str, object] = {
        "trace": str(args.trace),
        "kind": args.kind,
        "requests": len(reqs),
        "sample": sample,
        "models": len(models),
        "models_requested": len({r.model for r in reqs}),
        "profiles": dict(Counter(profiles.values())),
        "mapping": "by popularity rank r within a kind: image sdxl-base-1.0 if r % 3 == 0 "
        f"else sd-1.5; text {', '.join(TEXT_PROFILES)} for r % 3 = 0, 1, 2",
        "work": "normalised by the " + ("trace's mean" if work_mean == "trace" else "model's mean"),
        "mean_work": mean_work if work_mean == "model" else mean_work[models[0]],
        "load_latencies": args.load_latencies,
        "speedup": speedup,
        "hosts": f"{n_hosts} x L40S-class (44 GB GPU, 100 GB disk, 32 GB RAM, 10 Gbit/s)",
        "rho_max": args.rho_max,
        "slot_s": SLOT_S,
        "slots": n_slots,
        "warmup_slots": args.warmup_slots,
        "offered_load": offered_load(inst, reqs, n_slots * SLOT_S),
        "prices": "placement.Prices defaults",
        "overflow": not args.no_overflow,
    }
    if len(profiles) <= 8:
        assumptions["profile_of"] = profiles
    if loads:
        assumptions["load_disk_s_mean"] = statistics.fmean(loads.values())
    return Replay(inst, reqs, sim_config(args, n_slots), assumptions, every)


def sim_config(args: argparse.Namespace, n_slots: int) -> SimConfig:
    """The simulator's settings from the command line (both trace kinds)."""
    return SimConfig(
        start_s=0.0,
        n_slots=n_slots,
        warmup_slots=args.warmup_slots,
        seed=args.seed,
        time_limit_s=args.time_limit,
        overflow=not args.no_overflow,
        pool_max_wait_s=args.pool_max_wait,
        grouped_pi=args.grouped_pi,
        replan_on_surge=not args.no_surge_replan,
        on_demand=not args.no_on_demand,
        half_lives_s=() if args.fixed_half_life else DEFAULT_HALF_LIVES_S,
        hysteresis=not args.no_hysteresis,
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


def slot_costs(result: SimResult) -> list[float]:
    """The total cost of each counted slot (they sum to `result.cost.total`)."""
    return [s.cost.total for s in result.slots if s.counted]


def markdown_table(
    results: dict[str, SimResult], reference: str = "lru", paired: str = "mlds"
) -> str:
    """One row per policy: cost (and vs `reference`), latency, cloud share, switches, bytes,
    and, when `paired` ran, the cost against it slot by slot with a 95% interval
    (`bench.paired.paired_by_slot`)."""
    ref = results[reference].cost.total if reference in results else None
    pair = slot_costs(results[paired]) if paired in results else None
    lines = [
        f"| policy | total cost | vs {reference} | vs {paired}, by slot (95%) "
        "| mean latency (s) | p95 latency (s) | cloud share | switches | fetched (GB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        vs = f"{100 * (r.cost.total / ref - 1):+.1f}%" if ref else "n/a"
        by_slot = "n/a"
        if pair is not None and name != paired:
            with contextlib.suppress(ValueError):  # nothing counted, or a free reference
                by_slot = paired_by_slot(pair, slot_costs(r)).text()
        lines.append(
            f"| {name} | {r.cost.total:,.0f} | {vs} | {by_slot} | {r.mean_latency_s:.2f} | "
            f"{r.p95_latency_s:.2f} | {r.cloud_share:.2f} | {r.switches} | "
            f"{r.bytes_fetched / GB:.1f} |"
        )
    return "\n".join(lines)


def seeds_table(
    totals: dict[str, list[float]],
    latencies: dict[str, list[float]],
    p95s: dict[str, list[float]],
    seeds: Sequence[int],
    paired: str = "mlds",
    reference: str = "lru",
) -> str:
    """One row per policy over several seeds: its cost on each; the mean relative
    difference of the cost from `paired` and from `reference`, and of the mean latency from
    `reference`'s, with Student-t 95% intervals; the mean and p95 latency averaged."""
    head = " | ".join(f"seed {k}" for k in seeds)
    lines = [
        f"| policy | {head} | vs {paired} (95%) | vs {reference} (95%) "
        f"| mean latency vs {reference} (95%) | mean latency (s) | p95 latency (s) |",
        "|---|" + "---:|" * (len(seeds) + 5),
    ]

    def vs(ref: str, name: str, values: dict[str, list[float]]) -> str:
        if ref not in values or name == ref:
            return "n/a"
        try:
            return across_seeds(values[ref], values[name]).text()
        except ValueError:  # a reference that cost nothing (no requests)
            return "n/a"

    for name, costs in totals.items():
        cells = " | ".join(f"{c:,.0f}" for c in costs)
        lines.append(
            f"| {name} | {cells} | {vs(paired, name, totals)} | {vs(reference, name, totals)} "
            f"| {vs(reference, name, latencies)} | {statistics.fmean(latencies[name]):.2f} "
            f"| {statistics.fmean(p95s[name]):.2f} |"
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
    ap.add_argument("--kind", choices=sorted(KINDS), required=True)
    ap.add_argument("--hosts", type=int, help="edge hosts (default: gentd26 2, requests 2, else 1)")
    ap.add_argument(
        "--work-mean",
        choices=["trace", "model"],
        help="normalise work by the trace's mean or each model's (default: gentd26 trace, "
        "else model)",
    )
    ap.add_argument(
        "--export", type=Path, help="also write the whole trace in the generic requests format"
    )
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
    ap.add_argument(
        "--pool-max-wait",
        type=float,
        default=DEFAULT_MAX_WAIT_S,
        help="the swap pool's starvation bound in seconds, as the agent's "
        "EDGE_POOL_MAX_WAIT_S (default 30; 0: first-in-first-out, the simulator before "
        "the agent grouped its pool)",
    )
    ap.add_argument(
        "--grouped-pi",
        action="store_true",
        help="plan with π for the pool grouped by model (placement.pool_miss_from with the "
        "bound) instead of the first-in-first-out value",
    )
    ap.add_argument(
        "--no-surge-replan",
        action="store_true",
        help="plan at slot boundaries only (default: also at once on a rate surge, as the "
        "orchestrator does)",
    )
    ap.add_argument(
        "--no-on-demand",
        action="store_true",
        help="no serving on demand (default: an idle host serves a model it holds on disk "
        "but is not planned for, when it beats the cloud, as the gateway routes)",
    )
    ap.add_argument(
        "--fixed-half-life",
        action="store_true",
        help="one EWMA of 300 s for every model's rate (default: per model the best "
        "predicting of 60, 300 and 1,800 s, as the orchestrator estimates)",
    )
    ap.add_argument(
        "--no-hysteresis",
        action="store_true",
        help="carry out every decision as solved (default: keep the last levels unless the "
        "new ones pay for the switch there and back, as the orchestrator does)",
    )
    ap.add_argument("--time-limit", type=float, default=5.0, help="seconds per MILP")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="replay once per seed (thinning, load draws, solvers) and report each "
        "policy's cost per seed with the mean difference from mlds and lru (95%%); the "
        "doc section is the label with '-seeds'",
    )
    ap.add_argument("--policies", nargs="*", default=list(POLICIES))
    ap.add_argument("--measured", type=Path, default=DEFAULT_MEASURED)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--doc", type=Path, help="update a marked section of this markdown file")
    ap.add_argument("--label", help="the section's label (default: kind and variant)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.load_latencies == "trace" and args.kind != "gentd26":
        print("--load-latencies trace needs the GenTD26 latency file (--kind gentd26)")
        return 2
    try:
        replay = prepare(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"cannot replay {args.trace}: {exc}")
        return 2
    if args.export:
        write_requests(replay.records, args.export)
        print(f"wrote the {len(replay.records)} requests of the trace to {args.export}")
    if args.seeds:
        return _main_seeds(args, t0)
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


def _main_seeds(args: argparse.Namespace, t0: float) -> int:
    """`--seeds`: the replay once per seed, every policy; a table across the seeds."""
    totals: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}
    p95s: dict[str, list[float]] = {}
    for k in args.seeds:
        args.seed = k
        results = run_policies(prepare(args), args.policies)
        for name, r in results.items():
            totals.setdefault(name, []).append(r.cost.total)
            latencies.setdefault(name, []).append(r.mean_latency_s)
            p95s.setdefault(name, []).append(r.p95_latency_s)
        costs = ", ".join(f"{n} {r.cost.total:,.0f}" for n, r in results.items())
        print(f"seed {k} ({time.perf_counter() - t0:.0f} s): {costs}", flush=True)
    table = seeds_table(totals, latencies, p95s, args.seeds)
    print(table)
    if args.json:
        doc = {
            "seeds": args.seeds,
            "total_cost": totals,
            "mean_latency_s": latencies,
            "p95_latency_s": p95s,
        }
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    if args.doc:
        label = (args.label or default_label(args)) + "-seeds"
        update_doc(args.doc, label, table)
        print(f"updated {args.doc} ({label})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
