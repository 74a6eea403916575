"""Neutral cost facts: what a model costs and what a device offers.

* ``params``: parameter counts from the architecture dataclasses;
* ``flops``: forward FLOPs per sample, work multipliers from freezing, FLOPs per step;
* ``devices``: published GPU peaks (per precision) and memory, by exact CUDA device name.

Pure Python (no torch): the planner predicts with these numbers and the runtime reports MFU
with the same ones, so a prediction and a measurement compare like with like.
"""
