"""Torch implementations of the agent's ports (`edge_agent.core.ports`): read checkpoints into
host RAM, load them onto the compute device, generate text and images, and free the memory.

Two loaders (`loader.TorchModelLoader`):

- **direct** (the default, `load_direct`; reported as `loader="genedge"`, the name stored
  profiles use): for every torch module of the model (the transformers model, or each
  module component of a diffusers pipeline) build the skeleton from its config with
  parameters on the `meta` device and buffers real (so non-persistent buffers such as
  rotary `inv_freq` are computed as usual), then *assign* the checkpoint tensors, already on
  the device, as the parameters (`assign.assign_tensors`, what `load_state_dict(...,
  assign=True)` does in one linear pass): no random initialisation, no second copy. Tied
  weights are re-tied, and the result is verified: no parameter or buffer left on `meta`,
  no checkpoint tensor left unused. Where the tensors come from is the *reader*
  (`reader=`):
  - `pipelined` (the default, `edge_agent.adapters.fastload`): every weight file of the
    model read with large parallel reads into *one* device block (through reusable pinned
    staging buffers on CUDA), started before the skeletons are built so the two overlap;
    the tensors are views of the block, assigned while the copies may still run. The
    `cached` level is a `BlockHostCopy`: the same block in (pinned) host RAM, so loading
    from it is one host-to-device copy; it also keeps the model's skeletons, tokenizers and
    schedulers prepared for the next load (rebuilt in the background after each), so that
    load is little more than the copy.
  - `safetensors` (`safetensors_reader`, which says why it is kept): `safetensors.load_file`
    per file into host memory, then one device copy per tensor; its `cached` level is a
    `SafetensorsHostCopy`.
- **library** (`library`): the libraries' own `from_pretrained`, then `.to(device)`. The
  profiler uses it as a yardstick, and `load` falls back to it (saying why in
  `LoadReport.notes`) when the direct loader cannot handle a folder (an unknown component
  class, `.bin` weights, checkpoint keys that need the library's renaming...). Corrupt or
  missing weight files never fall back: they raise `CorruptWeights` / `BadModelFolder`
  naming the file.

Load times count only finished work: on CUDA the device is synchronised before the clock
stops. Generation runs under `torch.inference_mode()`; sampling uses a per-request
`torch.Generator`, so a seed reproduces its output even while other requests run in other
threads, and no lock is shared between models.

Modules: `loader` (the loader), `skeletons` and `assign` (building on `meta`, assigning the
weights), `sources` and `safetensors_reader` (where a load's tensors come from),
`host_copies` (the `cached` level), `library` (`from_pretrained`), `text` and `image` (the
loaded models), `loaded` and `tensors` (what they share).
"""

from edge_agent.adapters.fastload import UnsupportedByDirectLoader
from edge_agent.adapters.torch_models.assign import assign_tensors
from edge_agent.adapters.torch_models.host_copies import BlockHostCopy, SafetensorsHostCopy
from edge_agent.adapters.torch_models.image import ImagePipelineModel
from edge_agent.adapters.torch_models.loaded import dtype_name, param_count
from edge_agent.adapters.torch_models.loader import (
    READERS,
    TorchModelLoader,
    quiet_library_progress,
)
from edge_agent.adapters.torch_models.text import TextModel

__all__ = [
    "READERS",
    "BlockHostCopy",
    "ImagePipelineModel",
    "SafetensorsHostCopy",
    "TextModel",
    "TorchModelLoader",
    "UnsupportedByDirectLoader",
    "assign_tensors",
    "dtype_name",
    "param_count",
    "quiet_library_progress",
]
