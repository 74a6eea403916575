"""``model.<module>.pretrained``: fill the architecture from config.json, check every tensor.

:func:`apply_pretrained` runs inside ``resolve.validate`` (so ``show``, ``render``,
``submit`` and the job itself all run it), before the layout checks need the architecture:

1. each pretrained module's fields still at their defaults (and not named by ``--set``) are
   filled from config.json; any other difference is refused, naming the field, the value,
   the config.json key and its value;
2. the module's rules (:mod:`.mapping`) are compared with the safetensors headers: a missing
   tensor, an unexpected one (first five named) or a shape config.json contradicts is refused;
3. ``data.tokenizer`` (:mod:`.tokenizer`): its vocabulary must fit the LLM's, its chat
   template must render.

Paths are read as given, like ``data.path``: relative ones from where the job runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from dataclasses import dataclass

from ..config import JobConfig, LanguageModel, TransformerArch
from ..errors import UserError
from .architectures import Source, open_source
from .mapping import Prefixes, Rule, expected_probe, find_prefixes, module_rules, unused_patterns
from .preprocessing import preprocessing_of
from .tokenizer import check_tokenizer

#: fields whose None means a value derived from other fields
_EFFECTIVE = {"num_query_groups": "query_groups", "ffn_hidden_size": "ffn_size"}


@dataclass
class ModuleImport:
    """Where one module's weights come from: the checkpoint, its key prefixes, the rules."""

    module: str
    source: Source
    prefixes: Prefixes
    rules: list[Rule]


def apply_pretrained(job: JobConfig) -> dict[str, ModuleImport]:
    """Fill and check every pretrained module of ``job`` (in place); returns their imports."""
    sources = {}
    for name, arch in job.model.items():
        if arch.pretrained:
            sources[name] = open_source(arch.KIND, arch.pretrained, f"model.{name}.pretrained")
            reconcile(name, arch, sources[name], _set_by_override(job, name))
    imports = {name: module_import(job, name, src) for name, src in sources.items()}
    for imp in imports.values():
        check_tensors(job, imp)
    check_tokenizer(job)
    tokenizer_dir = job.data.tokenizer if Path(job.data.tokenizer).is_dir() else None
    for arch in job.encoders.values():  # a preprocessor_config.json that contradicts the encoder
        preprocessing_of(arch, [arch.pretrained, tokenizer_dir])
    return imports


def pretrained_import(job: JobConfig, module: str) -> ModuleImport:
    """The import of one module of a validated job (the runtime's entry point)."""
    arch = job.model[module]
    src = open_source(arch.KIND, arch.pretrained, f"model.{module}.pretrained")
    return module_import(job, module, src)


def _set_by_override(job: JobConfig, module: str) -> set[str]:
    prefix = f"model.{module}."
    return {o.split("=", 1)[0][len(prefix):] for o in job.overrides if o.startswith(prefix)}


def _effective(arch: TransformerArch, name: str):
    return getattr(arch, _EFFECTIVE.get(name, name))


def reconcile(module: str, arch: TransformerArch, src: Source, explicit: set[str]) -> None:
    """Fill ``arch``'s unset fields from config.json; refuse the ones set to something else."""
    defaults = {f.name: f.default for f in dataclasses.fields(arch)}
    where = f"{src.checkpoint.path}/config.json"
    for imp in src.implied:
        current = getattr(arch, imp.field)
        if _equal(_effective(arch, imp.field), imp.value) or _equal(current, imp.value):
            continue
        if imp.field not in explicit and imp.field in defaults and _equal(current, defaults[imp.field]):
            setattr(arch, imp.field, imp.value)
            continue
        raise UserError(f"model.{module}.{imp.field}={current!r} but {where} has {imp.key}={imp.value!r}")
    if isinstance(arch, LanguageModel) and src.max_positions and arch.max_sequence_length > src.max_positions:
        raise UserError(
            f"model.{module}.max_sequence_length={arch.max_sequence_length} exceeds {where}'s "
            f"{src.section}max_position_embeddings={src.max_positions}"
        )


def _equal(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def module_import(job: JobConfig, module: str, src: Source) -> ModuleImport:
    """The rules that fill ``module`` from ``src`` (the architecture already reconciled)."""
    arch = job.model[module]
    ckpt = src.checkpoint
    prefixes = find_prefixes(src.family, set(ckpt.tensors), llava=src.llava is not None)
    if prefixes is None:
        raise UserError(f"model.{module}.pretrained={ckpt.path}: no tensor {expected_probe(src.family)} (nor its variants)")
    llm = job.model.get(job.layout.language_module)
    hidden = llm.hidden_size if isinstance(llm, LanguageModel) else None
    rules = module_rules(src.family, arch, prefixes, hidden, llava=src.llava is not None)
    return ModuleImport(module, src, prefixes, rules)


def check_tensors(job: JobConfig, imp: ModuleImport) -> None:
    """Every source tensor present with the shape config.json implies; no unexplained tensor."""
    ckpt = imp.source.checkpoint
    where = f"model.{imp.module}.pretrained={ckpt.path}"
    used, missing = set(), []
    for rule in imp.rules:
        for name, shape in zip(rule.sources, rule.shapes):
            if name is None:
                continue
            used.add(name)
            info = ckpt.tensors.get(name)
            if info is None:
                missing.append(name)
            elif info.shape != shape:
                raise UserError(
                    f"{info.file}: tensor {name} has shape {list(info.shape)}, config.json implies {list(shape)}"
                )
    if missing:
        raise UserError(f"{where}: {len(missing)} tensor(s) missing: {', '.join(missing[:5])}")
    arch = job.model[imp.module]
    unused = unused_patterns(imp.source.family, arch, imp.prefixes, llava=imp.source.llava is not None)
    extra = sorted(k for k in ckpt.tensors if k not in used and not any(p.fullmatch(k) for p in unused))
    if extra:
        raise UserError(f"{where}: {len(extra)} unexpected tensor(s) for its config.json: {', '.join(extra[:5])}")
