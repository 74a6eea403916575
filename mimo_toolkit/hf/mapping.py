"""THE table: which Hugging Face tensors make which megatron-core parameter.

One :class:`Rule` per megatron-core parameter (or buffer) of a module, named as in the
module's state dict with global layer numbers (``decoder.layers.7...`` whatever pipeline
stage holds layer 7). The import reads a rule's sources (only this rank's slice of them),
the export writes them back, and the render-time checks compare the sources' names and
shapes with the checkpoint's safetensors headers. Kinds:

``copy``
    the tensor itself; a tensor-parallel parameter takes its slice along its partition
    dimension (rows of a column-parallel weight, columns of a row-parallel one).
``qkv``
    megatron-core's ``linear_qkv``: for each of the ``ng`` query groups, that group's query
    heads, then its key head, then its value head (rows ``[q_g0..q_g(r-1), k_g, v_g]``).
    A TP rank holds whole groups. A missing source (Whisper's key projection has no bias)
    is zeros: adding a constant to every key changes no softmax.
``glu``
    ``linear_fc1`` of a gated MLP: ``[gate; up]``; TP rank ``r`` holds ``[gate_r; up_r]``.
``vocab``
    vocabulary rows, padded with zero rows to megatron-core's padded size (a multiple of
    128 x TP); rank ``r`` holds rows ``[r Vp/TP, (r+1) Vp/TP)``. The export cuts them off.
``class_token``
    CLIP's ``class_embedding [H]`` is megatron-core's ``class_token [1, 1, H]``.

Everything here is strings and integers; :mod:`mimo_toolkit.runtime.model.hf_import` and
:mod:`mimo_toolkit.runtime.eval.hf_export` do the tensor work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import AudioEncoder, LanguageModel, VisionEncoder

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Rule:
    target: str
    """megatron-core name in the module (local layer specs; see :func:`te_name`)."""
    sources: tuple[str | None, ...]
    """Hugging Face tensor names (None: absent, zeros)."""
    shapes: tuple[Shape, ...]
    """The shape each source must have according to config.json."""
    kind: str = "copy"
    groups: int = 0
    """Query groups (``qkv`` only)."""


@dataclass(frozen=True)
class Prefixes:
    """Where a module's tensors sit in a checkpoint's key space."""

    body: str
    """Llama: before ``embed_tokens``/``layers``; CLIP: before ``embeddings``/``encoder``;
    Whisper: before ``conv1``/``layers``."""
    head: str = ""
    """Llama: the output layer's key (``lm_head.weight``)."""
    projector: str = ""
    """LLaVA: before ``linear_1``/``linear_2``."""


#: Candidate prefixes in the order they are tried, by family; the first whose probe key exists wins.
CANDIDATES = {
    "llama": (("model.", "language_model.model.", "model.language_model."), "embed_tokens.weight"),
    "clip": (("vision_model.", "vision_tower.vision_model.", "vision_tower.", "model.vision_tower.vision_model.",
              "model.vision_tower.", ""), "embeddings.patch_embedding.weight"),
    "whisper": (("encoder.", "model.encoder."), "conv1.weight"),
}
PROJECTOR_CANDIDATES = ("multi_modal_projector.", "model.multi_modal_projector.")
HEAD_CANDIDATES = ("lm_head.weight", "language_model.lm_head.weight")

#: Key layouts the export writes (what transformers 5.24's save_pretrained writes for each class).
EXPORT_PREFIXES = {
    "llava_llm": Prefixes("language_model.model.", head="language_model.lm_head.weight"),
    "llava_vision": Prefixes("vision_tower.", projector="multi_modal_projector."),
    "llama": Prefixes("model.", head="lm_head.weight"),
    "clip": Prefixes(""),
    "whisper": Prefixes("encoder."),
}

#: Transformer-engine layer specs fuse the norms into the following linear layer.
_TE_NAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "input_layernorm.bias": "self_attention.linear_qkv.layer_norm_bias",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
    "pre_mlp_layernorm.bias": "mlp.linear_fc1.layer_norm_bias",
}


def te_name(name: str) -> str | None:
    """The transformer-engine spec's name of a local-spec parameter (None: the same)."""
    for local, te in _TE_NAMES.items():
        if name.endswith("." + local):
            return name[: -len(local)] + te
    return None


def find_prefixes(family: str, keys: set[str], llava: bool) -> Prefixes | None:
    """The prefixes of ``family``'s tensors among ``keys`` (None: the probe tensor is absent)."""
    candidates, probe = CANDIDATES[family]
    body = next((p for p in candidates if p + probe in keys), None)
    if body is None:
        return None
    head = next((k for k in HEAD_CANDIDATES if k in keys), HEAD_CANDIDATES[1] if body.startswith("language_model") else HEAD_CANDIDATES[0])
    projector = next((p for p in PROJECTOR_CANDIDATES if p + "linear_1.weight" in keys), PROJECTOR_CANDIDATES[0]) if llava else ""
    return Prefixes(body, head if family == "llama" else "", projector)


def expected_probe(family: str) -> str:
    candidates, probe = CANDIDATES[family]
    return candidates[0] + probe


# ---- the rules ------------------------------------------------------------------------------


def _linear(target: str, source: str, out: int, inp: int, bias: bool) -> list[Rule]:
    rules = [Rule(f"{target}.weight", (f"{source}.weight",), ((out, inp),))]
    if bias:
        rules.append(Rule(f"{target}.bias", (f"{source}.bias",), ((out,),)))
    return rules


def _norm(target: str, source: str, hidden: int, bias: bool) -> list[Rule]:
    rules = [Rule(f"{target}.weight", (f"{source}.weight",), ((hidden,),))]
    if bias:
        rules.append(Rule(f"{target}.bias", (f"{source}.bias",), ((hidden,),)))
    return rules


def _qkv(target: str, names: tuple[str | None, str | None, str | None], arch, bias: bool) -> list[Rule]:
    h, heads, groups = arch.hidden_size, arch.num_attention_heads, arch.query_groups
    hn = h // heads
    rows = (heads * hn, groups * hn, groups * hn)
    rules = [Rule(f"{target}.weight", tuple(f"{n}.weight" for n in names), tuple((r, h) for r in rows), "qkv", groups)]
    if bias:
        sources = tuple(f"{n}.bias" if n else None for n in names)
        rules.append(Rule(f"{target}.bias", sources, tuple((r,) for r in rows), "qkv", groups))
    return rules


def llama_rules(arch: LanguageModel, p: Prefixes) -> list[Rule]:
    """A Llama-family decoder -> megatron-core GPTModel."""
    h, f, v, b = arch.hidden_size, arch.ffn_size, arch.vocab_size, p.body
    rules = [Rule("embedding.word_embeddings.weight", (f"{b}embed_tokens.weight",), ((v, h),), "vocab")]
    for i in range(arch.num_layers):
        src, dst = f"{b}layers.{i}.", f"decoder.layers.{i}."
        qkv = tuple(f"{src}self_attn.{x}_proj" for x in "qkv")
        rules += _norm(f"{dst}input_layernorm", f"{src}input_layernorm", h, bias=False)
        rules += _qkv(f"{dst}self_attention.linear_qkv", qkv, arch, bias=False)
        rules += _linear(f"{dst}self_attention.linear_proj", f"{src}self_attn.o_proj", h, h, bias=False)
        rules += _norm(f"{dst}pre_mlp_layernorm", f"{src}post_attention_layernorm", h, bias=False)
        gate_up = (f"{src}mlp.gate_proj.weight", f"{src}mlp.up_proj.weight")
        rules.append(Rule(f"{dst}mlp.linear_fc1.weight", gate_up, ((f, h), (f, h)), "glu"))
        rules += _linear(f"{dst}mlp.linear_fc2", f"{src}mlp.down_proj", h, f, bias=False)
    rules += _norm("decoder.final_layernorm", f"{b}norm", h, bias=False)
    head = f"{b}embed_tokens.weight" if arch.tie_embeddings else p.head
    rules.append(Rule("output_layer.weight", (head,), ((v, h),), "vocab"))
    return rules


def clip_rules(arch: VisionEncoder, p: Prefixes) -> list[Rule]:
    """A CLIP vision tower -> megatron-core CLIPViTModel (only the layers the features need)."""
    h, b, t = arch.hidden_size, p.body, "encoders.clip."
    grid = (arch.image_size // arch.patch_size) ** 2
    rules = [
        Rule(f"{t}class_token", (f"{b}embeddings.class_embedding",), ((h,),), "class_token"),
        Rule(f"{t}conv1.weight", (f"{b}embeddings.patch_embedding.weight",), ((h, 3, arch.patch_size, arch.patch_size),)),
        Rule(f"{t}position_embeddings.weight", (f"{b}embeddings.position_embedding.weight",), ((grid + 1, h),)),
    ]
    rules += _norm(f"{t}ln_pre", f"{b}pre_layrnorm", h, bias=True)
    for i in range(arch.built_layers):
        src, dst = f"{b}encoder.layers.{i}.", f"{t}decoder.layers.{i}."
        rules += _encoder_layer(arch, src, dst, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                                ("layer_norm1", "layer_norm2", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"))
    return rules


def _encoder_layer(arch, src: str, dst: str, qkv: tuple, names: tuple) -> list[Rule]:
    """One pre-LN encoder layer with biases (CLIP and Whisper differ only in names)."""
    h, f = arch.hidden_size, arch.ffn_size
    norm1, norm2, out, fc1, fc2 = names
    sources = tuple(f"{src}{n}" for n in qkv)
    rules = _norm(f"{dst}input_layernorm", src + norm1, h, bias=True)
    rules += _qkv(f"{dst}self_attention.linear_qkv", sources, arch, bias=True)
    rules += _linear(f"{dst}self_attention.linear_proj", src + out, h, h, bias=True)
    rules += _norm(f"{dst}pre_mlp_layernorm", src + norm2, h, bias=True)
    rules += _linear(f"{dst}mlp.linear_fc1", src + fc1, f, h, bias=True)
    rules += _linear(f"{dst}mlp.linear_fc2", src + fc2, h, f, bias=True)
    return rules


def projector_rules(arch: VisionEncoder, llm_hidden: int, p: Prefixes) -> list[Rule]:
    """LLaVA's ``multi_modal_projector`` -> the MIMO projector (fc1 column-, fc2 row-parallel)."""
    inner = arch.projector_ffn_hidden_size or llm_hidden
    t = "input_projections.0.encoder."
    return (_linear(f"{t}linear_fc1", f"{p.projector}linear_1", inner, arch.hidden_size, bias=True)
            + _linear(f"{t}linear_fc2", f"{p.projector}linear_2", llm_hidden, inner, bias=True))


def whisper_rules(arch: AudioEncoder, p: Prefixes) -> list[Rule]:
    """A Whisper encoder -> the toolkit's Whisper-style encoder (``runtime.model.audio_encoder``)."""
    h, b, t = arch.hidden_size, p.body, "encoders.whisper."
    rules = [
        Rule(f"{t}conv1.weight", (f"{b}conv1.weight",), ((h, arch.num_mel_bins, 3),)),
        Rule(f"{t}conv1.bias", (f"{b}conv1.bias",), ((h,),)),
        Rule(f"{t}conv2.weight", (f"{b}conv2.weight",), ((h, h, 3),)),
        Rule(f"{t}conv2.bias", (f"{b}conv2.bias",), ((h,),)),
        Rule(f"{t}positions", (f"{b}embed_positions.weight",), ((arch.tokens_per_sample, h),)),
    ]
    for i in range(arch.num_layers):
        src, dst = f"{b}layers.{i}.", f"{t}decoder.layers.{i}."
        rules += _whisper_layer(arch, src, dst)
    rules += _norm(f"{t}decoder.final_layernorm", f"{b}layer_norm", h, bias=True)
    return rules


def _whisper_layer(arch: AudioEncoder, src: str, dst: str) -> list[Rule]:
    rules = _encoder_layer(arch, src, dst, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                           ("self_attn_layer_norm", "final_layer_norm", "self_attn.out_proj", "fc1", "fc2"))
    # Whisper's key projection has no bias: that source is absent (zeros).
    return [
        Rule(r.target, (r.sources[0], None, r.sources[2]), r.shapes, r.kind, r.groups)
        if r.kind == "qkv" and r.target.endswith(".bias") else r
        for r in rules
    ]


def module_rules(family: str, arch, prefixes: Prefixes, llm_hidden: int | None, llava: bool) -> list[Rule]:
    """Every rule of one module: a Llama LLM, a CLIP tower (+ LLaVA's projector), a Whisper encoder."""
    if family == "llama":
        return llama_rules(arch, prefixes)
    if family == "clip":
        rules = clip_rules(arch, prefixes)
        if llava and llm_hidden is not None:
            rules += projector_rules(arch, llm_hidden, prefixes)
        return rules
    return whisper_rules(arch, prefixes)


# ---- tensors a module does not take, which are not errors -------------------------------------


def unused_patterns(family: str, arch, p: Prefixes, llava: bool) -> list[re.Pattern]:
    """Tensors of the checkpoint the module leaves alone (other towers, unused layers, buffers)."""
    b = re.escape(p.body)
    if family == "llama":
        pats = [rf"{b}layers\.\d+\.self_attn\.rotary_emb\.inv_freq"]
        if arch.tie_embeddings:
            pats.append(re.escape(p.head))
        if llava:
            pats.append(r"(model\.)?(vision_tower|multi_modal_projector)\..*")
        return [re.compile(x) for x in pats]
    if family == "clip":
        beyond = "|".join(str(i) for i in range(arch.built_layers, arch.num_layers)) or "-"
        pats = [rf"{b}encoder\.layers\.({beyond})\..*", rf"{b}post_layernorm\..*", rf"{b}embeddings\.position_ids",
                r"text_model\..*", r"(visual|text)_projection\.weight", r"logit_scale"]
        if llava:
            pats.append(r"(model\.)?language_model\..*|lm_head\.weight")
        return [re.compile(x) for x in pats]
    return [re.compile(x) for x in (r"(model\.)?decoder\..*", r"proj_out\.weight")]
