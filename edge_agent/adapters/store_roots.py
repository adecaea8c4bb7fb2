"""Several store roots read as one store: folders of model folders and Hugging Face caches.

An agent serves what its store roots hold, in order: `EDGE_STORE_DIR`, then
`EDGE_EXTRA_STORE_DIRS`, then every `EDGE_HF_CACHE` (see `edge_agent.app.store_roots`). When two
roots hold the same model id, the first root wins and the later copy is reported as a bad
folder naming the one served: a rule a user can predict and fix by reordering roots or setting
an `id` in `genedge.json`. Within one root, two folders with one id are both bad (as ever:
neither is obviously the one meant).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edge_agent.adapters.hub_cache import scan_hub_cache
from edge_agent.adapters.store import scan_store
from genedge.contract import BadModelFolder as BadModelFolderInfo
from genedge.contract import ModelManifest

RootLayout = Literal["folders", "hf_cache"]


@dataclass(frozen=True)
class StoreRoot:
    """One place models are read from. `revisions` pins repos of a hub cache
    (`{"org/name": "v1.0"}`); a folder store has none."""

    path: Path
    layout: RootLayout = "folders"
    revisions: Mapping[str, str] = field(default_factory=dict)


def scan_root(root: StoreRoot) -> tuple[list[ModelManifest], list[BadModelFolderInfo]]:
    """The models of one root and its bad folders; never raises."""
    if root.layout == "hf_cache":
        return scan_hub_cache(root.path, root.revisions)
    return scan_store(root.path)


def scan_roots(
    roots: Sequence[StoreRoot],
) -> tuple[list[ModelManifest], list[BadModelFolderInfo]]:
    """Every root in order; a model id already served by an earlier root makes the later
    folder bad. Returns the models sorted by id and the bad folders in root order (each
    root's sorted by path); never raises."""
    served: dict[str, ModelManifest] = {}
    bad: list[BadModelFolderInfo] = []
    for root in roots:
        models, root_bad = scan_root(root)
        bad.extend(root_bad)
        for m in models:
            first = served.get(m.id)
            if first is None:
                served[m.id] = m
                continue
            reason = (
                f"duplicate model id {m.id!r}: served from {first.path} (an earlier store "
                'root wins); set another "id" in genedge.json to serve both'
            )
            bad.append(BadModelFolderInfo(path=m.path, reason=reason))
    return sorted(served.values(), key=lambda m: m.id), bad
