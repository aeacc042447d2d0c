"""The ``lightning-recipes`` command: a LightningCLI over any OneCycleModule and data module.

``main`` is the entry point of ``lightning-recipes`` and ``python -m lightning_recipes``;
``RecipesCLI`` is the LightningCLI behind it and ``RecipesTrainer`` the trainer that gives it
the ``lr_find`` and ``preview`` subcommands. The modules below are the command's parts: its
parser (``_parser``), short errors (``_errors``), linked arguments (``_links``), filtered
upstream output (``_quiet``) and its view of a run's checkpoints and summary (``_runs``).
"""

from lightning_recipes.cli._command import TRACEBACK_ENV, RecipesCLI, main
from lightning_recipes.cli._trainer import RecipesTrainer

__all__ = ["TRACEBACK_ENV", "RecipesCLI", "RecipesTrainer", "main"]
