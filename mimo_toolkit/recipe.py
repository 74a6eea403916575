"""Recipes: Python files whose presets are functions returning a :class:`JobConfig`.

A recipe module defines ``recipe = Recipe(name, description)`` and decorates preset
functions with ``@recipe.preset("name")``. Variants are made by calling a base preset and
changing the result, so a user's cluster preset is a few lines in their own file::

    from mimo_toolkit.recipes.llava import recipe as llava

    @llava.preset("mycluster")
    def mycluster():
        job = llava.build("4node")
        job.cluster.partition = "batch"
        job.cluster.account = "my-account"
        return job

A file like this one, with no ``recipe`` of its own, *extends* the recipe its presets are
registered on: loading it gives that recipe with the file's presets first, the first of
them the default (``mimo-toolkit submit mycluster.py --preset mycluster``).

``RECIPE`` on the command line is a built-in name (``llava``), a ``.py`` path (its
``recipe`` object, or the recipe it extends), or ``module:attr`` / ``path.py:attr`` naming
a Recipe or a function returning a JobConfig. Directories in ``$MIMO_TOOLKIT_RECIPE_PATH``
(colon separated) are searched for ``<name>.py`` after the built-in recipes and are listed
by ``recipes``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import JobConfig
from .errors import UserError

PresetFn = Callable[[], JobConfig]
RECIPE_PATH_ENV = "MIMO_TOOLKIT_RECIPE_PATH"


class Recipe:
    """A named family of presets (model + layout + training + cluster settings)."""

    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self.presets: dict[str, PresetFn] = {}
        self.default_preset: str | None = None
        self.source: str = ""
        self.extends: str | None = None
        """Set on the view of a file that only adds presets to this recipe (its name)."""
        self.own_presets: list[str] = []
        """The presets that file defines (``extends`` set)."""

    def preset(self, name: str | None = None, *, default: bool = False) -> Callable[[PresetFn], PresetFn]:
        """Register a preset function under ``name`` (default: the function's name)."""

        def register(fn: PresetFn) -> PresetFn:
            key = name or fn.__name__
            self.presets[key] = fn
            if default or self.default_preset is None:
                self.default_preset = key
            return fn

        return register

    def build(self, preset: str | None = None) -> JobConfig:
        """A fresh JobConfig of ``preset`` (the default preset when None)."""
        key = preset or self.default_preset
        if key not in self.presets:
            hint = _closest(key or "", self.presets)
            raise UserError(
                f"recipe {self.name!r} has no preset {key!r}{hint}; presets: {', '.join(self.presets)}"
            )
        job = self.presets[key]()
        if not isinstance(job, JobConfig):
            raise UserError(f"preset {self.name}:{key} returned {type(job).__name__}, not a JobConfig")
        # A preset built from another (`llava.build("4node")`) carries that one's default
        # job name; the default name is always this recipe's and preset's.
        if not job.job_name or job.job_name == f"{job.recipe}-{job.preset}":
            job.job_name = f"{self.name}-{key}"
        job.recipe = self.name
        job.preset = key
        return job


@dataclass(frozen=True)
class RecipeEntry:
    name: str
    """What to type as RECIPE (a built-in name, or a file's stem on the search path)."""
    origin: str
    """'built-in' or the search-path directory."""
    spec: str
    """What :func:`load_recipe` loads (the name, or the file's path)."""
    shadowed: bool = False
    """A file whose name a built-in recipe (or an earlier file) takes."""


def _closest(word: str, choices) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _builtin_dir() -> Path:
    import mimo_toolkit.recipes as pkg

    return Path(pkg.__file__).parent


def _search_dirs() -> list[Path]:
    extra = os.environ.get(RECIPE_PATH_ENV, "")
    return [Path(p) for p in extra.split(os.pathsep) if p]


def iter_recipes() -> Iterator[RecipeEntry]:
    """Built-in recipes, then recipe files found on ``$MIMO_TOOLKIT_RECIPE_PATH``."""
    seen = set()
    for info in sorted(pkgutil.iter_modules([str(_builtin_dir())]), key=lambda i: i.name):
        if not info.name.startswith("_"):
            seen.add(info.name)
            yield RecipeEntry(info.name, "built-in", info.name)
    for directory in _search_dirs():
        for path in sorted(directory.glob("*.py")):
            if not path.name.startswith("_"):
                yield RecipeEntry(path.stem, str(directory), str(path), shadowed=path.stem in seen)
                seen.add(path.stem)


def _load_file(path: Path):
    if not path.is_file():
        raise UserError(f"recipe file {str(path)!r} does not exist")
    mod_name = f"_mimo_recipe_{abs(hash(str(path.resolve())))}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except UserError:
        raise
    except Exception as exc:  # a user's file: report, do not crash with a traceback
        del sys.modules[mod_name]
        raise UserError(f"recipe file {str(path)!r} failed to import: {type(exc).__name__}: {exc}") from None
    return module


def _as_recipe(obj, label: str) -> Recipe:
    if isinstance(obj, Recipe):
        return obj
    if callable(obj):  # a single preset function
        recipe = Recipe(getattr(obj, "__name__", label), (obj.__doc__ or "").strip().split("\n")[0])
        recipe.preset(getattr(obj, "__name__", "default"), default=True)(obj)
        return recipe
    raise UserError(f"{label} is neither a Recipe nor a function returning a JobConfig")


def load_recipe(spec: str) -> Recipe:
    """Resolve ``RECIPE`` as given on the command line."""
    attr = None
    target = spec
    if ":" in spec:
        target, attr = spec.rsplit(":", 1)
    if target.endswith(".py") or os.sep in target:
        module = _load_file(Path(target))
        origin = str(Path(target))
    elif attr is not None:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UserError(f"cannot import recipe module {target!r}: {exc}") from None
        origin = target
    else:
        module, origin = _load_named(spec)
    if attr is None and not hasattr(module, "recipe"):
        recipe = _extended_recipe(module, origin)
    else:
        name = attr or "recipe"
        if not hasattr(module, name):
            raise UserError(f"{origin} has no attribute {name!r}")
        recipe = _as_recipe(getattr(module, name), f"{origin}:{name}")
    recipe.source = origin
    return recipe


def _extended_recipe(module, origin: str) -> Recipe:
    """The recipe a file without ``recipe`` adds presets to (``@llava.preset(...)``), as a
    view: the file's presets first (the first is the default), then the recipe's own."""
    found: dict[int, tuple[Recipe, list[str]]] = {}
    for obj in vars(module).values():
        if isinstance(obj, Recipe):
            own = [k for k, fn in obj.presets.items() if getattr(fn, "__module__", None) == module.__name__]
            if own:
                found[id(obj)] = (obj, own)
    if len(found) != 1:
        named = ", ".join(sorted(r.name for r, _ in found.values()))
        raise UserError(
            f"{origin} has no `recipe = Recipe(...)` and "
            + (f"adds presets to several recipes ({named}); give it a `recipe`" if found else
               "registers no preset (decorate preset functions with `@<recipe>.preset(\"name\")`)")
        )
    base, own = next(iter(found.values()))
    if own == list(base.presets):  # the file's own Recipe, under another name than `recipe`
        return base
    view = Recipe(base.name, base.description)
    view.presets = {k: base.presets[k] for k in own} | {k: f for k, f in base.presets.items() if k not in own}
    view.default_preset = own[0]
    view.extends, view.own_presets = base.name, own
    return view


def _load_named(name: str):
    if (_builtin_dir() / f"{name}.py").is_file():
        return importlib.import_module(f"mimo_toolkit.recipes.{name}"), f"mimo_toolkit.recipes.{name}"
    for directory in _search_dirs():
        path = directory / f"{name}.py"
        if path.is_file():
            return _load_file(path), str(path)
    known = [e.name for e in iter_recipes() if e.origin == "built-in"]
    raise UserError(f"unknown recipe {name!r}{_closest(name, known)}; recipes: {', '.join(known)}")
