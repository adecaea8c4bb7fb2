#!/usr/bin/env bash
# The preload benchmark (issue 7) on a lent CUDA host (H100/H200), in well under 8 minutes.
#
# 1. Here, where PyPI is reachable, once: put the wheels the device image lacks (diffusers,
#    pydantic, fastapi... at this venv's versions, for its Python 3.12) into .whl/, which
#    .git/info/exclude then ignores:
#        bash bench/gpu_preload.sh prepare
# 2. With the device tool, from the repository root, carrying the wheels:
#        run(command="bash bench/gpu_preload.sh run", carry=[".whl"], timeout_s=540)
#    It prints the GPU and versions, runs the loader's GPU tests (bit identity on CUDA, no
#    pinned or device memory kept over 100 cycles), builds random-weight models of real
#    architectures on the GPU host's disk (no downloads: an SDXL pipeline in fp16, ~6.9 GB,
#    and a Llama-3.2-1B-shaped LLM in bf16, ~2.5 GB), then runs bench/preload.py on cuda:
#    library loader against ours, cold / warm / pinned tier, with the host's measured
#    limits and the issue's targets. Everything lands in $OUT (env.txt, gpu-tests.log,
#    preload.log, preload.json).
#
# The non-CUDA parts run here at tiny size:  SIZE=tiny DEVICE=cpu bash bench/gpu_preload.sh run
# Knobs: SIZE (full|tiny), DEVICE (cuda|cpu), STORE (model folder), REPEAT, THREADS,
# CHUNK_MIB, PYTHON, OUT, WHEEL_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
WHEEL_DIR=${WHEEL_DIR:-.whl}
# What the device image lacks, of what the agent's adapters and the tests import.
WHEELS=(diffusers pydantic pydantic_core annotated-types typing-inspection typing_extensions
        pydantic-settings python-dotenv fastapi starlette annotated-doc uvicorn)

if [[ $MODE == prepare ]]; then
    PY=${PYTHON:-.venv/bin/python}
    mkdir -p "$WHEEL_DIR"
    if [[ $WHEEL_DIR == .whl ]] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
        mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude
    fi
    # This venv's versions, so the device runs what the tests here ran.
    mapfile -t PINS < <("$PY" - "${WHEELS[@]}" <<'EOF'
import importlib.metadata as md, sys
for name in sys.argv[1:]:
    print(f"{name}=={md.version(name)}")
EOF
)
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$WHEEL_DIR" "${PINS[@]}"
    ls -la "$WHEEL_DIR"
    du -sh "$WHEEL_DIR"
    exit 0
fi

[[ $MODE == run ]] || { echo "usage: $0 [prepare|run]" >&2; exit 2; }
OUT=${OUT:-/tmp/gpu-preload-out}
mkdir -p "$OUT"
if [[ -x .venv/bin/python && -z ${PYTHON:-} ]]; then
    PY=.venv/bin/python  # this checkout's venv (a CPU try-out)
else
    PY=${PYTHON:-python3}
fi
if compgen -G "$WHEEL_DIR/*.whl" >/dev/null && [[ $PY == python3 ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEEL_DIR"/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
SIZE=${SIZE:-full}
DEVICE=${DEVICE:-cuda}
STORE=${STORE:-$PWD/.genedge/gpu-bench-store}
REPEAT=${REPEAT:-2}
EXTRA=()
[[ -n ${THREADS:-} ]] && EXTRA+=(--threads "$THREADS")
[[ -n ${CHUNK_MIB:-} ]] && EXTRA+=(--chunk-mib "$CHUNK_MIB")
PROBE_MIB=1024
[[ $SIZE == tiny ]] && PROBE_MIB=64

{
    date
    nvidia-smi || echo "no nvidia-smi"
    "$PY" -c 'import sys, torch, diffusers, transformers, safetensors, pydantic
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      "diffusers", diffusers.__version__, "transformers", transformers.__version__,
      "safetensors", safetensors.__version__, "pydantic", pydantic.__version__)'
    nproc
    free -g
    df -h "$PWD" "$(dirname "$STORE")" 2>/dev/null || true
    mount | grep -E " / | $(df --output=target "$PWD" | tail -1) " || true
} 2>&1 | tee "$OUT/env.txt"

# 1. Correctness on CUDA (tests marked gpu; skipped without a GPU). Bounded: the benchmark
#    below is the point of the run.
if [[ $DEVICE == cuda* ]]; then
    timeout 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu \
        tests/test_fastload.py tests/test_torch_models.py 2>&1 | tee "$OUT/gpu-tests.log" || true
fi

# 2. The benchmark: builds the models once (into $STORE), then measures them.
timeout 420 "$PY" bench/preload.py --store "$STORE" --synthetic sdxl,llama-1b \
    --synthetic-size "$SIZE" --device "$DEVICE" --repeat "$REPEAT" --probe-mib "$PROBE_MIB" \
    "${EXTRA[@]}" --json "$OUT/preload.json" 2>&1 | tee "$OUT/preload.log"
