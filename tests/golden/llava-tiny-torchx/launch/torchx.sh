#!/bin/bash
# mimo-toolkit 0.1.0: recipe llava, preset tiny, config e34098bd0808
# overrides: []
# world size 2 = 1 node(s) x 2 process(es) per node
#
# Submits the run through TorchX's slurm scheduler with the mimo.train component
# (torchrun on every node -> python -m mimo_toolkit.train). Scheduler options are read from
# the .torchxconfig beside this file. TorchX 0.7's slurm scheduler has no preemption signal
# (a failed job is requeued up to --max_retries times and resumes from its latest
# checkpoint) and writes its slurm-<job id>-*.out logs into the directory it is run from:
# the run's log directory.
set -euo pipefail

export TORCHXCONFIG=/scratch/runs/golden/launch/.torchxconfig
mkdir -p /scratch/runs/golden/logs
cd /scratch/runs/golden/logs

exec torchx run -s slurm mimo.train \
    --config=/scratch/runs/golden/job.json \
    --run_dir=/scratch/runs/golden \
    --nnodes=1 \
    --nproc_per_node=2 \
    --gpus_per_node=0 \
    --name=llava-tiny \
    --python=python3 \
    --max_retries=3
