#!/usr/bin/env bash
# The shapes demo: proof that the vision encoder is wired to the LLM, on 2 CPU processes.
#
#   scripts/shapes_demo.sh [RUN_DIR]        (default: runs/shapes-demo; data in RUN_DIR-data)
#
# 1. writes the built-in shapes task (4000 training, 200 validation pictures and questions),
# 2. trains llava tiny on it with its own layout (LLM TP2 + vision DP2, colocated, gloo),
#    logging the validation loss every 100 steps and plotting RUN_DIR/curves.png,
# 3. answers every validation question greedily and prints the accuracy (RUN_DIR/eval.json).
#
# About 5 minutes on 2 cores. The training settings below are the task's, given with --set;
# the preset itself is unchanged. Environment: PYTHON (default python3), MIMO (default
# mimo-toolkit).
set -euo pipefail

PYTHON=${PYTHON:-python3}
MIMO=${MIMO:-mimo-toolkit}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=$(realpath -m "${1:-runs/shapes-demo}")
DATA="$RUN_DIR-data"
start=$(date +%s)

"$PYTHON" "$REPO/scripts/make_shapes_dataset.py" --out "$DATA" --seed 0 --train 4000 --valid 200

"$MIMO" submit llava --preset tiny --scheduler local --run-dir "$RUN_DIR" \
  --set data.source=llava --set "data.path=$DATA/train.json" --set "data.valid_path=$DATA/valid.json" \
  --set train.seq_length=72 --set train.steps=900 --set train.micro_batch_size=16 \
  --set train.global_batch_size=32 --set train.lr=6e-4 --set train.min_lr=3e-5 \
  --set train.lr_warmup_steps=50 --set train.eval_interval=100 --set train.save_interval=300 \
  --set train.log_interval=50

"$MIMO" eval "$RUN_DIR"
echo "shapes demo: $(( $(date +%s) - start )) s from data generation to accuracy; curves in $RUN_DIR/curves.png"
