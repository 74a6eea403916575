#!/bin/bash
# mimo-toolkit 0.1.0: recipe llava, preset 4node, config ebd757a80079
# overrides: ["cluster.torchx_scheduler=kubernetes", "cluster.image=ghcr.io/example/mimo:1.0", "cluster.cpus_per_task=32", "cluster.mem=500G", "cluster.torchx_mounts=type=volume,src=runs-pvc,dst=/scratch/runs", "cluster.kubernetes_queue=research"]
# world size 32 = 4 node(s) x 8 process(es) per node
#
# Submits the run through TorchX's kubernetes scheduler with the mimo.train component
# (torchrun on every node -> python -m mimo_toolkit.train). Scheduler options are read from
# the .torchxconfig beside this file. TorchX 0.7's slurm scheduler has no preemption signal
# (a failed job is requeued up to --max_retries times and resumes from its latest
# checkpoint) and writes its slurm-<job id>-*.out logs into the directory it is run from:
# the run's log directory.
set -euo pipefail

export TORCHXCONFIG=/scratch/runs/golden/launch/.torchxconfig
mkdir -p /scratch/runs/golden/logs
cd /scratch/runs/golden/logs

exec torchx run -s kubernetes mimo.train \
    --config=/scratch/runs/golden/job.json \
    --run_dir=/scratch/runs/golden \
    --nnodes=4 \
    --nproc_per_node=8 \
    --gpus_per_node=8 \
    --cpu=32 \
    --memMB=512000 \
    --name=llava-4node \
    --python=python3 \
    --max_retries=3 \
    --env=CUDA_DEVICE_MAX_CONNECTIONS=1,TORCH_NCCL_ASYNC_ERROR_HANDLING=3,NCCL_DEBUG=INFO \
    --image=ghcr.io/example/mimo:1.0 \
    --mounts=type=volume,src=runs-pvc,dst=/scratch/runs
