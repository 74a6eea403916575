"""``--set KEY=VALUE`` overrides: typed, validated, unknown keys rejected with a suggestion.

Keys address the JobConfig tree:

* ``layout.mode``, ``layout.language_module``, ``layout.<module>.{tp,pp,cp,ep,dp,rank_offset,scalable}``
* ``model.<module>.<field>`` (any architecture field of that module)
* ``freeze.<module>`` and ``freeze.<encoder>_projector``
* ``train.<field>``, ``data.<field>``, ``cluster.<field>``; ``cluster.env.NAME`` sets one variable
* ``job_name``

Values are parsed by the field's type (see ``mimo_toolkit.typed``): ``true``/``false``,
integers, numbers, ``none`` for optional fields, a choice for fixed choices, comma
separated or JSON lists.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, get_origin

from .config import JobConfig, SlurmGroup
from .errors import UserError
from .layout import LAYOUT_KEYS
from .typed import field_hints, parse_text
from .validation import check_env_name


@dataclass(frozen=True)
class Target:
    """Where a key writes and the type its value must have."""

    hint: Any
    apply: Callable[[Any], None]


def _section_targets(prefix: str, obj: Any) -> dict[str, Target]:
    out = {}
    for name, hint in field_hints(type(obj)).items():
        out[f"{prefix}.{name}"] = Target(hint, lambda v, o=obj, n=name: setattr(o, n, v))
    return out


def targets(job: JobConfig) -> dict[str, Target]:
    """Every key ``--set`` accepts for this job, with its type and setter."""
    out: dict[str, Target] = {}
    layout = job.layout
    out["layout.mode"] = Target(field_hints(type(layout))["deployment_mode"], lambda v: setattr(layout, "deployment_mode", v))
    out["layout.language_module"] = Target(str, lambda v: setattr(layout, "language_module", v))
    for module, par in layout.module_parallelisms.items():
        hints = field_hints(type(par))
        for key in LAYOUT_KEYS:
            out[f"layout.{module}.{key}"] = Target(hints[key], lambda v, p=par, f=key: setattr(p, f, v))
    for module in layout.special_token_ids:
        out[f"layout.special_token_ids.{module}"] = Target(
            int, lambda v, m=module: layout.special_token_ids.__setitem__(m, v)
        )
    for module, arch in job.model.items():
        out.update(_section_targets(f"model.{module}", arch))
    for part in job.freeze_keys():
        out[f"freeze.{part}"] = Target(bool, lambda v, p=part: job.freeze.__setitem__(p, v))
    for section in ("train", "data", "cluster"):
        out.update(_section_targets(section, getattr(job, section)))
    for module in job.model:  # cluster.groups.<module>.<field>: the entry is made on first use
        for name, hint in field_hints(SlurmGroup).items():
            out[f"cluster.groups.{module}.{name}"] = Target(
                hint, lambda v, m=module, n=name: setattr(job.cluster.groups.setdefault(m, SlurmGroup()), n, v)
            )
    out["job_name"] = Target(str, lambda v: setattr(job, "job_name", v))
    return out


def _dict_entry(key: str, table: dict[str, Target]) -> str | None:
    """``cluster.env.NAME`` style keys: the entry name when ``key`` addresses one entry of a
    dict-valued field."""
    head, _, entry = key.rpartition(".")
    target = table.get(head)
    if target is not None and entry and get_origin(target.hint) is dict:
        return entry
    return None


def split_assignment(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"{flag} {text!r}: expected KEY=VALUE")
    return key.strip(), value


def apply_overrides(job: JobConfig, assignments: Iterable[str]) -> JobConfig:
    """Apply ``KEY=VALUE`` strings in order to ``job`` (in place) and record them."""
    for text in assignments:
        key, value = split_assignment(text, "--set")
        table = targets(job)  # rebuilt each time: an override may change the set of keys
        target = table.get(key)
        if target is not None:
            target.apply(parse_text(target.hint, value, key))
        elif (entry := _dict_entry(key, table)) is not None:
            _current_dict(job, key.rpartition(".")[0])[entry] = value
        else:
            raise UserError(f"--set {key}: unknown key{suggest(key, table)}")
        job.overrides.append(f"{key}={value}")
    return job


def _current_dict(job: JobConfig, path: str) -> dict:
    obj: Any = job
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def suggest(key: str, table: Iterable[str]) -> str:
    keys = list(table)
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if close:
        return f" (did you mean {close[0]}?)"
    prefix = key.split(".")[0]
    same = [k for k in keys if k.startswith(prefix + ".")]
    return f"; keys under {prefix}: {', '.join(same[:8])}{' ...' if len(same) > 8 else ''}" if same else ""


def apply_env(job: JobConfig, assignments: Iterable[str]) -> JobConfig:
    """Apply ``--env NAME=VALUE``: a variable every rank of the job gets."""
    for text in assignments:
        name, value = split_assignment(text, "--env")
        check_env_name(name, "--env")
        job.env[name] = value
    return job
