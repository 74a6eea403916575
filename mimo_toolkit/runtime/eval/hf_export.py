"""``mimo-toolkit export RUN_DIR OUT_DIR``: the run's newest checkpoint as Hugging Face checkpoints.

The checkpoint's shards (any TP/PP layout) are merged into full tensors by
``inference.load_model`` (``reshard.module_state_dict``, the one API that reads checkpoints),
converted by the inverse of each import rule (:mod:`.hf_convert`) and written as
safetensors with a config.json per directory (:mod:`mimo_toolkit.hf.export` decides which
directories and classes). Tokenizer files (``data.tokenizer``) and the preprocessing
(``preprocessor_config.json``) go along. Everything is written into ``OUT_DIR.tmp`` and
renamed into place at the end, so OUT_DIR is complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ...hf.export import ExportDir, check_export_paths, export_plan
from ...hf.preprocessing import PREPROCESSOR_CONFIG, preprocessing_of
from ...hf.tokenizer import TokenizerFiles
from ...resolve import load_manifest
from ...run_dir import RunDir
from ..model.provider import _module_parts
from . import inference
from .hf_convert import to_hf

#: tokenizer files copied from a ``data.tokenizer`` directory
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "chat_template.jinja", "chat_template.json", "processor_config.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export_run(run_dir: str, out_dir: str, dtype: str | None = None) -> dict:
    """Export ``run_dir``'s newest checkpoint to ``out_dir``; returns what was written."""
    check_export_paths(run_dir, out_dir)
    rd, out = RunDir(run_dir), Path(out_dir)
    job = load_manifest(rd.read_job()).config
    checkpoint = inference.latest_checkpoint(rd)
    plan = export_plan(job, dtype, image_token=_image_token(job))
    with inference.single_process_group():
        loaded = inference.load_model(job, checkpoint)
        parts = _module_parts(loaded.model, loaded.job.layout.language_module)
        states = {name: {k: v for k, v in part.state_dict().items() if isinstance(v, torch.Tensor)}
                  for name, part in parts.items()}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    written = [write_dir(tmp / d.name, d, states, job) for d in plan]
    _copy_extras(job, tmp, plan)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return {"run_dir": str(rd.path), "checkpoint": checkpoint.name, "step": loaded.step, "out_dir": str(out),
            "directories": written}


def write_dir(path: Path, plan: ExportDir, states: dict, job) -> dict:
    """One Hugging Face directory: model.safetensors and config.json."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for module in plan.modules:
        for name, tensor in to_hf(module.rules, states[module.module]).items():
            tensors[name] = tensor.to(DTYPES[module.dtype]).contiguous()
    for name, (key, info) in plan.passthrough.items():
        with safe_open(str(info.file), framework="pt") as f:
            tensors[name] = f.get_tensor(key)
    if plan.raw_module:
        prefix = "input_projections.0."
        tensors = {k[len(prefix):]: v.contiguous() for k, v in states[plan.raw_module].items() if k.startswith(prefix)}
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(plan.config, indent=2, sort_keys=True) + "\n")
    return {"directory": plan.name or ".", "tensors": len(tensors), "class": (plan.config.get("architectures") or ["-"])[0]}


def _image_token(job) -> int | None:
    """A LLaVA export's image token when no LLaVA checkpoint gives one: the tokenizer's
    ``<image>``, else the first id past the tokenizer's vocabulary (the built-in byte one: 259)."""
    vocab = job.language_model.vocab_size
    if job.data.tokenizer == "byte":
        from ..datasets.tokenizers import ByteTokenizer

        first_free = ByteTokenizer.vocab_size
    else:
        from ..datasets.tokenizers import load_tokenizer

        tok = load_tokenizer(job.data.tokenizer, vocab)
        found = tok.token_id("<image>")
        if found is not None:
            return found
        first_free = tok.vocab_size
    return first_free if first_free < vocab else None


def _copy_extras(job, root: Path, plan: list[ExportDir]) -> None:
    """Tokenizer files next to the LLM's weights; each encoder's preprocessing next to its own."""
    lm = job.layout.language_module
    targets = {d.name: root / d.name for d in plan}
    llm_dir = targets.get(lm, root / "") if "" not in targets else root
    spec = job.data.tokenizer
    if spec != "byte":
        if Path(spec).is_dir():
            for name in TOKENIZER_FILES:
                if (Path(spec) / name).is_file():
                    shutil.copy2(Path(spec) / name, llm_dir / name)
        else:
            shutil.copy2(spec, llm_dir / "tokenizer.json")
        TokenizerFiles.locate(str(llm_dir))  # what was written reads back
    tokenizer_dir = spec if spec != "byte" and Path(spec).is_dir() else None
    for name, arch in job.encoders.items():
        target = targets.get(name, root)
        pre = preprocessing_of(arch, [arch.pretrained, tokenizer_dir])
        (target / PREPROCESSOR_CONFIG).write_text(json.dumps(pre.to_config(), indent=2) + "\n")
