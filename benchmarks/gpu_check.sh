#!/usr/bin/env bash
# The project's one-call GPU check: full-size SD2.1 / SDXL / SD3 denoisers with random weights,
# serial vs batched drafts on one GPU, plus the synthetic multi-process speedup when several
# GPUs are present. Lent GPU machines have torch, transformers and lightning but no diffusers
# and no network: carry wheels in .whl/ (see benchmarks/README.md) and they are installed first.
#
#   bash benchmarks/gpu_check.sh            # writes $OUT (or outputs/gpu) JSON + logs
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-outputs/gpu}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
timeout 420 python3 benchmarks/single_device.py --random-weights --device cuda --dtype bf16 \
  --drafts 2 4 --repeats 2 --json "$out/single_device.json" 2>&1 | tee "$out/single_device.log"
gpus=$(nvidia-smi -L | wc -l)
if [ "$gpus" -gt 1 ]; then
  timeout 150 python3 -m lightning.fabric.cli run --accelerator cuda --devices "$gpus" \
    --strategy ddp benchmarks/speedup.py --eval-ms 50 --steps 50 --json "$out/speedup.json" \
    2>&1 | tee "$out/speedup.log"
fi
