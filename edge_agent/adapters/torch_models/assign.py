"""Putting checkpoint tensors into a model built on `meta`: `assign_tensors` (a linear
`load_state_dict(..., assign=True)`) and `assign_checkpoint`, which also re-ties weights,
moves computed buffers to the device and verifies that nothing was left out on either side
(a mismatch raises `UnsupportedByDirectLoader`, so the library loader gets its turn)."""

from __future__ import annotations

import re

import torch
from torch import nn

from edge_agent.adapters.fastload import UnsupportedByDirectLoader


def assign_tensors(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str] | None:
    """What `module.load_state_dict(state, strict=False, assign=True)` does, in one pass over
    `state`: parameters become `nn.Parameter`s of the given tensors (keeping `requires_grad`),
    persistent buffers are replaced, shapes must match. Returns the keys nothing took.

    `load_state_dict` walks every module and filters the whole state dict for each (quadratic:
    a third of a pipeline's load from pinned memory); this is linear. Returns None, doing
    nothing, when any module customises loading (its own `_load_from_state_dict`, load
    hooks, extra state): the caller then uses `load_state_dict`, which honours them.
    """
    base_load = nn.Module._load_from_state_dict
    base_extra = nn.Module.set_extra_state
    modules = dict(module.named_modules(remove_duplicate=False))
    for m in modules.values():
        cls = type(m)
        if (
            cls._load_from_state_dict is not base_load
            or cls.set_extra_state is not base_extra
            or m._load_state_dict_pre_hooks
            or m._load_state_dict_post_hooks
        ):
            return None
    # Check every shape before changing anything, as load_state_dict does.
    plan: list[tuple[nn.Module, str, torch.Tensor, bool]] = []
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, t in state.items():
        prefix, _, name = key.rpartition(".")
        m = modules.get(prefix)
        old: torch.Tensor | None = None
        is_param = False
        if m is not None and m._parameters.get(name) is not None:
            old, is_param = m._parameters[name], True
        elif m is not None and name not in m._non_persistent_buffers_set:
            old = m._buffers.get(name)
        if m is None or old is None:
            unexpected.append(key)
        elif old.shape != t.shape:
            mismatched.append(f"{key}: checkpoint {tuple(t.shape)}, model {tuple(old.shape)}")
        else:
            plan.append((m, name, t, is_param))
    if mismatched:
        raise RuntimeError(f"size mismatch: {'; '.join(mismatched[:5])}")
    for m, name, t, is_param in plan:
        if is_param:
            old_param = m._parameters[name]
            assert old_param is not None
            m._parameters[name] = nn.Parameter(t, requires_grad=old_param.requires_grad)
        else:
            m._buffers[name] = t
    return unexpected


def assign_checkpoint(
    module: nn.Module, state: dict[str, torch.Tensor], what: str, device: torch.device
) -> None:
    """Assign `state` as `module`'s parameters, re-tie, move buffers to `device`, and
    verify; `what` names the module in errors."""
    keys = assign_tensors(module, state)
    if keys is None:  # some module customises loading: let torch run its hooks
        keys = list(module.load_state_dict(state, strict=False, assign=True).unexpected_keys)
    unexpected = _really_unexpected(module, keys)
    if unexpected:
        more = f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
        raise UnsupportedByDirectLoader(
            f"{what}: checkpoint tensors the model does not use: {unexpected[:5]}{more}"
        )
    tie = getattr(module, "tie_weights", None)
    if callable(tie):
        tie()
    # One walk over the modules (each walk of a pipeline's UNet costs milliseconds):
    # computed buffers to the device, and nothing may be left on meta.
    on_meta: list[str] = []
    for prefix, sub in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, buf in list(sub._buffers.items()):
            if buf is None:
                continue
            if buf.is_meta:
                on_meta.append(dot + name)
            elif buf.device != device:
                sub._buffers[name] = buf.to(device)
        on_meta += [dot + n for n, p in sub._parameters.items() if p is not None and p.is_meta]
    if on_meta:
        raise UnsupportedByDirectLoader(
            f"{what}: not in the checkpoint (left on meta): {on_meta[:5]}"
        )
    module.eval()


def _really_unexpected(module: nn.Module, keys: list[str]) -> list[str]:
    """Unexpected keys minus the ones the libraries ignore too: non-persistent buffers
    saved by older versions (CLIP's `position_ids`) and the class's ignore patterns."""
    if not keys:
        return []
    buffers = {n for n, _ in module.named_buffers()}
    patterns = list(getattr(module, "_keys_to_ignore_on_load_unexpected", None) or [])
    return [k for k in keys if k not in buffers and not any(re.search(p, k) for p in patterns)]
