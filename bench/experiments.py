"""Paper-style experiments: every policy simulated over measured-model scenarios.

    python bench/experiments.py [--quick] [--json FILE] [--no-overflow] [--doc FILE]
        [--img-dir DIR] [--measured PATH]

Like the simulations of Liang et al. (GLOBECOM 2024), but each point is a *simulation*
(`sim.simulator`), not a one-shot cost: Poisson arrivals at the scenario's
rates are replayed slot by slot, every policy plans from rates it estimated from earlier
slots (the orchestrator's estimator, primed with `HISTORY_SLOTS` slots of history), and
requests are served with the edge agent's semantics. One parameter varies per experiment,
the others stay at `DEFAULTS`:

- number of models (variants of the five models measured on an H200, ±30%),
- edge GPU memory (each host kind's GPU bytes × a factor),
- edge storage (each host's disk, as a fraction of an equal share of all models' bytes),
- arrival rate (offered work at H200 speed / (0.9 × the number of hosts), the `load` of
  `scenarios.random_instance`),
- the utilisation cap ρ_max every planner respects.

Scenarios come from `scenarios.random_instance` (3 hosts of mixed kinds, Zipf-like rates,
RAM for caching 5-20% of an equal share, half the models already somewhere). Each point is
the mean over `seeds` scenarios. Writes one PNG per experiment (total cost and mean latency
per policy) to `docs/img/`, a JSON of every number, and the markdown tables into a marked
section of `docs/benchmarks.md`. `--quick` finishes in about 40 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from bench.common import quiet_native_stdout  # noqa: E402
from bench.replay import update_doc  # noqa: E402
from orchestrator.core.placement import Instance  # noqa: E402
from sim.scenarios import MeasuredModel, load_measured, random_instance  # noqa: E402
from sim.simulator import (  # noqa: E402
    HINDSIGHT,
    POLICIES,
    SimConfig,
    SimResult,
    poisson_requests,
    simulate,
)

DEFAULT_MEASURED = REPO.parent / "shared/measured/h200-characterisation.json"
SEED_BASE = 20_000
HISTORY_SLOTS = 6  # arrivals before slot 0 that prime the rate estimator (not served)
N_HOSTS = 3
NON_EXACT = tuple(p for p in POLICIES if p not in ("exact", HINDSIGHT))


@dataclass(frozen=True)
class Point:
    """One scenario's parameters."""

    models: float = 30
    gpu: float = 0.5
    storage: float = 0.5
    load: float = 0.5
    rho: float = 0.9


DEFAULTS = Point()


@dataclass(frozen=True)
class Experiment:
    """One swept parameter."""

    key: str
    label: str
    values: tuple[float, ...]


EXPERIMENTS = (
    Experiment("models", "number of models", (10, 20, 40, 80)),
    Experiment("gpu", "edge GPU memory (x each host kind's)", (0.125, 0.25, 0.5, 1.0)),
    Experiment("storage", "edge disk (x an equal share of all bytes)", (0.1, 0.25, 0.5, 1.0)),
    Experiment("load", "arrival rate (offered work / edge compute)", (0.25, 0.5, 1.0, 1.5)),
    Experiment("rho", "utilisation cap rho_max", (0.3, 0.5, 0.7, 0.9)),
)


@dataclass(frozen=True)
class Mode:
    """How long and how often each point is simulated."""

    seeds: int
    warmup_slots: int
    slots: int
    time_limit_s: float


QUICK = Mode(seeds=1, warmup_slots=1, slots=4, time_limit_s=2.0)
FULL = Mode(seeds=3, warmup_slots=2, slots=10, time_limit_s=10.0)


def scenario(measured: list[MeasuredModel], p: Point, seed: int) -> Instance:
    """The instance of one point: `random_instance` with the point's disk and load, GPU
    memory scaled and ρ_max set on every host (a model whose peak VRAM no longer fits a
    host's GPU cannot run there; the cloud's inference times stay those of the full
    instance, so the sweep over GPU memory does not change the cloud)."""
    inst = random_instance(
        measured, int(p.models), N_HOSTS, seed, load=p.load, disk_frac=(p.storage, p.storage)
    )
    hosts = [replace(h, gpu_bytes=int(h.gpu_bytes * p.gpu), rho_max=p.rho) for h in inst.hosts]
    # pairs whose model no longer fits the smaller GPU cannot run there
    perf = {
        (m, e): pf
        for (m, e), pf in inst.perf.items()
        if pf.vram_bytes <= next(h.gpu_bytes for h in hosts if h.id == e)
    }
    current = {k: v for k, v in inst.current.items() if k in perf}
    pool_miss = {k: v for k, v in inst.pool_miss.items() if k in perf}
    # the cloud keeps the speed it had with every pair (its default is a mean over them)
    cloud = replace(inst.cloud, infer_s={m.id: inst.cloud_infer_s(m.id) for m in inst.models})
    return replace(inst, hosts=hosts, perf=perf, current=current, pool_miss=pool_miss, cloud=cloud)


def run_point(
    measured: list[MeasuredModel], p: Point, mode: Mode, overflow: bool
) -> dict[str, dict[str, float]]:
    """Every policy on `mode.seeds` scenarios of one point: mean of each metric."""
    per: dict[str, list[SimResult]] = {name: [] for name in POLICIES}
    for i in range(mode.seeds):
        seed = SEED_BASE + i
        inst = scenario(measured, p, seed)
        tau = inst.slot_s
        n = mode.warmup_slots + mode.slots
        reqs = poisson_requests(
            inst.rates, HISTORY_SLOTS + n, tau, seed, start_s=-HISTORY_SLOTS * tau
        )
        cfg = SimConfig(
            start_s=0.0,
            n_slots=n,
            warmup_slots=mode.warmup_slots,
            seed=seed,
            time_limit_s=mode.time_limit_s,
            overflow=overflow,
        )
        for name in POLICIES:
            with quiet_native_stdout():
                per[name].append(simulate(inst, reqs, name, cfg))
    return {
        name: {
            "total_cost": statistics.fmean(r.cost.total for r in rs),
            "mean_latency_s": statistics.fmean(r.mean_latency_s for r in rs),
            "p95_latency_s": statistics.fmean(r.p95_latency_s for r in rs),
            "cloud_share": statistics.fmean(r.cloud_share for r in rs),
            "switches": statistics.fmean(r.switches for r in rs),
            "bytes_fetched": statistics.fmean(r.bytes_fetched for r in rs),
        }
        for name, rs in per.items()
    }


def plot(exp: Experiment, rows: list[dict[str, dict[str, float]]], path: Path) -> None:
    """Total cost and mean latency per policy against the swept parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in POLICIES:
        style = "--" if name in ("exact", HINDSIGHT) else "-"
        for ax, metric in zip(axes, ("total_cost", "mean_latency_s"), strict=True):
            ys = [row[name][metric] for row in rows]
            ax.plot(exp.values, ys, style, marker="o", label=name)
    for ax, title in zip(axes, ("total cost (s-equivalent)", "mean latency (s)"), strict=True):
        ax.set_xlabel(exp.label)
        ax.set_title(title)
        ys = [y for line in ax.get_lines() for y in line.get_ydata()]
        if min(ys) > 0 and max(ys) / min(ys) > 20:  # a meltdown would flatten the others
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cheapest(row: dict[str, dict[str, float]], names: tuple[str, ...]) -> str:
    """The policy of `names` with the lowest total cost in one point (ties: all of them)."""
    low = min(row[n]["total_cost"] for n in names)
    return "=".join(n for n in names if row[n]["total_cost"] <= low * (1 + 1e-9))


def table(exp: Experiment, rows: list[dict[str, dict[str, float]]]) -> str:
    """Markdown: total cost (mean latency) per policy and value; mlds vs the others."""
    head = f"| policy | {' | '.join(f'{exp.key}={v:g}' for v in exp.values)} |"
    lines = [head, "|---|" + "---:|" * len(exp.values)]
    for name in POLICIES:
        cells = [
            f"{row[name]['total_cost']:,.0f} ({row[name]['mean_latency_s']:.2f} s)" for row in rows
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    gaps = []
    for ref in ("lru", HINDSIGHT):
        cells = [
            f"{100 * (r['mlds']['total_cost'] / r[ref]['total_cost'] - 1):+.1f}%" for r in rows
        ]
        gaps.append(f"| mlds vs {ref} | {' | '.join(cells)} |")
    best = [cheapest(row, NON_EXACT) for row in rows]
    gaps.append(f"| cheapest non-exact | {' | '.join(best)} |")
    return "\n".join(lines + gaps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="about 1.5 minutes on 2 cores")
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--no-overflow", action="store_true", help="no rerouting to the cloud")
    ap.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    ap.add_argument("--img-dir", type=Path, default=REPO / "docs/img")
    ap.add_argument("--measured", type=Path, default=DEFAULT_MEASURED)
    ap.add_argument("--from-json", type=Path, help="redraw plots and tables from an earlier --json")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    mode = QUICK if args.quick else FULL
    overflow = not args.no_overflow
    saved = json.loads(args.from_json.read_text()) if args.from_json else None
    if saved is not None:
        mode = QUICK if saved["mode"] == "quick" else FULL
        overflow = bool(saved["overflow"])
        args.quick = saved["mode"] == "quick"
    measured = load_measured(args.measured) if saved is None else []
    cache: dict[Point, dict[str, dict[str, float]]] = {}
    results: dict[str, list[dict[str, dict[str, float]]]] = {}
    sections = []
    tag = "" if overflow else "-no-overflow"
    for exp in EXPERIMENTS:
        rows = []
        for i, v in enumerate(exp.values):
            p = replace(DEFAULTS, **{exp.key: v})
            if saved is not None:
                cache[p] = saved["experiments"][exp.key]["points"][i]
            elif p not in cache:
                cache[p] = run_point(measured, p, mode, overflow)
            rows.append(cache[p])
            costs = ", ".join(f"{n} {rows[-1][n]['total_cost']:,.0f}" for n in POLICIES)
            print(f"{exp.key}={v:g}: {costs}", flush=True)
        results[exp.key] = rows
        img = args.img_dir / f"exp_{exp.key}{tag}.png"
        plot(exp, rows, img)
        rel = img.relative_to(args.doc.parent) if img.is_relative_to(args.doc.parent) else img
        sections.append(f"#### {exp.label}\n\n{table(exp, rows)}\n\n![{exp.key}]({rel})")
    elapsed = time.perf_counter() - t0 if saved is None else float(saved["elapsed_s"])
    mode_name = "quick" if args.quick else "full"
    header = (
        f"Mode `{mode_name}` ({mode.seeds} seed(s) per point, {mode.warmup_slots} warm-up + "
        f"{mode.slots} measured slots of 60 s, overflow {'on' if overflow else 'off'}); "
        f"defaults {DEFAULTS}; {elapsed:.0f} s on this machine. Cells: total cost "
        "(mean latency)."
    )
    update_doc(args.doc, f"experiments{tag}", header + "\n\n" + "\n\n".join(sections))
    print(f"updated {args.doc}; plots in {args.img_dir}; total {elapsed:.1f} s")
    if args.json:
        doc = {
            "mode": mode_name,
            "overflow": overflow,
            "defaults": vars(DEFAULTS),
            "experiments": {
                exp.key: {"values": list(exp.values), "points": results[exp.key]}
                for exp in EXPERIMENTS
            },
            "elapsed_s": elapsed,
        }
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
