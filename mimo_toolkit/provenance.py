"""Where the code of a run came from: version, git commit, dirty flag and diff hash of the
toolkit and of the recipe file (written into ``job.json`` as ``provenance``), and the code
snapshot a job runs with ``cluster.snapshot=true``.

A snapshot copies the toolkit package and the recipe file into ``RUN_DIR/snapshot`` at
submit time; the launchers put that directory first on ``PYTHONPATH``, so every attempt of
the job (requeues included) imports the code that was submitted, not what is installed when
the attempt starts. Pure Python (git through subprocess); no torch.
"""

from __future__ import annotations

import hashlib
import inspect
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .recipe import Recipe

SNAPSHOT_DIR = "snapshot"
PACKAGE_DIR = Path(__file__).resolve().parent


def preset_file(recipe: "Recipe", preset: str | None) -> str | None:
    """The file that defines the preset's function (the recipe file a user edits)."""
    fn = recipe.presets.get(preset or recipe.default_preset or "")
    try:
        return str(Path(inspect.getsourcefile(fn)).resolve()) if fn is not None else None
    except TypeError:
        return None


def _git(cwd: Path, *args: str) -> bytes | None:
    try:
        proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def source_state(path: str | Path) -> dict[str, Any]:
    """Git state of a file or directory: the commit of its repository, whether it differs
    from that commit (changed or untracked files under it) and the hash of that difference.
    Outside a git checkout (an installed wheel) only the path is known."""
    path = Path(path).resolve()
    where = path if path.is_dir() else path.parent
    state: dict[str, Any] = {"path": str(path), "git_commit": None, "git_dirty": None, "git_diff_sha256": None}
    # One call for the commit and the changes (porcelain v2 heads them with "# branch.oid");
    # the diff is read only when there is one. Rendering pays ~2 git calls per clean path.
    status = _git(where, "status", "--porcelain=v2", "--branch", "--", str(path))
    if status is None:
        return state
    lines = status.decode(errors="replace").splitlines()
    commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), None)
    if commit is None or commit == "(initial)":
        return state
    dirty = any(not line.startswith("#") for line in lines)
    diff = (_git(where, "diff", "HEAD", "--", str(path)) or b"") if dirty else b""
    state.update(git_commit=commit, git_dirty=dirty, git_diff_sha256=hashlib.sha256(diff).hexdigest() if dirty else None)
    return state


def provenance(recipe_file: str | None) -> dict[str, Any]:
    """The ``provenance`` entry of job.json."""
    return {
        "toolkit_version": __version__,
        "toolkit": source_state(PACKAGE_DIR),
        "recipe": source_state(recipe_file) if recipe_file else None,
    }


def snapshot_dir(run_dir: Path) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR


def write_snapshot(run_dir: Path, recipe_file: str | None) -> Path:
    """Copy the toolkit package (and the recipe file) into ``RUN_DIR/snapshot``; returns it.
    The package keeps its templates and built-in recipes (``mimo_toolkit.recipes`` is the
    repository's ``recipes/`` directory in a checkout)."""
    root = snapshot_dir(run_dir)
    target = root / PACKAGE_DIR.name
    if target.exists():
        shutil.rmtree(target)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PACKAGE_DIR, target, ignore=ignore)
    import importlib.util

    for sub in ("recipes", "templates"):  # packages mapped from elsewhere in a checkout
        spec = importlib.util.find_spec(f"{PACKAGE_DIR.name}.{sub}")
        if spec is not None and spec.submodule_search_locations:
            source = Path(list(spec.submodule_search_locations)[0])
            if source.resolve() != (PACKAGE_DIR / sub).resolve():
                shutil.copytree(source, target / sub, ignore=ignore, dirs_exist_ok=True)
    if recipe_file:
        (root / "recipe").mkdir(parents=True, exist_ok=True)
        shutil.copy2(recipe_file, root / "recipe" / Path(recipe_file).name)
    return root
