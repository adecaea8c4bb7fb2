"""The safetensors reader: each weight file read whole with `safetensors` into host memory,
then one device copy per tensor. The pipelined block reader (`edge_agent.adapters.fastload`)
does the same job faster and is the default; this older reader stays because three things
still use it:

- the agent setting `EDGE_WEIGHTS_READER=safetensors` (`TorchModelLoader(reader=
  "safetensors")`) selects it: the operator's way around the block reader (its `preadv`
  reads and pinned staging buffers) on a host where that misbehaves, without losing the
  direct loader;
- `TorchModelLoader.read_to_host` falls back to it when the block reader refuses a model's
  layout (`plan_layout` raises `UnsupportedByDirectLoader`, e.g. on a big-endian host), so
  the `cached` level still exists there; its host copy is a `SafetensorsHostCopy`;
- the tests load every tiny model with both readers and require bit-identical tensors: an
  independent reference for the block reader's layouts and views.

Dropping it means deleting this module, `SafetensorsHostCopy`, the `safetensors` value of
the setting and the loader's `reader` argument.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edge_agent.adapters.fastload import UnsupportedByDirectLoader
from edge_agent.adapters.torch_models.host_copies import SafetensorsHostCopy
from edge_agent.adapters.torch_models.sources import TensorSource
from edge_agent.errors import BadModelFolder, CorruptWeights
from genedge.contract import ModelManifest

DESCRIPTION = "safetensors reader: load_file per weight file, one device copy per tensor"


def read_safetensors(root: Path, rel: str) -> dict[str, torch.Tensor]:
    """Every tensor of `root/rel` in (owned, not memory-mapped) CPU memory.

    A missing file raises BadModelFolder; a truncated or garbled one CorruptWeights, both
    naming `rel`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = root / rel
    if not path.is_file():
        raise BadModelFolder(f"weight file {rel} is missing")
    try:
        try:
            # `pread` reads the bytes into process memory now; the default `mmap` backend
            # would leave them to page faults during the first generation.
            return load_file(path, device="cpu", backend="pread")
        except TypeError:  # safetensors < 0.8 has no `backend`: copy out of the mapping
            return {k: v.clone() for k, v in load_file(path, device="cpu").items()}
    except SafetensorError as exc:
        raise CorruptWeights(f"{rel}: unreadable safetensors file ({exc})") from None
    except FileNotFoundError:
        raise BadModelFolder(f"weight file {rel} is missing") from None
    except OSError as exc:
        raise CorruptWeights(f"{rel}: cannot be read ({exc})") from None


def read_to_host(manifest: ModelManifest, *, pinned: bool) -> SafetensorsHostCopy:
    """Every weight file of `manifest` in host RAM, tensors per file (page-locked when
    `pinned`)."""
    root = Path(manifest.path)
    files: dict[str, dict[str, torch.Tensor]] = {}
    for rel in manifest.weight_files:
        tensors = read_safetensors(root, rel)
        if pinned:
            tensors = {k: v.pin_memory() for k, v in tensors.items()}
        files[rel] = tensors
    return SafetensorsHostCopy(manifest.id, files, pinned)


class SafetensorsSource(TensorSource):
    """Tensors read per file with `safetensors` (or taken from a `SafetensorsHostCopy`),
    each copied to the device on its own."""

    def __init__(
        self,
        root: Path,
        held: SafetensorsHostCopy | None,
        notes: list[str],
        *,
        device: torch.device,
        cast: torch.dtype | None,
    ):
        self._root = root
        self._held = held
        self._notes = notes
        self._dev = device
        self._cast = cast

    def state(self, rels: list[str]) -> dict[str, torch.Tensor]:
        """The checkpoint tensors of `rels`, on the device and in the target dtype; a file
        the host copy lacks is read from disk (and a note says so)."""
        for rel in rels:
            if not rel.endswith(".safetensors"):
                raise UnsupportedByDirectLoader(f"{rel} is not a safetensors file")
        out: dict[str, torch.Tensor] = {}
        for rel in rels:
            held = self._held.tensors(rel) if self._held is not None else None
            if held is None:
                if self._held is not None:
                    self._notes.append(f"{rel} was not in the host copy: read from disk")
                held = read_safetensors(self._root, rel)
            for key, t in held.items():
                if key in out:
                    raise CorruptWeights(f"{rel}: tensor {key!r} is also in another shard")
                out[key] = self._to_device(t)
        return out

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self._cast if self._cast is not None and t.is_floating_point() else t.dtype
        if self._dev.type == "cpu":
            # On a CPU device the host copy already is device memory: the model shares its
            # tensors (inference never writes weights). Reference counting keeps them alive
            # while the model uses them, whatever happens to the host copy.
            return t.to(dtype=dtype)
        return t.to(self._dev, dtype=dtype, non_blocking=t.is_pinned())
