"""``mimo-toolkit recipes``: the recipes and their presets, with the presets' docstrings."""

from __future__ import annotations

import click

from ..errors import UserError
from .common import Command


@click.command(cls=Command)
def recipes() -> None:
    """List recipes and their presets.

    Built-in recipes come first, then *.py files in the directories of
    $MIMO_TOOLKIT_RECIPE_PATH. "(default)" marks the preset used without --preset.

    \b
    Example:
      mimo-toolkit recipes
      MIMO_TOOLKIT_RECIPE_PATH=~/my_recipes mimo-toolkit recipes
    """
    from ..recipe import iter_recipes, load_recipe

    for entry in iter_recipes():
        try:
            recipe = load_recipe(entry.name)
        except UserError as exc:  # one broken user file should not hide the others
            click.echo(f"{entry.name}  (cannot load: {exc})")
            continue
        origin = "" if entry.origin == "built-in" else f"  [{entry.origin}]"
        click.echo(f"{recipe.name}  {recipe.description}{origin}")
        width = max(len(_label(recipe, p)) for p in recipe.presets) if recipe.presets else 0
        for preset in recipe.presets:
            click.echo(f"  {_label(recipe, preset):<{width}}  {_summary(recipe.presets[preset].__doc__)}")


def _summary(doc: str | None) -> str:
    """The docstring's first paragraph on one line."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _label(recipe, preset: str) -> str:
    return f"{preset} (default)" if preset == recipe.default_preset else preset
