"""Sweeps: ``--sweep KEY=V1,V2 --sweep KEY2=A,B`` is the cross product of the values, one
job per element, each in its own run directory named after its values.

:func:`expand` turns the options into elements (each resolved and validated like any job, so
an unknown key or a value that does not parse is one line, exit 2, before anything is
written). The Slurm backend submits the elements as ONE job array; the local backend runs
them one after another. Pure Python.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from .resolve import ResolvedJob


@dataclass
class Element:
    """One job of a sweep: its ``--set`` values, its directory name and the resolved job."""

    sets: list[str]
    name: str
    resolved: "ResolvedJob"


def parse_sweeps(sweeps: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``KEY=V1,V2,...`` options -> [(KEY, [V1, V2, ...])], keys in the order given."""
    axes: list[tuple[str, list[str]]] = []
    for text in sweeps:
        key, sep, values = text.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise UserError(f"--sweep {text!r}: expected KEY=V1,V2,... (e.g. train.lr=1e-3,5e-4)")
        items = [v.strip() for v in values.split(",")]
        if any(not v for v in items) or len(set(items)) != len(items):
            raise UserError(f"--sweep {text!r}: values must be non-empty and distinct")
        if key in (k for k, _ in axes):
            raise UserError(f"--sweep {key}: given twice; list all its values in one --sweep")
        axes.append((key, items))
    return axes


def element_name(assignments: Sequence[tuple[str, str]]) -> str:
    """A directory name from the element's values: the last part of each key, ``=``, the
    value (``lr=1e-3_seed=1``); characters a path should not hold become ``-``."""
    short = [k.rsplit(".", 1)[-1] for k, _ in assignments]
    keys = short if len(set(short)) == len(short) else [k for k, _ in assignments]
    name = "_".join(f"{k}={v}" for k, (_, v) in zip(keys, assignments))
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", name)


def expand(sweeps: Sequence[str], resolve: Callable[[list[str]], "ResolvedJob"]) -> list[Element]:
    """Every element of the cross product, resolved by ``resolve(extra --set values)``."""
    axes = parse_sweeps(sweeps)
    elements = []
    for values in itertools.product(*(vals for _, vals in axes)):
        assignments = [(key, value) for (key, _), value in zip(axes, values)]
        sets = [f"{k}={v}" for k, v in assignments]
        try:
            resolved = resolve(sets)
        except UserError as exc:
            raise UserError(f"--sweep element {', '.join(sets)}: {exc}") from None
        elements.append(Element(sets, element_name(assignments), resolved))
    return elements
