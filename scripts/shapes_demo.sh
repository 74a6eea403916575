#!/usr/bin/env bash
# The shapes demo: proof that the encoders are wired to the LLM, on 2 CPU processes.
#
#   scripts/shapes_demo.sh [RUN_DIR]                       llava (default: runs/shapes-demo)
#   RECIPE=multi_encoder scripts/shapes_demo.sh [RUN_DIR]  vision + audio
#
# 1. writes the built-in shapes task (scripts/make_shapes_dataset.py; data in RUN_DIR-data):
#    llava: colour, shape and position questions about a small picture;
#    multi_encoder: every sample also has a tone whose pitch is a number that is NOT in the
#    picture; two thirds of the questions ask for that number (audio), one third for the
#    colour (vision), so each encoder is needed for some answers,
# 2. trains the recipe's tiny preset on it with the preset's own layout (LLM TP2, encoders
#    DP2, colocated, gloo), logging the validation loss and plotting RUN_DIR/curves.png,
# 3. answers every validation question greedily and prints the accuracy (RUN_DIR/eval.json);
#    multi_encoder then repeats it with the audio, then the vision inputs zeroed.
#
# About 4 (llava) or 5 (multi_encoder) minutes on 2 cores. The training settings are the
# task's, given with --set; the presets are unchanged. Environment: RECIPE, PYTHON (default
# python3), MIMO (default mimo-toolkit).
set -euo pipefail

RECIPE=${RECIPE:-llava}
PYTHON=${PYTHON:-python3}
MIMO=${MIMO:-mimo-toolkit}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=$(realpath -m "${1:-runs/shapes-demo}")
DATA="$RUN_DIR-data"
start=$(date +%s)

case "$RECIPE" in
  llava)
    DATA_FLAGS=(--train 4000 --valid 200)
    TASK=(--set train.seq_length=72 --set train.steps=900)
    ;;
  multi_encoder)
    DATA_FLAGS=(--train 4000 --valid 210 --audio --categories number,number,color)
    TASK=(--set train.seq_length=96 --set train.steps=700)
    ;;
  *)
    echo "shapes demo: RECIPE must be llava or multi_encoder, not $RECIPE" >&2
    exit 2
    ;;
esac

"$PYTHON" "$REPO/scripts/make_shapes_dataset.py" --out "$DATA" --seed 0 "${DATA_FLAGS[@]}"

"$MIMO" submit "$RECIPE" --preset tiny --scheduler local --run-dir "$RUN_DIR" \
  --set data.source=llava --set "data.path=$DATA/train.json" --set "data.valid_path=$DATA/valid.json" \
  "${TASK[@]}" --set train.micro_batch_size=16 \
  --set train.global_batch_size=32 --set train.lr=6e-4 --set train.min_lr=3e-5 \
  --set train.lr_warmup_steps=50 --set train.eval_interval=100 --set train.save_interval=300 \
  --set train.log_interval=50

"$MIMO" eval "$RUN_DIR"
if [[ $RECIPE == multi_encoder ]]; then
  "$MIMO" eval "$RUN_DIR" --ablate audio
  "$MIMO" eval "$RUN_DIR" --ablate vision
fi
echo "shapes demo: $(( $(date +%s) - start )) s from data generation to accuracy; curves in $RUN_DIR/curves.png"
