"""Rules ``scheduler_interval``, ``onecycle_lr`` and ``schedule_end``: the cyclic LR schedules."""

from __future__ import annotations

import math
from collections.abc import Mapping

import lightning.pytorch as pl
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR

from lightning_recipes.callbacks.sanity._modes import Mode, _Rules
from lightning_recipes.scheduler import (
    GuardedOneCycleLR,
    check_scheduler_configs,
    schedule_progress,
)
from lightning_recipes.scheduler._steps import _steps_before_swa, _steps_of_this_run


class _SchedulerRules(_Rules):
    """Checks at train start, at each epoch start in manual optimization, and at the fit's end."""

    def __init__(self, modes: Mapping[str, Mode], warned: set[str]) -> None:
        super().__init__(modes, warned)
        # Rule `scheduler_interval` in manual optimization: positions at the last epoch start.
        self._epoch_start: tuple[int, list[int]] | None = None

    def train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = None
        if self._on("scheduler_interval"):
            self._check_scheduler_interval(trainer, pl_module)
        if self._on("onecycle_lr"):
            self._check_onecycle_lr(trainer)

    def epoch_boundary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At each training epoch's start and at train end: the progress over the epoch."""
        if self._on("scheduler_interval") and not pl_module.automatic_optimization:
            self._check_cyclic_progress(trainer)

    def train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_boundary(trainer, pl_module)
        self.fit_stopped(trainer, "the fit stopped")

    def fit_stopped(self, trainer: pl.Trainer, how: str) -> None:
        if self._on("schedule_end"):
            self._check_schedule_end(trainer, how)

    # ------------------------------------------------------------------ rule: scheduler_interval
    def _check_scheduler_interval(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The same check as OneCycleModule's at fit start, reported by this rule's mode.
        automatic = pl_module.automatic_optimization
        configs = trainer.lr_scheduler_configs
        for problem in check_scheduler_configs(configs, automatic_optimization=automatic):
            key = f"interval:{id(problem.config.scheduler if problem.config else None)}"
            self._report("scheduler_interval", key, problem.message)
        if not automatic:
            return
        for config in configs:
            if isinstance(config.scheduler, OneCycleLR):
                name = type(config.scheduler).__name__
                label = f"{name} '{config.name}'" if config.name else name
                self._check_total_steps(trainer, config.scheduler, label)

    def _check_total_steps(self, trainer: pl.Trainer, scheduler: OneCycleLR, label: str) -> None:
        if isinstance(scheduler, GuardedOneCycleLR) and not scheduler.resolve():
            # Fixes its total now, after the callbacks that change it ran in `on_fit_start`;
            # one that cannot be resolved is never stepped (SWALR replaces it at epoch 0).
            return
        if math.isinf(trainer.estimated_stepping_batches):
            return  # an infinite fit: nothing to compare with
        expected = _steps_of_this_run(trainer)
        source = f"trainer.estimated_stepping_batches={trainer.estimated_stepping_batches}"
        if trainer.global_step:
            source = f"this resumed run ends at optimizer step {expected}"
        swa = _steps_before_swa(trainer)
        if swa is not None:
            # SWA swaps the scheduler for SWALR (and adds an epoch with BatchNorm): the
            # OneCycle only runs until then.
            expected, swa_epoch = swa
            source = (
                f"StochasticWeightAveraging replaces it with SWALR at epoch {swa_epoch}, after"
                f" {expected} optimizer steps"
            )
        steps_left = int(expected) - trainer.global_step
        # `last_epoch` counts the scheduler's steps; torch raises once it exceeds total_steps.
        schedule_left = scheduler.total_steps - int(scheduler.last_epoch)
        if schedule_left == steps_left:
            return
        needed = int(scheduler.last_epoch) + steps_left
        if schedule_left < steps_left:
            effect = (
                f"torch raises 'Tried to step {scheduler.total_steps + 1} times' at optimizer"
                f" step {schedule_left + 1} of {steps_left}"
            )
        else:
            who = "SWALR takes over" if swa is not None else "the fit ends"
            effect = (
                f"{who} {schedule_left - steps_left} steps before the schedule ends, so"
                " the learning rate never anneals to min_lr"
            )
        self._report(
            "scheduler_interval",
            f"total:{id(scheduler)}",
            f"{label} has total_steps={scheduler.total_steps} ({schedule_left} left), but the"
            f" trainer will take {steps_left} more optimizer steps ({source}): {effect}. Fix:"
            f" total_steps={needed}.",
        )

    def _check_cyclic_progress(self, trainer: pl.Trainer) -> None:
        """Manual optimization: a cyclic scheduler advancing once per epoch while steps happen."""
        schedulers = [
            c.scheduler
            for c in trainer.lr_scheduler_configs
            if isinstance(c.scheduler, (OneCycleLR, CyclicLR))
        ]
        if not schedulers:
            return
        now = (trainer.global_step, [int(s.last_epoch) for s in schedulers])
        before, self._epoch_start = self._epoch_start, now
        if before is None:
            return
        steps = now[0] - before[0]
        for scheduler, start, end in zip(schedulers, before[1], now[1], strict=True):
            advanced = end - start
            if steps >= 2 and advanced <= 1:
                self._report(
                    "scheduler_interval",
                    f"progress:{id(scheduler)}",
                    f"{type(scheduler).__name__} advanced {advanced} time(s) over an epoch of"
                    f" {steps} optimizer steps: it is stepped per epoch. Fix: call"
                    " `self.lr_schedulers().step()` after each `optimizer.step()`.",
                )

    # ------------------------------------------------------------------ rule: schedule_end
    def _check_schedule_end(self, trainer: pl.Trainer, how: str) -> None:
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, OneCycleLR):
                continue
            progress = schedule_progress(scheduler)
            if progress.finished:
                continue
            self._report(
                "schedule_end",
                f"end:{id(scheduler)}",
                f"{how} at global step {trainer.global_step}: {_label(config.name)} stopped after"
                f" optimizer step {progress.step} of {progress.total} ({progress.fraction:.1%}) of"
                f" its OneCycle schedule, at lr={progress.lr:.3g} (it anneals to"
                f" min_lr={progress.min_lr:.3g} at the end). Fix: set max_epochs / max_steps to"
                " the length you train, or evaluate the best checkpoint.",
            )

    # ------------------------------------------------------------------ rule: onecycle_lr
    def _check_onecycle_lr(self, trainer: pl.Trainer) -> None:
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, OneCycleLR):
                continue
            groups = scheduler.optimizer.param_groups
            label = _label(config.name)
            for g, group in enumerate(groups):
                initial, peak = group.get("initial_lr"), group.get("max_lr")
                if initial is None or peak is None or initial <= peak:
                    continue
                self._report(
                    "onecycle_lr",
                    f"start:{id(scheduler)}:{g}",
                    f"{label} param group {g} starts at initial_lr={initial:.6g}, above its peak"
                    f" max_lr={peak:.6g} (div_factor={peak / initial:.6g} < 1), so its warm-up"
                    " lowers the LR. Fix: div_factor > 1, typically 25.",
                )
            own_lr = scheduler.optimizer.defaults.get("lr")
            peaks = [g["max_lr"] for g in groups if "max_lr" in g]
            if isinstance(own_lr, (int, float)) and peaks and max(peaks) < own_lr:
                self._report(
                    "onecycle_lr",
                    f"below:{id(scheduler)}",
                    f"{label} peaks at max_lr={max(peaks):.6g}, below the optimizer's own"
                    f" lr={own_lr:.6g}, which OneCycle never uses (it starts at max_lr /"
                    f" div_factor). Fix: if lr={own_lr:.6g} is the tuned value, pass it as max_lr.",
                )


def _label(name: str | None) -> str:
    return f"OneCycleLR '{name}'" if name else "OneCycleLR"
