#!/usr/bin/env bash
# The GPU check: what only a device can show, on ONE GPU (world size 1), in <= 8 minutes on an
# H100 (scripts/gpu_check.py has the list: TE specs, megatron-core DDP wrap, RoPE placement,
# a bf16 training step, evaluation on the GPU box, tokens/s and MFU of a ~1.2B LLaVA at
# micro-batch 8).
#
#   scripts/gpu_check.sh [--out DIR]     on a GPU machine (install with the `te` extra)
#   scripts/gpu_check.sh --cpu           the same checks with tiny sizes over gloo (no GPU)
#
#   scripts/gpu_check.sh --only speed    rerun some phases (environment,model,speed,train,parity)
#
# Prints PASS/FAIL/SKIP per check, writes DIR/gpu_check.json (default: $OUT, else ./gpu-check)
# after each phase and exits with the number of failed checks (a SKIP, e.g. no
# transformer-engine, is not one). Environment: PYTHON (default: python3).
#
# A GPU machine without a package index (its python has torch, transformers, click, jinja2):
#   here:  pip wheel --no-deps -w whl . && pip download --no-deps --only-binary=:all:
#          --python-version 3.12 -d whl megatron-core==0.16.1
#   there: pip install --no-deps --no-index --target /tmp/site whl/*.whl
#          cd /tmp && PYTHONPATH=/tmp/site bash CHECKOUT/scripts/gpu_check.sh
#   (run it outside the checkout: `python -m` puts the working directory first on sys.path,
#   and a checkout's mimo_toolkit lacks the recipes and templates that the wheel maps in).
# Multi-GPU paths (NCCL p2p, TP over NVLink) need more than one GPU and are not checked here.
set -euo pipefail

PYTHON=${PYTHON:-python3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if ! "$PYTHON" -c 'import mimo_toolkit, torch, megatron.core' 2>/dev/null; then
  echo "gpu_check: $PYTHON cannot import mimo_toolkit, torch and megatron.core; install the toolkit first" >&2
  echo "  (GPU machines: pip install -e '.[te]' without constraints.txt, which pins the CPU torch)" >&2
  exit 2
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec "$PYTHON" "$REPO/scripts/gpu_check.py" "$@"
