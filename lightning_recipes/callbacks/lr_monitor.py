"""``LRMonitor``: the scheduler's learning rate beside the optimizer's, once per optimizer step.

Lightning's :class:`~lightning.pytorch.callbacks.LearningRateMonitor` logs
``optimizer.param_groups[i]["lr"]`` at the start of every training batch, so under gradient
accumulation it writes the same value once per micro-batch, and it never shows the scheduler's
own view. The two can disagree: an LR finder's value overwritten by ``OneCycleLR``, a manual
edit of ``param_groups``, a second scheduler on the same optimizer, or code that reads
``scheduler.get_lr()`` (a step-internal method that returns the *next* value, pytorch issue
31871) instead of ``scheduler.get_last_lr()``.

:class:`LRMonitor` reads both in ``on_before_optimizer_step``, which Lightning calls exactly once
per optimizer step (after the closure and the gradient unscaling, before the update) in automatic
and in manual optimization, so the value logged at step ``k`` is the learning rate that update
``k`` uses. Like Lightning's monitor, it also puts its values into ``trainer.callback_metrics``,
so ``EarlyStopping`` and ``ModelCheckpoint`` can monitor them.
"""

from __future__ import annotations

import math
import os
from array import array
from collections import defaultdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_recipes._validation import check_bool, check_int, check_positive, check_str
from lightning_recipes.callbacks._lr_keys import (
    MISMATCH,
    MOMENTUM,
    SCHEDULER,
    WEIGHT_DECAY,
    Tracked,
    momentum,
    to_float,
    tracked_optimizers,
)
from lightning_recipes.callbacks._lr_plot import plot_history

__all__ = ["LRMonitor"]


class LRMonitor(Callback):
    """Log the scheduler's and the optimizer's learning rate, momentum and weight decay.

    Once per optimizer step (never per micro-batch), for every optimizer and param group, the
    callback logs under Lightning's key names, extended:

    * ``lr-SGD`` (or ``lr-SGD/pg1``, ``lr-SGD/<group name>``, the scheduler config's ``name``):
      ``optimizer.param_groups[i]["lr"]``, the value the update uses, as Lightning logs it;
    * ``lr-SGD-scheduler``: ``scheduler.get_last_lr()[i]``, for optimizers with a scheduler that
      has ``get_last_lr``;
    * ``lr-SGD-momentum``: ``momentum``, or ``betas[0]`` for the Adam family (OneCycle cycles it);
    * ``lr-SGD-weight_decay``: ``weight_decay``;
    * ``lr-SGD-lr_mismatch_steps``: how many steps so far the two learning rates disagreed.

    The value logged at step ``k`` is the one optimizer step ``k`` (0-based, ``trainer.global_step``
    before the update) uses. When the scheduler and the optimizer disagree beyond ``rtol`` /
    ``atol``, the callback warns once per param group with the optimizer, the group, the step and
    both values. Each optimizer is logged when it steps, so in manual optimization with several
    optimizers each one appears at the steps it takes. At the end of training, a PNG of the
    learning rate and momentum per step is written to ``<trainer.log_dir>/lr_schedule.png``.

    Every value is also written to ``trainer.callback_metrics`` (as a CPU tensor, at every
    optimizer step, logged or not), as Lightning's ``LearningRateMonitor`` does, so
    ``EarlyStopping(monitor="lr-SGD")`` or ``ModelCheckpoint(monitor="lr-SGD")`` see the value of
    the latest step.

    Reading the values costs a few Python float reads per param group and step, and writing
    them to ``callback_metrics`` one small CPU tensor per value, with no host-device
    synchronisation unless a learning rate is itself a CUDA tensor.

    Args:
        log_every_n_steps: Log each optimizer once in every window of this many global steps,
            at the first step it takes in the window: with one optimizer, steps
            ``0, n, 2n, ...``; with optimizers that take turns in manual optimization, each
            one at its own steps (one stepping on odd steps is not lost to an even ``n``).
            ``None`` uses the trainer's ``log_every_n_steps`` (0 there: never). The disagreement
            check, ``callback_metrics`` and the plot's history use every step regardless.
        log_momentum: Log momentum / beta1 where the optimizer has one.
        log_weight_decay: Log weight decay where the optimizer has one.
        rtol: Relative tolerance of the scheduler/optimizer comparison.
        atol: Absolute tolerance of the scheduler/optimizer comparison.
        plot: Write the PNG at the end of training.
        plot_filename: File name of the PNG inside ``trainer.log_dir``.

    Raises:
        MisconfigurationException: At fit start, if the trainer has no logger; and, as
            Lightning's monitor does, if one optimizer has two param groups with the same
            ``name``.

    Example:
        >>> monitor = LRMonitor(log_every_n_steps=1)
        >>> monitor.mismatch_steps  # filled during fit: {"lr-SGD": 0, ...}
        {}
        >>> # pl.Trainer(callbacks=[monitor], logger=CSVLogger("runs")).fit(model)
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        *,
        log_momentum: bool = True,
        log_weight_decay: bool = True,
        rtol: float = 1e-5,
        atol: float = 1e-12,
        plot: bool = True,
        plot_filename: str = "lr_schedule.png",
    ) -> None:
        # Errors name the callback: in a config with several, a bare "`rtol` ..." says not whose.
        try:
            self.log_every_n_steps: int | None = check_int(
                log_every_n_steps, "log_every_n_steps", minimum=1, optional=True
            )
            self.log_momentum = check_bool(log_momentum, "log_momentum")
            self.log_weight_decay = check_bool(log_weight_decay, "log_weight_decay")
            self.rtol = check_positive(rtol, "rtol", allow_zero=True)
            self.atol = check_positive(atol, "atol", allow_zero=True)
            self.plot = check_bool(plot, "plot")
            self.plot_filename = check_str(plot_filename, "plot_filename")
            if not plot_filename.endswith(".png"):
                raise ValueError(f"`plot_filename` must end in .png, got {plot_filename!r}")
        except (TypeError, ValueError) as error:
            raise type(error)(f"LRMonitor: {error}") from None
        #: Steps in disagreement so far, by learning-rate key.
        self.mismatch_steps: dict[str, int] = {}
        #: Path of the PNG once written.
        self.plot_path: str | None = None
        self._tracked: list[Tracked] = []
        self._by_optimizer: dict[int, list[Tracked]] = {}
        self._history: dict[str, tuple[array[int], array[float]]] = {}
        self._warned: set[str] = set()
        self._every_n = 1

    @property
    def history(self) -> dict[str, tuple[list[int], list[float]]]:
        """Every recorded value of this fit, ``{key: (steps, values)}``, logged or not."""
        return {key: (list(steps), list(values)) for key, (steps, values) in self._history.items()}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise MisconfigurationException(
                "LRMonitor needs a logger, but the Trainer has none (`logger=False`). Pass"
                " `Trainer(logger=CSVLogger(...))` or another logger, or remove LRMonitor."
            )
        # A new fit starts counting afresh; a resumed one gets its counts from the checkpoint,
        # which Lightning loads after `setup`.
        self.mismatch_steps = {}
        self._warned = set()
        self.plot_path = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Set on the trainer by Lightning's logger connector, not declared on the class.
        trainer_every_n: int = trainer.log_every_n_steps  # type: ignore[attr-defined]
        self._every_n = self.log_every_n_steps or trainer_every_n
        self._history = {}
        self._tracked = tracked_optimizers(trainer)
        if self._every_n and trainer.global_step:
            # A resumed fit logs where the uninterrupted one would: from the next window on.
            for entry in self._tracked:
                entry.logged_window = (trainer.global_step - 1) // self._every_n
        self._by_optimizer = defaultdict(list)
        for entry in self._tracked:
            self._by_optimizer[id(entry.optimizer)].append(entry)
            for name in entry.group_names():
                if entry.scheduler_lrs() is not None:
                    self.mismatch_steps.setdefault(name, 0)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer
        entries = self._by_optimizer.get(id(optimizer))
        if not entries:
            return
        step = trainer.global_step
        metrics: dict[str, float] = {}
        for entry in entries:
            scheduler_lrs = entry.scheduler_lrs()
            for i, (group, name) in enumerate(
                zip(optimizer.param_groups, entry.group_names(), strict=True)
            ):
                lr = to_float(group["lr"])
                metrics[name] = lr
                if scheduler_lrs is not None and i < len(scheduler_lrs):
                    scheduled = scheduler_lrs[i]
                    metrics[name + SCHEDULER] = scheduled
                    if not math.isclose(scheduled, lr, rel_tol=self.rtol, abs_tol=self.atol):
                        self._disagree(name, optimizer, i, step, scheduled, lr)
                    metrics[name + MISMATCH] = float(self.mismatch_steps.get(name, 0))
                if self.log_momentum:
                    beta = momentum(group)
                    if beta is not None:
                        metrics[name + MOMENTUM] = beta
                if self.log_weight_decay and "weight_decay" in group:
                    metrics[name + WEIGHT_DECAY] = to_float(group["weight_decay"])
        for key, value in metrics.items():
            if not key.endswith(MISMATCH):
                steps, values = self._history.setdefault(key, (array("q"), array("d")))
                steps.append(step)
                values.append(value)
        # CPU tensors, as `self.log` would store them but without a copy to the device (a
        # host-device synchronisation); EarlyStopping and ModelCheckpoint accept them.
        trainer.callback_metrics.update(
            {key: torch.tensor(value, dtype=torch.float64) for key, value in metrics.items()}
        )
        if not self._every_n:  # Trainer(log_every_n_steps=0): never
            return
        # Each optimizer once per window of `_every_n` global steps, at its first step there:
        # `step % n == 0` would never log an optimizer that steps only on odd steps.
        window = step // self._every_n
        if any(entry.logged_window != window for entry in entries):
            for entry in entries:
                entry.logged_window = window
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def _disagree(
        self, name: str, optimizer: Optimizer, group: int, step: int, scheduled: float, lr: float
    ) -> None:
        self.mismatch_steps[name] = self.mismatch_steps.get(name, 0) + 1
        if name in self._warned:
            return
        self._warned.add(name)
        rank_zero_warn(
            f"LRMonitor: the scheduler and the optimizer disagree on the learning rate of"
            f" {type(optimizer).__name__} param group {group} ('{name}') at step {step}:"
            f" scheduler.get_last_lr()[{group}]={scheduled:.6g},"
            f" optimizer.param_groups[{group}]['lr']={lr:.6g}. The update uses the optimizer's"
            f" value, set outside the scheduler; steps counted under '{name}{MISMATCH}'."
        )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.plot or not self._history:
            return
        # `log_dir` broadcasts from rank 0, so every rank must ask for it.
        log_dir = trainer.log_dir or trainer.default_root_dir
        if trainer.is_global_zero:
            os.makedirs(log_dir, exist_ok=True)
            self.plot_path = os.path.join(log_dir, self.plot_filename)
            plot_history(self._history, self._tracked, self.plot_path)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"mismatch_steps": dict(self.mismatch_steps)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.mismatch_steps = dict(state_dict.get("mismatch_steps", {}))
