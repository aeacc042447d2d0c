"""The learning-rate and momentum curve a fit will follow, before any training step.

:func:`preview_schedule` starts the fit the trainer would run (same data, epochs, loader length,
accumulation, ``max_steps``, devices), lets ``configure_optimizers`` build the OneCycle schedule
and resolve its length as at the real first step, reads the schedule at every optimizer step,
and stops before the first batch. The curve is the schedule's own formula evaluated at each
step, so it equals, value for value, what the fit then uses (and :class:`LRMonitor` logs),
as long as no mixed-precision step is skipped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch.optim.lr_scheduler import OneCycleLR
from typing_extensions import override

from lightning_recipes._compat import get_lr_within_step
from lightning_recipes.scheduler import GuardedOneCycleLR

__all__ = ["SchedulePreview", "preview_schedule"]


@dataclass(frozen=True)
class SchedulePreview:
    """The OneCycle schedule of a fit, step by step.

    Attributes:
        lrs: Learning rate of param group 0 at each optimizer step.
        momenta: Its momentum (or Adam's beta1) at each step; empty without ``cycle_momentum``.
        group_lrs: Learning rate of every param group at each step.
        total_steps: Number of optimizer steps of the fit.
    """

    lrs: list[float]
    momenta: list[float]
    group_lrs: list[list[float]]
    total_steps: int

    @property
    def peak_step(self) -> int:
        """The first step with the highest learning rate."""
        return max(range(len(self.lrs)), key=self.lrs.__getitem__)

    def key_points(self) -> dict[str, float]:
        """Start LR, peak step and LR, end LR and the number of optimizer steps."""
        return {
            "total_steps": self.total_steps,
            "start_lr": self.lrs[0],
            "peak_step": self.peak_step,
            "peak_lr": self.lrs[self.peak_step],
            "end_lr": self.lrs[-1],
        }

    def table(self) -> str:
        """The key points as short text lines."""
        points = self.key_points()
        return "\n".join(
            [
                f"optimizer steps  {points['total_steps']}",
                f"start lr         {points['start_lr']:.4g}  (step 0)",
                f"peak lr          {points['peak_lr']:.4g}  (step {points['peak_step']})",
                f"end lr           {points['end_lr']:.4g}  (step {self.total_steps - 1})",
            ]
        )

    def plot(self, path: str | Path) -> Path:
        """Save the learning rate (and momentum) per optimizer step as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(self.lrs, color="tab:blue")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("learning rate", color="tab:blue")
        if self.momenta:
            twin = ax.twinx()
            twin.plot(self.momenta, color="tab:orange")
            twin.set_ylabel("momentum / beta1", color="tab:orange")
        ax.set_title(f"OneCycle preview: {self.total_steps} optimizer steps")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def preview_schedule(
    model: pl.LightningModule,
    trainer: pl.Trainer,
    datamodule: pl.LightningDataModule | None = None,
    *,
    train_dataloaders: Any = None,
) -> SchedulePreview:
    """The LR and momentum curve that ``trainer.fit(model, ...)`` will follow.

    Runs ``trainer.fit`` up to ``on_train_start`` with the trainer's callbacks and loggers set
    aside (nothing is logged or saved), no sanity validation and no training step; the model's
    weights are untouched. Callbacks that change the step count in ``on_fit_start``
    (``BatchSizeFinder``) are not run: preview after tuning.

    Raises:
        ValueError: ``configure_optimizers`` returned no ``OneCycleLR``.

    Example:
        >>> # preview = preview_schedule(model, pl.Trainer(max_epochs=30), datamodule)
        >>> # print(preview.table()); preview.plot("schedule.png")
    """
    capture = _Capture()
    loop = trainer.fit_loop
    saved = (
        trainer.callbacks,  # type: ignore[attr-defined]
        trainer.loggers,
        trainer.num_sanity_val_steps,
        loop.min_epochs,
        loop.epoch_loop.min_steps,
    )
    trainer.callbacks = [capture]  # type: ignore[attr-defined]
    trainer.loggers = []
    trainer.num_sanity_val_steps = 0
    try:
        trainer.fit(model, train_dataloaders=train_dataloaders, datamodule=datamodule)
    finally:
        trainer.callbacks, trainer.loggers, trainer.num_sanity_val_steps = saved[:3]  # type: ignore[attr-defined]
        loop.min_epochs, loop.epoch_loop.min_steps = saved[3:]
        trainer.should_stop = False
    if capture.preview is None:
        raise ValueError(
            f"{type(model).__name__}.configure_optimizers returned no OneCycleLR: there is no"
            " OneCycle schedule to preview."
        )
    return capture.preview


class _Capture(Callback):
    def __init__(self) -> None:
        self.preview: SchedulePreview | None = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
        onecycle = next((s for s in schedulers if isinstance(s, OneCycleLR)), None)
        if onecycle is not None:
            if isinstance(onecycle, GuardedOneCycleLR):
                onecycle.resolve()
            self.preview = _evaluate(onecycle)
        # `done` is read right after `on_train_start`: the fit ends before its first batch.
        trainer.fit_loop.min_epochs = 0
        trainer.fit_loop.epoch_loop.min_steps = 0
        trainer.should_stop = True


class _Groups:
    """Copies of a scheduler's param groups: its formula is evaluated on them, not on the
    optimizer, so the preview changes nothing the fit will use."""

    def __init__(self, groups: list[dict[str, Any]]) -> None:
        self.param_groups = [{k: v for k, v in g.items() if k != "params"} for g in groups]


def _evaluate(scheduler: OneCycleLR) -> SchedulePreview:
    sim = copy.copy(scheduler)
    groups = _Groups(scheduler.optimizer.param_groups)
    sim.optimizer = groups  # type: ignore[assignment]
    key = "betas" if getattr(scheduler, "use_beta1", False) else "momentum"
    lrs: list[list[float]] = []
    momenta: list[float] = []
    with get_lr_within_step(sim):
        for step in range(scheduler.total_steps):
            sim.last_epoch = step
            lrs.append([float(lr) for lr in sim.get_lr()])
            if scheduler.cycle_momentum:
                value = groups.param_groups[0][key]
                momenta.append(float(value[0] if key == "betas" else value))
    return SchedulePreview(
        lrs=[row[0] for row in lrs],
        momenta=momenta,
        group_lrs=lrs,
        total_steps=int(scheduler.total_steps),
    )
