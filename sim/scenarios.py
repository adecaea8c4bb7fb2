"""Random placement instances built from measured models (benchmarks, tests, what-if).

The measured models come from the H200 characterisation (`../shared/measured/`) or from
`ModelProfile` JSON documents (`profiles/`). `random_instance` makes many model variants
from them (sizes and times perturbed by up to ±30%), Zipf-like request rates, and a mix
of host kinds whose disk, RAM and GPU memory make the edge contended.

Assumptions (documented, not measured):
- L^ram, the preload from the pinned host-RAM tier, is the checkpoint bytes over the
  measured pinned host→GPU bandwidth plus `RAM_LOAD_OVERHEAD_S` for building the module;
  profiles written by the edge agent carry their own measured `load_ram_s`.
- Smaller GPUs run inference slower by a fixed factor per kind (`HOST_KINDS`: H100
  1.25×, L40S 1.6×, L4 2.2×), with the same bytes of VRAM; PCIe Gen4 hosts load from RAM
  at half the Gen5 rate; each host's disk loads 0.85-1.2× as fast as the H200's.
- The cloud takes the cost model's default: 1.5 × the model's mean edge inference time
  (shared, queued GPUs) behind an 80 ms WAN round trip.
- π (pool miss probability) is uniform in [0.4, 1] per model and host; backhaul is 1, 5
  or 10 Gbit/s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.core.placement import CloudSpec, HostSpec, Instance, ModelSpec, Perf, Prices

RAM_LOAD_OVERHEAD_S = 0.1


@dataclass(frozen=True)
class MeasuredModel:
    """One measured model on the reference host (bytes, seconds)."""

    id: str
    kind: str
    storage_bytes: int
    vram_bytes: int
    load_disk_s: float
    load_ram_s: float
    infer_s: float


@dataclass(frozen=True)
class HostKind:
    """A GPU host kind: usable GPU bytes, inference slowdown vs the H200, RAM-load factor."""

    name: str
    gpu_bytes: int
    infer_factor: float
    ram_load_factor: float
    weight: float


HOST_KINDS: tuple[HostKind, ...] = (
    HostKind("h200", 135_000_000_000, 1.0, 1.0, 0.3),
    HostKind("h100", 76_000_000_000, 1.25, 1.0, 0.3),
    HostKind("l40s", 44_000_000_000, 1.6, 2.0, 0.2),
    HostKind("l4", 22_000_000_000, 2.2, 2.0, 0.2),
)


def default_measured_path() -> Path:
    """`../shared/measured/h200-characterisation.json` next to the repository root."""
    return Path(__file__).resolve().parents[2].parent / "shared/measured/h200-characterisation.json"


def load_measured(path: str | Path) -> list[MeasuredModel]:
    """Models of a characterisation JSON (`h200-characterisation.json`)."""
    doc = json.loads(Path(path).read_text())
    pinned = float(doc["bandwidth"]["h2d_pinned_GBps"]) * 1e9
    out = []
    for name, m in doc["models"].items():
        size = int(m["storage_bytes"])
        out.append(
            MeasuredModel(
                id=name,
                kind="image" if name.startswith("sd") else "text",
                storage_bytes=size,
                vram_bytes=int(m.get("vram_peak_bytes", m["vram_resident_bytes"])),
                load_disk_s=float(m["lib_cold_s"]),
                load_ram_s=size / pinned + RAM_LOAD_OVERHEAD_S,
                infer_s=float(m["inference"]["seconds"]),
            )
        )
    return out


def load_profiles(directory: str | Path) -> list[MeasuredModel]:
    """Models of the `ModelProfile` JSON documents under a directory (recursively)."""
    out = []
    for p in sorted(Path(directory).rglob("*.json")):
        try:
            doc = json.loads(p.read_text())
            out.append(
                MeasuredModel(
                    id=str(doc["model_id"]),
                    kind=str(doc.get("kind", "text")),
                    storage_bytes=int(doc["storage_bytes"]),
                    vram_bytes=int(doc["peak_bytes"]),
                    load_disk_s=float(doc["load_cold_s"]),
                    load_ram_s=float(doc["load_ram_s"]),
                    infer_s=float(doc["generation_s"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue  # not a profile document
    return out


def random_instance(
    measured: Sequence[MeasuredModel],
    n_models: int,
    n_hosts: int,
    seed: int,
    *,
    load: float | None = None,
    zipf: float | None = None,
    prices: Prices | None = None,
    slot_s: float = 60.0,
    current_frac: float = 0.5,
    disk_frac: tuple[float, float] = (0.5, 1.0),
    ram_frac: tuple[float, float] = (0.05, 0.2),
) -> Instance:
    """A random contended instance: `n_models` variants of the measured models on
    `n_hosts` hosts of mixed kinds.

    Rates are Zipf-like (exponent `zipf`, default uniform in [0.8, 1.2]) over a random
    order, about 10% of models idle, scaled so that the total inference work (at H200
    speed) is `load` (default uniform in [0.5, 1.5]) times the edge's compute capacity.
    Each host's disk holds `disk_frac` (uniform in the range) of an equal share of all
    models' bytes, its host RAM for the cached tier `ram_frac`. With probability
    `current_frac` a model is currently on one random host (stored 50%, cached 30%,
    resident 20%), which prices transitions. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    if not measured:
        raise ValueError("no measured models")
    load = float(rng.uniform(0.5, 1.5)) if load is None else load
    zipf = float(rng.uniform(0.8, 1.2)) if zipf is None else zipf

    models: list[ModelSpec] = []
    base: list[tuple[MeasuredModel, float, float, float]] = []
    for i in range(n_models):
        src = measured[int(rng.integers(len(measured)))]
        size_f, time_f, infer_f = rng.uniform(0.7, 1.3, size=3)
        mid = f"{src.id}-v{i}"
        models.append(ModelSpec(mid, src.kind, int(src.storage_bytes * size_f)))
        base.append((src, float(size_f), float(time_f), float(infer_f)))
    total_bytes = sum(m.storage_bytes for m in models)

    weights = np.array([k.weight for k in HOST_KINDS])
    kinds = rng.choice(len(HOST_KINDS), size=n_hosts, p=weights / weights.sum())
    hosts: list[HostSpec] = []
    host_kind: list[HostKind] = []
    for j in range(n_hosts):
        kind = HOST_KINDS[int(kinds[j])]
        share = total_bytes / n_hosts
        hosts.append(
            HostSpec(
                id=f"{kind.name}-{j}",
                disk_bytes=int(share * rng.uniform(*disk_frac)),
                ram_bytes=int(share * rng.uniform(*ram_frac)),
                gpu_bytes=kind.gpu_bytes,
                rho_max=0.9,
                backhaul_Bps=float(rng.choice([0.125e9, 0.625e9, 1.25e9])),
            )
        )
        host_kind.append(kind)

    perf: dict[tuple[str, str], Perf] = {}
    pool_miss: dict[tuple[str, str], float] = {}
    ref_infer: dict[str, float] = {}
    for m, (src, size_f, time_f, infer_f) in zip(models, base, strict=True):
        ref_infer[m.id] = src.infer_s * infer_f
        vram = int(src.vram_bytes * size_f)
        for h, kind in zip(hosts, host_kind, strict=True):
            if vram > h.gpu_bytes:
                continue
            disk_f = float(rng.uniform(0.85, 1.2))
            perf[(m.id, h.id)] = Perf(
                vram_bytes=vram,
                load_disk_s=src.load_disk_s * time_f * disk_f,
                load_ram_s=src.load_ram_s * size_f * kind.ram_load_factor,
                infer_s=ref_infer[m.id] * kind.infer_factor,
            )
            pool_miss[(m.id, h.id)] = float(rng.uniform(0.4, 1.0))

    order = rng.permutation(n_models)
    popularity = 1.0 / np.arange(1, n_models + 1) ** zipf
    shares = np.empty(n_models)
    shares[order] = popularity / popularity.sum()
    idle = rng.random(n_models) < 0.1
    shares[idle] = 0.0
    work_per_req = float(np.dot(shares, [ref_infer[m.id] for m in models]))
    capacity = sum(h.rho_max for h in hosts)  # compute-seconds per second
    total_rate = load * capacity / max(work_per_req, 1e-9)
    rates = {m.id: float(total_rate * shares[i]) for i, m in enumerate(models)}

    current: dict[tuple[str, str], str] = {}
    for m in models:
        where = [h.id for h in hosts if (m.id, h.id) in perf]
        if where and rng.random() < current_frac:
            e = where[int(rng.integers(len(where)))]
            current[(m.id, e)] = str(
                rng.choice(["stored", "cached", "resident"], p=[0.5, 0.3, 0.2])
            )

    return Instance(
        hosts=hosts,
        models=models,
        perf=perf,
        rates=rates,
        slot_s=slot_s,
        cloud=CloudSpec(wan_rtt_s=0.08),
        prices=prices or Prices(),
        pool_miss=pool_miss,
        current=current,
    )
