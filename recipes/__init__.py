"""Built-in recipes (installed as ``mimo_toolkit.recipes``).

Each module here defines ``recipe = Recipe(...)`` and its presets. Files whose name starts
with an underscore are not recipes. Add a file here (or to a directory on
``$MIMO_TOOLKIT_RECIPE_PATH``) to add a recipe; see ``mimo_toolkit.recipe``.
"""
