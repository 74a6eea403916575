"""The in-job runtime: runs under torchrun (imports torch and megatron-core).

Four groups, in the order a step uses them (``docs/runtime.md`` has the reading order):

* ``model/``: recipe architectures -> megatron-core specs, the MIMO model provider (grids,
  rank roles, freezing, data parallelism), the audio encoder, CPU-portable layers,
  layout-independent initialisation;
* ``parallel/``: process groups, point-to-point transport, the encoder -> LLM bridge,
  per-module data parallelism, the vocab-parallel loss, process start-up, each rank's share
  of the node's CPUs and the failure board;
* ``train/``: the trainer (the loop), the per-rank schedule and the engine that runs it,
  optimizers, metrics, checkpoints;
* ``eval/``: greedy evaluation of a run, merging checkpoint shards, loss curves;

and ``datasets/``: samples, the synthetic and file datasets, per-replica batching.
"""
