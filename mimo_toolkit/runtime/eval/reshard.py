"""One module's full (unsharded) weights from a checkpoint, whatever layout wrote it.

The one function the evaluation (``mimo-toolkit eval``) and the Hugging Face export read
checkpoints through. A checkpoint (``mimo_toolkit.runtime.train.checkpoint``) already stores
every parameter as one full tensor under its canonical name (global layer numbers, true
vocabulary, TP1 shape), in torch.distributed.checkpoint's format; reading a module is
reading its ``model/<module>/`` keys, from the step's directory and from the run's frozen
store, in this one process (no process group).

Two details of the stored shapes (``runtime.train.canonical``): a strided tensor-parallel
weight (SwiGLU's ``linear_fc1``, gate and up interleaved per TP rank) is stored as
``[stride, rows/stride, ...]``, which is the TP1 tensor reshaped; vocabulary tables hold the
true vocabulary's rows and a target model pads them to its own padded size with zeros.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ...checkpoints import CheckpointInfo, latest, read_checkpoint
from ...errors import UserError
from ...run_dir import RunDir
from ..model.init import _VOCAB_PARAMS, canonical_names
from ..model.specs import local_parameter_names
from ..train import dcp_io


def _checkpoint(source: RunDir | Path) -> CheckpointInfo:
    if isinstance(source, RunDir):
        info = latest(source)
        if info is None:
            raise UserError(f"{source.path}: no complete checkpoint (train first, or wait for the first save)")
        return info
    return read_checkpoint(Path(source))


def _read(directory: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor under ``prefix`` in the DCP checkpoint at ``directory``, as full tensors."""
    index = dcp_io.read_index(directory).state_dict_metadata
    state = {k: torch.empty(tuple(md.size), dtype=md.properties.dtype) for k, md in index.items()
             if k.startswith(prefix) and hasattr(md, "size")}
    if state:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process": yes
            dcp_io.load(state, directory)
    return {k[len(prefix):]: v for k, v in state.items()}


def module_state_dict(source: RunDir | Path, module: str, target: torch.nn.Module | None = None) -> dict:
    """``module``'s full weights from the newest checkpoint of a run directory (``RunDir``) or
    from one checkpoint directory (``Path``).

    Without ``target``: canonical names (megatron-core's local layers' names, also for a
    checkpoint written by transformer-engine layers) and stored shapes (what an exporter maps
    to another naming). With ``target`` (the module built TP1/PP1 by the provider): exactly
    ``target.state_dict()``'s keys and shapes, ready for ``load_state_dict`` (:func:`fit_to`).
    """
    info = _checkpoint(source)
    prefix = f"model/{module}/"
    weights = _read(info.path, prefix)
    if info.frozen is not None:
        weights.update(_read(info.frozen, prefix))
    if not weights:
        raise UserError(f"{info.path.name}: no weights of module {module!r}")
    return fit_to(weights, target, where=info.path.name) if target is not None else local_parameter_names(weights)


def fit_to(weights: dict, target: torch.nn.Module, where: str = "the checkpoint") -> dict:
    """Full weights by canonical name (local or transformer-engine layer names) as
    ``target.state_dict()``: its keys and shapes; entries that are not parameters
    (``_extra_state``) are the target's own."""
    weights = local_parameter_names(weights)  # TE: norms fused into the next linear layer
    names = canonical_names(target)
    out = {}
    for key, ref in target.state_dict().items():
        if key not in names:
            out[key] = ref  # not a parameter: nothing of it is stored
            continue
        if names[key] not in weights:
            raise UserError(f"{where}: no weights for {names[key]!r} (checked the step and the frozen store)")
        out[key] = _fit(names[key], weights[names[key]], ref.shape)
    return out


def _fit(key: str, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A stored tensor in the target's shape: strided views reshaped, vocabulary rows padded."""
    if value.numel() == shape.numel():
        return value.reshape(shape)
    if key.endswith(_VOCAB_PARAMS) and value.shape[1:] == shape[1:] and value.shape[0] <= shape[0]:
        return torch.cat([value, value.new_zeros(shape[0] - value.shape[0], *shape[1:])])
    raise UserError(f"{key}: the checkpoint's shape {tuple(value.shape)} does not fit {tuple(shape)}")


def unshard(parts: list[torch.Tensor], dim: int, stride: int = 1) -> torch.Tensor:
    """The full tensor whose ``init.shard(full, dim, stride, r, len(parts))`` is ``parts[r]``
    (tests put per-rank tensors back together with it)."""
    world = len(parts)
    pieces = [p.chunk(stride, dim=dim) for p in parts]
    return torch.cat([pieces[c % world][c // world] for c in range(world * stride)], dim=dim)
