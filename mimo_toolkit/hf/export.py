"""What ``mimo-toolkit export`` writes, decided without torch: directories, configs, rules.

* A job with one CLIP-style ``vision`` encoder (MLP projector) and a Llama-style LLM
  becomes ONE ``LlavaForConditionalGeneration`` directory (llava-hf's layout).
* Anything else becomes one directory per module in its own class (``LlamaForCausalLM``,
  ``CLIPVisionModel``, ``WhisperModel``) plus ``<encoder>_projector/`` (the projector's
  tensors under megatron-core's names, with a small config.json).

Tensors come from the run's checkpoint through the same rules the import uses
(:mod:`.mapping`), so an imported, unchanged model exports bit for bit: same names (the
source checkpoint's key layout), same dtype, and the tensors the model does not hold
(CLIP layers after the feature layer, ``post_layernorm``, Whisper's decoder) copied from the
source checkpoint. Without a source (random initialisation) a vision tower is written with
the layers it has, its feature layer then being the last (``vision_feature_layer=-1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import AudioEncoder, JobConfig, LanguageModel, VisionEncoder
from ..errors import UserError
from .architectures import PROJECTOR_ACTIVATIONS, Source, open_source
from .checkpoint import TensorInfo
from .mapping import EXPORT_PREFIXES, Prefixes, Rule, find_prefixes, module_rules

def check_export_paths(run_dir: str, out_dir: str) -> None:
    """Refuse a RUN_DIR that is no run directory or an OUT_DIR that already holds something,
    before anything heavy is imported or read."""
    if not (Path(run_dir) / "job.json").is_file():
        raise UserError(f"{run_dir}: not a run directory (no job.json)")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out_dir}: exists and is not an empty directory")


#: the recipe's projector activation -> Hugging Face's name
HF_ACTIVATION = {ours: hf for hf, ours in reversed(list(PROJECTOR_ACTIVATIONS.items()))}
_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


@dataclass
class ModuleExport:
    """One module's part of an export directory."""

    module: str
    rules: list[Rule]
    dtype: str
    """torch dtype name of the written tensors (the source checkpoint's, else the run's)."""


@dataclass
class ExportDir:
    """One Hugging Face directory of the export."""

    name: str
    """Sub-directory of OUT_DIR ('' for the whole of it)."""
    config: dict
    modules: list[ModuleExport] = field(default_factory=list)
    passthrough: dict[str, tuple[str, TensorInfo]] = field(default_factory=dict)
    """Output name -> (name, place) of a source tensor the model does not hold, copied as it is."""
    raw_module: str | None = None
    """A projector written under megatron-core's names (no Hugging Face class has it)."""


def check_llama(job: JobConfig) -> LanguageModel:
    lm, name = job.language_model, job.layout.language_module
    wrong = [f"{f}={getattr(lm, f)}" for f, ok in (("normalization", "RMSNorm"), ("activation", "swiglu"),
                                                    ("position_embedding", "rope")) if getattr(lm, f) != ok]
    if lm.add_bias_linear:
        wrong.append("add_bias_linear=True")
    if wrong:
        raise UserError(f"model.{name} is not a Llama architecture ({', '.join(wrong)}): no Hugging Face class to export it as")
    return lm


def is_clip(arch) -> bool:
    return (isinstance(arch, VisionEncoder) and arch.class_token and arch.normalization == "LayerNorm"
            and arch.add_bias_linear and arch.activation in ("gelu", "quick_gelu") and arch.num_channels == 3)


def _source(job: JobConfig, module: str) -> Source | None:
    arch = job.model[module]
    return open_source(arch.KIND, arch.pretrained, f"model.{module}.pretrained") if arch.pretrained else None


def _dtype(job: JobConfig, src: Source | None, rules: list[Rule], requested: str | None) -> str:
    if requested:
        return requested
    if src is not None:
        first = next(name for rule in rules for name in rule.sources if name)
        info = src.checkpoint.tensors.get(first)
        if info is not None and info.dtype in _DTYPES:
            return _DTYPES[info.dtype]
    return "bfloat16" if job.train.precision == "bf16" else "float32"


def _prefixes(src: Source | None, family: str, default: Prefixes) -> Prefixes:
    """The source's key layout when it is the same kind of checkpoint (bit-identical names)."""
    if src is None or src.family != family:
        return default
    found = find_prefixes(family, set(src.checkpoint.tensors), llava=src.llava is not None)
    return found or default


def export_plan(job: JobConfig, dtype: str | None = None, image_token: int | None = None) -> list[ExportDir]:
    """The directories ``job``'s checkpoint exports to (``dtype``: None keeps each module's)."""
    check_llama(job)
    encoders = job.encoders
    vision = next(iter(encoders)) if len(encoders) == 1 else None
    if vision and is_clip(encoders[vision]) and encoders[vision].projector == "mlp":
        return [llava_dir(job, vision, dtype, image_token)]
    dirs = [llama_dir(job, dtype)]
    for name, arch in encoders.items():
        if isinstance(arch, AudioEncoder):
            dirs.append(whisper_dir(job, name, dtype))
        elif is_clip(arch):
            dirs.append(clip_dir(job, name, dtype))
        else:
            raise UserError(f"model.{name} is not a CLIP architecture: no Hugging Face class to export it as")
        dirs.append(ExportDir(f"{name}_projector", _projector_config(job, name), raw_module=name))
    return dirs


# ---- configs ----------------------------------------------------------------------------------


def llama_config(lm: LanguageModel, src: Source | None) -> dict:
    """A LlamaConfig dict: the source's (token ids, ...) with the architecture's fields."""
    base = dict(src.config) if src is not None and src.family == "llama" else {}
    for stale in ("rope_parameters", "architectures", "_name_or_path", "torch_dtype", "dtype"):
        base.pop(stale, None)
    base.update({
        "model_type": "llama", "hidden_size": lm.hidden_size, "intermediate_size": lm.ffn_size,
        "num_hidden_layers": lm.num_layers, "num_attention_heads": lm.num_attention_heads,
        "num_key_value_heads": lm.query_groups, "head_dim": lm.hidden_size // lm.num_attention_heads,
        "vocab_size": lm.vocab_size, "rms_norm_eps": lm.layernorm_epsilon, "hidden_act": "silu",
        "max_position_embeddings": max(lm.max_sequence_length, (src.max_positions or 0) if src else 0),
        "rope_theta": float(lm.rotary_base), "tie_word_embeddings": lm.tie_embeddings,
        "attention_bias": False, "mlp_bias": False,
        "rope_scaling": None if lm.rope_scaling_factor is None else {
            "rope_type": "llama3", "factor": lm.rope_scaling_factor, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    })
    return base


def clip_config(arch: VisionEncoder, layers: int, src: Source | None) -> dict:
    base = dict(src.config) if src is not None and src.family == "clip" else {"projection_dim": 512}
    for stale in ("architectures", "_name_or_path", "torch_dtype", "dtype"):
        base.pop(stale, None)
    base.update({
        "model_type": "clip_vision_model", "hidden_size": arch.hidden_size, "intermediate_size": arch.ffn_size,
        "num_hidden_layers": layers, "num_attention_heads": arch.num_attention_heads, "num_channels": 3,
        "image_size": arch.image_size, "patch_size": arch.patch_size, "hidden_act": arch.activation,
        "layer_norm_eps": arch.layernorm_epsilon,
    })
    return base


def whisper_config(arch: AudioEncoder, src: Source | None) -> dict:
    base = dict(src.config) if src is not None else {"decoder_layers": 0}
    for stale in ("_name_or_path", "torch_dtype", "dtype"):
        base.pop(stale, None)
    base.update({
        "architectures": ["WhisperModel"], "model_type": "whisper", "d_model": arch.hidden_size,
        "encoder_layers": arch.num_layers, "encoder_attention_heads": arch.num_attention_heads,
        "encoder_ffn_dim": arch.ffn_size, "num_mel_bins": arch.num_mel_bins,
        "max_source_positions": arch.tokens_per_sample, "activation_function": "gelu",
    })
    return base


def _projector_config(job: JobConfig, name: str) -> dict:
    arch = job.model[name]
    return {"projector": arch.projector, "activation": HF_ACTIVATION[arch.projector_activation],
            "input_size": arch.hidden_size, "ffn_hidden_size": arch.projector_ffn_hidden_size or job.language_model.hidden_size,
            "output_size": job.language_model.hidden_size,
            "tensors": "megatron-core MultimodalProjector names (encoder.linear_fc1 / encoder.linear_fc2)"}


# ---- directories --------------------------------------------------------------------------------


def _module(job: JobConfig, module: str, family: str, prefixes: Prefixes, dtype: str | None, llava: bool) -> ModuleExport:
    src = _source(job, module)
    rules = module_rules(family, job.model[module], prefixes, job.language_model.hidden_size, llava)
    return ModuleExport(module, rules, _dtype(job, src, rules, dtype))


def llama_dir(job: JobConfig, dtype: str | None) -> ExportDir:
    name = job.layout.language_module
    src = _source(job, name)
    prefixes = EXPORT_PREFIXES["llama"]
    config = {**llama_config(job.language_model, src), "architectures": ["LlamaForCausalLM"]}
    return ExportDir(name, config, [_module(job, name, "llama", prefixes, dtype, llava=False)])


def _vision_layers(arch: VisionEncoder, src: Source | None, source_prefixes: Prefixes | None) -> tuple[int, int]:
    """(layers written, feature layer): all of them when the source has the unused ones, else the built ones."""
    if src is not None and source_prefixes is not None and arch.built_layers < arch.num_layers:
        return arch.num_layers, arch.feature_layer
    return arch.built_layers, -1


def clip_dir(job: JobConfig, name: str, dtype: str | None) -> ExportDir:
    arch, src = job.model[name], _source(job, name)
    found = find_prefixes("clip", set(src.checkpoint.tensors), src.llava is not None) if src is not None else None
    same_class = found is not None and src.llava is None  # a CLIP checkpoint: keep its key layout
    prefixes = Prefixes(found.body) if same_class else EXPORT_PREFIXES["clip"]
    layers, _ = _vision_layers(arch, src, found)
    config = {**clip_config(arch, layers, src), "architectures": ["CLIPVisionModel"]}
    out = ExportDir(name, config, [_module(job, name, "clip", prefixes, dtype, llava=False)])
    out.passthrough = passthrough(src, found, prefixes, out.modules[0].rules, layers) if src is not None and found else {}
    return out


def whisper_dir(job: JobConfig, name: str, dtype: str | None) -> ExportDir:
    arch, src = job.model[name], _source(job, name)
    prefixes = EXPORT_PREFIXES["whisper"]
    out = ExportDir(name, whisper_config(arch, src), [_module(job, name, "whisper", prefixes, dtype, llava=False)])
    if src is not None:  # the decoder, which the toolkit does not use, as it came
        found = find_prefixes("whisper", set(src.checkpoint.tensors), False)
        root = found.body[: -len("encoder.")] if found else ""
        out.passthrough = {k[len(root):]: (k, v) for k, v in src.checkpoint.tensors.items() if k.startswith(root + "decoder.")}
    return out


def passthrough(src: Source, found: Prefixes, prefixes: Prefixes, rules: list[Rule], layers: int) -> dict[str, tuple[str, TensorInfo]]:
    """Source tensors of the vision tower the model does not hold (layers after the feature
    layer, post_layernorm), renamed to the export's key layout."""
    used = {n for rule in rules for n in rule.sources if n}
    out = {}
    for key, info in src.checkpoint.tensors.items():
        if not key.startswith(found.body) or key in used or key.endswith("position_ids"):
            continue
        rest = key[len(found.body):]
        if rest.startswith("encoder.layers.") and int(rest.split(".")[2]) >= layers:
            continue
        out[prefixes.body + rest] = (key, info)
    return out


def llava_dir(job: JobConfig, vision: str, dtype: str | None, image_token: int | None) -> ExportDir:
    """One LlavaForConditionalGeneration directory for the vision tower, projector and LLM."""
    lm_name, arch = job.layout.language_module, job.model[vision]
    vsrc, lsrc = _source(job, vision), _source(job, lm_name)
    llava_src = next((s for s in (vsrc, lsrc) if s is not None and s.llava is not None), None)
    v_found = find_prefixes("clip", set(vsrc.checkpoint.tensors), vsrc.llava is not None) if vsrc else None
    v_prefixes = _prefixes(vsrc, "clip", EXPORT_PREFIXES["llava_vision"]) if vsrc and vsrc.llava else EXPORT_PREFIXES["llava_vision"]
    l_prefixes = _prefixes(lsrc, "llama", EXPORT_PREFIXES["llava_llm"]) if lsrc and lsrc.llava else EXPORT_PREFIXES["llava_llm"]
    layers, feature_layer = _vision_layers(arch, vsrc, v_found)
    llava = dict(llava_src.llava) if llava_src else {}
    config = {
        **{k: v for k, v in (llava_src.checkpoint.config.items() if llava_src else []) if k not in ("text_config", "vision_config")},
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "vision_config": clip_config(arch, layers, vsrc), "text_config": llama_config(job.language_model, lsrc),
        "image_token_index": llava.get("image_token_index", image_token),
        "projector_hidden_act": HF_ACTIVATION[arch.projector_activation], "vision_feature_layer": feature_layer,
        "vision_feature_select_strategy": "full" if arch.keep_class_token else "default",
        "multimodal_projector_bias": True, "tie_word_embeddings": job.language_model.tie_embeddings,
        "image_seq_length": arch.tokens_per_sample,
    }
    for stale in ("torch_dtype", "dtype", "_name_or_path"):
        config.pop(stale, None)
    out = ExportDir("", config, [
        _module(job, vision, "clip", v_prefixes, dtype, llava=True),
        _module(job, lm_name, "llama", l_prefixes, dtype, llava=False),
    ])
    if vsrc is not None and v_found is not None:
        out.passthrough = passthrough(vsrc, v_found, v_prefixes, out.modules[0].rules, layers)
    return out
