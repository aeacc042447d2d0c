"""``RecipesTrainer``: Lightning's Trainer with the one-cycle workflow's first steps as methods.

LightningCLI turns Trainer methods into subcommands, so these two give
``lightning-recipes lr_find`` and ``lightning-recipes preview`` the same ``--config`` (data,
epochs, devices, accumulation) as ``fit``. In Python, call :func:`~lightning_recipes.lr_find`
and :func:`~lightning_recipes.preview_schedule` with any ``pl.Trainer``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lightning_recipes._lr_suggestions import LRFindResult, SuggestionRule
from lightning_recipes.lr_find import lr_find
from lightning_recipes.preview import SchedulePreview, preview_schedule

__all__ = ["RecipesTrainer"]


class RecipesTrainer(pl.Trainer):
    """A ``pl.Trainer`` with :meth:`lr_find` and :meth:`preview`; everything else is Lightning's.

    Both methods take the module and its data as ``fit`` does: ``model`` (a OneCycle module),
    and ``datamodule`` or, when there is no data module, ``train_dataloaders``.
    """

    def lr_find(
        self,
        model: pl.LightningModule,
        train_dataloaders: Any = None,
        datamodule: pl.LightningDataModule | None = None,
        min_lr: float = 1e-7,
        max_lr: float = 10.0,
        num_training: int = 100,
        rule: SuggestionRule = "valley",
        plot: str | None = "lr_find.png",
    ) -> LRFindResult:
        """Run an LR range test and set its suggestion as OneCycle's max_lr.

        Args:
            min_lr: First learning rate of the sweep.
            max_lr: Last learning rate of the sweep.
            num_training: Number of sweep steps.
            rule: Suggestion rule used as ``max_lr``: ``valley``, ``steep`` or ``minimum``.
            plot: PNG of loss against LR, relative to ``default_root_dir``; ``None``: none.
        """
        path = None if plot is None else Path(self.default_root_dir) / plot
        run = functools.partial(lr_find, model, self, datamodule, rule=rule, plot_path=path)
        result = run(
            train_dataloaders=train_dataloaders,
            min_lr=min_lr,
            max_lr=max_lr,
            num_training=num_training,
        )
        title = f"LR range test, {len(result.lrs)} steps from {min_lr:g} to {max_lr:g}"
        self._report(title, result.table(), lambda: result.plot_path)
        return result

    def preview(
        self,
        model: pl.LightningModule,
        train_dataloaders: Any = None,
        datamodule: pl.LightningDataModule | None = None,
        plot: str | None = "schedule_preview.png",
    ) -> SchedulePreview:
        """Show the LR and momentum curve a fit will follow, with no training step.

        Args:
            plot: PNG of the curve, relative to ``default_root_dir``; ``None``: none.
        """
        result = preview_schedule(model, self, datamodule, train_dataloaders=train_dataloaders)
        path = None if plot is None else Path(self.default_root_dir) / plot
        self._report(
            "OneCycle schedule of this fit",
            result.table(),
            lambda: None if path is None else result.plot(path),
        )
        return result

    def _report(self, title: str, table: str, plot: Callable[[], Path | None]) -> None:
        """Print a title, a table and the plot's path, once (on global rank zero)."""
        if not self.is_global_zero:
            return
        print(f"\n{title}:")
        print(table)
        path = plot()
        if path is not None:
            print(f"plot: {path}")
