"""Where a load's checkpoint tensors come from: a `TensorSource` hands out the tensors of
each weight file, on the device in the target dtype. It is created when the load starts (a
pipelined source starts its transfer at once, so it overlaps with building the skeletons);
`finish` waits for the data. `BlockSource` is the pipelined reader's; the safetensors
reader's is `safetensors_reader.SafetensorsSource`."""

from __future__ import annotations

import torch

from edge_agent.adapters.fastload import BlockLayout, Transfer
from edge_agent.errors import CorruptWeights


class TensorSource:
    """The checkpoint tensors of one load, by weight file, on the device in the target
    dtype. Created when the load starts (a pipelined source starts its transfer at once, so
    it overlaps with building the skeletons); `finish` waits for the data."""

    def state(self, rels: list[str]) -> dict[str, torch.Tensor]:  # overridden
        """The tensors of weight files `rels`; their data may still be arriving until
        `finish()` (views of a block being filled)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Wait until every tensor handed out holds its data (raises the transfer's error)."""

    def close(self) -> None:
        """Stop whatever is still running and drop references (idempotent)."""


class BlockSource(TensorSource):
    """Views of one device block filled by a `Transfer` (the pipelined reader)."""

    def __init__(self, layout: BlockLayout, transfer: Transfer, cast: torch.dtype | None):
        self.layout = layout
        self._transfer: Transfer | None = transfer
        self._block: torch.Tensor | None = None
        # A cast makes new tensors: then every tensor is copied out of the block, so the
        # block is freed when the load ends instead of being kept alive by a few views.
        self._convert = cast is not None and any(
            t.dtype.is_floating_point and t.dtype != cast for f in layout.files for t in f.tensors
        )
        self._cast = cast

    def _wait(self) -> torch.Tensor:
        if self._block is None:
            if self._transfer is None:
                raise RuntimeError("tensor source already closed")
            self._block = self._transfer.wait()
            self._transfer = None
        return self._block

    def state(self, rels: list[str]) -> dict[str, torch.Tensor]:
        # Views can be made (and assigned) before the data is there; a cast reads the data.
        block = self._wait() if self._convert else self._pending_block()
        out: dict[str, torch.Tensor] = {}
        for rel in rels:
            for key, t in self.layout.views(block, rel).items():
                if key in out:
                    raise CorruptWeights(f"{rel}: tensor {key!r} is also in another shard")
                out[key] = t
        if self._convert:
            cast = self._cast
            out = {
                k: t.to(cast) if t.is_floating_point() and t.dtype != cast else t.clone()
                for k, t in out.items()
            }
        return out

    def _pending_block(self) -> torch.Tensor:
        if self._block is not None:
            return self._block
        if self._transfer is None or self._transfer.block is None:
            raise RuntimeError("tensor source already closed")
        return self._transfer.block

    def finish(self) -> None:
        self._wait()

    def close(self) -> None:
        transfer, self._transfer = self._transfer, None
        if transfer is not None:
            transfer.cancel()
        self._block = None
