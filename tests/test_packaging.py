"""The wheel ships every package: a non-editable install (``pip install .``, a wheel unpacked
with ``--target`` on a GPU machine) once lacked ``mimo_toolkit.costs``, ``.schedulers`` and
``.validation`` because pyproject.toml lists its packages by hand, and every test ran on the
editable install, which finds them anyway."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_in_the_wheel():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    mapped = setuptools["package-dir"]  # package -> directory, relative to the repository
    on_disk = set()
    for package, directory in mapped.items():
        root = REPO / directory
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            if package == "mimo_toolkit" and relative[:1] in (("recipes",), ("templates",)):
                continue
            on_disk.add(".".join((package, *relative)))
    assert on_disk - listed == set(), "packages missing from pyproject.toml's [tool.setuptools] packages"
    assert listed - on_disk == set(), "pyproject.toml lists packages that do not exist"
