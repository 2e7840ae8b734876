"""Recipes: each a configuration over the shared parts, declared as a :class:`~gen4d.recipes.recipe.Recipe`.

:data:`RECIPES` is the registry the command line is built from (``gen4d image|video|text|... --recipe NAME``).
"""

from . import animate124, dg4d, dreamin4d, fourdfy, invert, motion, motion_sample, reconstruct, subject, text2video4d
from .recipe import Option, Recipe

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    reconstruct.RECIPE, dg4d.RECIPE, text2video4d.RECIPE, fourdfy.RECIPE, dreamin4d.RECIPE, motion.RECIPE, motion_sample.RECIPE,
    animate124.RECIPE, invert.RECIPE, subject.RECIPE,
)}


def recipes_for(command: str) -> list[Recipe]:
    """The recipes a command can run, its default first."""
    return [r for r in RECIPES.values() if command in r.commands]


__all__ = ["RECIPES", "Option", "Recipe", "recipes_for"]
