"""``RecipesTrainer`` at the path it was first published under.

The trainer lives with the command it serves, in :mod:`lightning_recipes.cli`; this module
keeps ``from lightning_recipes.trainer import RecipesTrainer`` (and a config or pickle that
names ``lightning_recipes.trainer.RecipesTrainer``) working.
"""

from lightning_recipes.cli._trainer import RecipesTrainer

__all__ = ["RecipesTrainer"]
