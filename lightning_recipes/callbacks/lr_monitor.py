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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

__all__ = ["LRMonitor"]

# Key suffixes, appended to Lightning's own key (`lr-SGD`, `lr-SGD/pg1`, a scheduler `name`)
# the way Lightning appends `-momentum` and `-weight_decay`.
_SCHEDULER = "-scheduler"
_MOMENTUM = "-momentum"
_WEIGHT_DECAY = "-weight_decay"
_MISMATCH = "-lr_mismatch_steps"


@dataclass
class _Tracked:
    """One optimizer as Lightning names it: by its scheduler config, or alone."""

    optimizer: Optimizer
    scheduler: Any | None
    base: str
    names: list[str] = field(default_factory=list)
    # The window of `log_every_n_steps` global steps in which this optimizer was last logged.
    logged_window: int = -1

    def group_names(self) -> list[str]:
        # Param groups can be added during fit (e.g. BackboneFinetuning unfreezes a backbone).
        groups = self.optimizer.param_groups
        if len(self.names) != len(groups):
            self.names = _group_names(self.base, groups)
        return self.names

    def scheduler_lrs(self) -> list[float] | None:
        get_last_lr = getattr(self.scheduler, "get_last_lr", None)
        if not callable(get_last_lr):
            return None
        last = get_last_lr()
        if not isinstance(last, Sequence):
            return None
        return [_to_float(lr) for lr in last]


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
        if log_every_n_steps is not None and (
            not isinstance(log_every_n_steps, int)
            or isinstance(log_every_n_steps, bool)
            or log_every_n_steps < 1
        ):
            raise ValueError(
                "LRMonitor: `log_every_n_steps` must be None or an integer >= 1, got"
                f" {log_every_n_steps!r}"
            )
        for name, value in (("rtol", rtol), ("atol", atol)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"LRMonitor: `{name}` must be a number >= 0, got {value!r}")
        if not isinstance(plot_filename, str) or not plot_filename.endswith(".png"):
            raise ValueError(
                "LRMonitor: `plot_filename` must be a file name ending in .png, got"
                f" {plot_filename!r}"
            )
        self.log_every_n_steps = log_every_n_steps
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.plot = plot
        self.plot_filename = plot_filename
        #: Steps in disagreement so far, by learning-rate key.
        self.mismatch_steps: dict[str, int] = {}
        #: Path of the PNG once written.
        self.plot_path: str | None = None
        self._tracked: list[_Tracked] = []
        self._by_optimizer: dict[int, list[_Tracked]] = {}
        self._history: dict[str, tuple[array, array]] = {}
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
        self._every_n = self.log_every_n_steps or trainer.log_every_n_steps
        self._history = {}
        self._tracked = _tracked_optimizers(trainer)
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
                lr = _to_float(group["lr"])
                metrics[name] = lr
                if scheduler_lrs is not None and i < len(scheduler_lrs):
                    scheduled = scheduler_lrs[i]
                    metrics[name + _SCHEDULER] = scheduled
                    if not math.isclose(scheduled, lr, rel_tol=self.rtol, abs_tol=self.atol):
                        self._disagree(name, optimizer, i, step, scheduled, lr)
                    metrics[name + _MISMATCH] = float(self.mismatch_steps.get(name, 0))
                if self.log_momentum:
                    momentum = _momentum(group)
                    if momentum is not None:
                        metrics[name + _MOMENTUM] = momentum
                if self.log_weight_decay and "weight_decay" in group:
                    metrics[name + _WEIGHT_DECAY] = _to_float(group["weight_decay"])
        for key, value in metrics.items():
            if not key.endswith(_MISMATCH):
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
            f" optimizer.param_groups[{group}]['lr']={lr:.6g}. The optimizer's value is the one"
            " the update uses. Something changed it outside the scheduler (a manual edit of"
            " param_groups, a second scheduler, an LR finder), or the scheduler was rebuilt."
            f" Steps in disagreement are counted under '{name}{_MISMATCH}'; this warning is"
            " shown once per param group."
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
            _plot_history(self._history, self._tracked, self.plot_path)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"mismatch_steps": dict(self.mismatch_steps)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.mismatch_steps = dict(state_dict.get("mismatch_steps", {}))


def _to_float(value: float | Tensor) -> float:
    # torch accepts Tensor learning rates (for capturable/compiled optimizers).
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _momentum(group: dict[str, Any]) -> float | None:
    if "momentum" in group:
        return _to_float(group["momentum"])
    if "betas" in group:
        return _to_float(group["betas"][0])
    return None


def _tracked_optimizers(trainer: pl.Trainer) -> list[_Tracked]:
    """Name every optimizer exactly as Lightning's ``LearningRateMonitor`` does.

    Schedulers first, by their config ``name`` or ``lr-<OptimizerClass>``; then the optimizers
    without a scheduler. Several optimizers of one class get ``-1``, ``-2`` suffixes in order.
    """
    tracked: list[_Tracked] = []
    seen: list[Optimizer] = []
    seen_types: defaultdict[type, int] = defaultdict(int)

    def add(optimizer: Optimizer, scheduler: Any | None, name: str | None) -> None:
        seen.append(optimizer)
        cls = type(optimizer)
        if name is None:
            seen_types[cls] += 1
        base = name if name is not None else f"lr-{cls.__name__}"
        if cls in seen_types and seen_types[cls] > 1:
            base = f"{base}-{seen_types[cls] - 1}"
        names = [g.get("name", f"pg{i + 1}") for i, g in enumerate(optimizer.param_groups)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise MisconfigurationException(
                "A single `Optimizer` cannot have multiple parameter groups with identical"
                f" `name` values. {base} has duplicated parameter group names {duplicates}"
            )
        tracked.append(_Tracked(optimizer, scheduler, base))

    for config in trainer.lr_scheduler_configs:
        add(config.scheduler.optimizer, config.scheduler, config.name)
    for optimizer in trainer.optimizers:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed wraps the optimizer
        if not any(optimizer is other for other in seen):
            add(optimizer, None, None)
    return tracked


def _group_names(base: str, param_groups: list[dict[str, Any]]) -> list[str]:
    if len(param_groups) == 1:
        group_name = param_groups[0].get("name")
        return [f"{base}/{group_name}" if group_name else base]
    return [f"{base}/{g.get('name', f'pg{i + 1}')}" for i, g in enumerate(param_groups)]


def _plot_history(
    history: dict[str, tuple[array, array]], tracked: list[_Tracked], path: str
) -> None:
    # The object-oriented API with the Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lr_keys = [name for entry in tracked for name in entry.names if name in history]
    momentum_keys = [k + _MOMENTUM for k in lr_keys if k + _MOMENTUM in history]
    rows = 2 if momentum_keys else 1
    height = 3.2 * rows
    fig = Figure(figsize=(9, height))
    FigureCanvasAgg(fig)
    # Fixed margins and legend places: a layout engine or loc="best" would draw twice.
    fig.subplots_adjust(
        left=0.09, right=0.98, top=1 - 0.35 / height, bottom=0.5 / height, hspace=0.08
    )
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for i, key in enumerate(lr_keys):
        color = f"C{i % 10}"
        steps, values = history[key]
        axes[0].plot(steps, values, color=color, label=f"{key} (optimizer)")
        if key + _SCHEDULER in history:
            s_steps, s_values = history[key + _SCHEDULER]
            axes[0].plot(s_steps, s_values, color=color, linestyle="--", label=f"{key} (scheduler)")
            off = [
                (step, value)
                for step, value, other in zip(s_steps, s_values, values, strict=False)
                if not math.isclose(value, other, rel_tol=1e-5, abs_tol=1e-12)
            ]
            if off:
                xs, ys = [step for step, _ in off], [value for _, value in off]
                axes[0].scatter(xs, ys, color="red", marker="x", s=12, zorder=3)
    axes[0].set_ylabel("learning rate")
    axes[0].set_title("learning rate per optimizer step (red x: scheduler != optimizer)")
    axes[0].legend(fontsize="small", loc="upper right")
    if momentum_keys:
        for i, key in enumerate(momentum_keys):
            steps, values = history[key]
            axes[1].plot(steps, values, color=f"C{i % 10}", label=key)
        axes[1].set_ylabel("momentum / beta1")
        axes[1].legend(fontsize="small", loc="lower right")
    axes[-1].set_xlabel("optimizer step")
    fig.savefig(path, dpi=100)
