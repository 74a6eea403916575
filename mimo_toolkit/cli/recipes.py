"""``mimo-toolkit recipes``: the recipes and their presets, with the presets' docstrings."""

from __future__ import annotations

import click

from ..errors import UserError
from .common import Command


@click.command(cls=Command)
def recipes() -> None:
    """List recipes and their presets.

    Built-in recipes come first, then *.py files in the directories of
    $MIMO_TOOLKIT_RECIPE_PATH (use a file's name without .py as RECIPE).
    "(default)" marks the preset used without --preset.

    \b
    Example:
      mimo-toolkit recipes
      MIMO_TOOLKIT_RECIPE_PATH=~/my_recipes mimo-toolkit recipes
    """
    from ..recipe import iter_recipes, load_recipe

    for entry in iter_recipes():
        origin = "" if entry.origin == "built-in" else f"  [{entry.spec}]"
        if entry.shadowed:
            click.echo(f"{entry.name}  (not used: an earlier recipe has this name){origin}")
            continue
        try:
            recipe = load_recipe(entry.spec)
        except UserError as exc:  # one broken user file should not hide the others
            click.echo(f"{entry.name}  (cannot load: {exc}){origin}")
            continue
        if recipe.extends:
            shown = recipe.own_presets
            click.echo(f"{entry.name}  presets for {recipe.extends} ({recipe.description}){origin}")
        else:
            shown = list(recipe.presets)
            click.echo(f"{entry.name}  {recipe.description}{origin}")
        width = max(len(_label(recipe, p)) for p in shown) if shown else 0
        for preset in shown:
            click.echo(f"  {_label(recipe, preset):<{width}}  {_summary(recipe.presets[preset].__doc__)}")
        if recipe.extends:
            others = [p for p in recipe.presets if p not in shown]
            click.echo(f"  (and {recipe.extends}'s presets: {', '.join(others)})")


def _summary(doc: str | None) -> str:
    """The docstring's first paragraph on one line."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _label(recipe, preset: str) -> str:
    return f"{preset} (default)" if preset == recipe.default_preset else preset
