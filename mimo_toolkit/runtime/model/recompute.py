"""Activation recompute per module (``train.recompute.<module>=none|selective|full``), megatron-core's own.

* ``selective``: megatron-core's ``recompute_granularity="selective"`` (``core_attn``): the
  attention's inner part is recomputed in the backward instead of keeping its intermediates.
* ``full``: ``recompute_granularity="full"``, ``recompute_method="uniform"``,
  ``recompute_num_layers=1``: every transformer layer keeps only its input and is run again in
  the backward.

Both are set on the module's TransformerConfig before the model is built (attention decides at
construction whether to checkpoint its core). The numbers do not change: dropout is off and
the recomputed forward is the same computation.

On CPU: megatron-core's ``CheckpointFunction`` saves and restores the CUDA RNG state around
the recomputation (for dropout) and fails without CUDA. :func:`make_recompute_portable`
makes those two calls do nothing when CUDA is absent; the CPU RNG state is still saved and
restored by megatron-core itself.
"""

from __future__ import annotations

import functools

import torch

MODES = ("none", "selective", "full")


def configure(config, mode: str) -> None:
    """Set ``mode`` on a megatron-core TransformerConfig (before the model is built)."""
    if mode not in MODES:
        raise ValueError(f"recompute mode {mode!r}: expected one of {', '.join(MODES)}")
    config.recompute_granularity = None if mode == "none" else mode
    config.recompute_method = "uniform" if mode == "full" else None
    config.recompute_num_layers = 1 if mode == "full" else None
    if mode == "selective":
        config.recompute_modules = ["core_attn"]


def apply(provider, recompute: dict[str, str]) -> None:
    """Configure the provider's specs: the LLM's config and each encoder's trunk config."""
    if not any(mode != "none" for mode in recompute.values()):
        return
    make_recompute_portable()
    language = provider.mimo_parallelism_config.language_module
    for name, mode in recompute.items():
        if name == language:
            configure(provider.language_model_spec.params["config"], mode)
        else:
            encoders = provider.modality_submodules_spec[name].submodules["encoders"]
            for spec in encoders.values():
                configure(spec.params["transformer_config"], mode)


@functools.cache
def make_recompute_portable() -> None:
    """megatron-core's recompute, on a machine without CUDA (see the module docstring)."""
    if torch.cuda.is_available():
        return
    from megatron.core.tensor_parallel import random as mrandom

    get_state, set_state = mrandom._get_cuda_rng_state, mrandom._set_cuda_rng_state

    def get_cuda_rng_state(*args, **kwargs):
        return get_state(*args, **kwargs) if torch.cuda.is_available() else None

    def set_cuda_rng_state(state, *args, **kwargs):
        if state is not None:
            set_state(state, *args, **kwargs)

    mrandom._get_cuda_rng_state = get_cuda_rng_state
    mrandom._set_cuda_rng_state = set_cuda_rng_state
