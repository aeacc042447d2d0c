"""How many optimizer steps a OneCycle spans, and the resolver that fixes it at fit start."""

from __future__ import annotations

import math
from typing import Any, Protocol, cast

import lightning.pytorch as pl

from lightning_recipes.scheduler._configs import raise_for_onecycle_module
from lightning_recipes.scheduler._guarded import GuardedOneCycleLR

__all__ = ["OneCycleResolver", "check_total_steps"]


class _HasMaxLR(Protocol):
    max_lr: float


def _max_lr(module: pl.LightningModule) -> float:
    """The OneCycle peak of a module that has one (every OneCycleModule)."""
    return float(cast(_HasMaxLR, module).max_lr)


class OneCycleResolver:
    """The real total and peaks of a module's OneCycle, once training really starts.

    ``configure_optimizers`` runs before the callbacks' ``on_fit_start``, where the tuners
    change the batch size or ``max_lr``; the schedule asks this right before its first real
    optimizer step instead. It also checks the fit's scheduler configs then
    (:func:`~lightning_recipes.scheduler.check_scheduler_configs`), so that a module whose
    ``on_fit_start`` skipped the check still stops before its first update.

    Args:
        module: The module; its ``max_lr`` is read at resolve time.
        peaks: Each param group's peak when the schedule was built.
        callbacks: The trainer's callback list when the schedule was built; the tuners swap it.
    """

    def __init__(
        self, module: pl.LightningModule, peaks: list[float], callbacks: list[pl.Callback]
    ) -> None:
        self.module = module
        self.peaks = peaks
        self.built_max_lr = _max_lr(module)
        self.callbacks = callbacks
        #: The schedule this resolver serves; set once it is built.
        self.scheduler: GuardedOneCycleLR | None = None

    def __call__(self) -> tuple[int, list[float]] | None:
        try:
            trainer = self.module.trainer
        except RuntimeError:  # the module left its trainer
            return None
        # Tuner trials: LearningRateFinder swaps in its own scheduler, and both finders swap
        # `trainer.callbacks` for their own list until they restore their checkpoint. Their
        # steps must not fix the schedule.
        active = any(c.scheduler is self.scheduler for c in trainer.lr_scheduler_configs)
        callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set at run time
        if not active or callbacks is not self.callbacks:
            return None
        raise_for_onecycle_module(self.module)
        swa = _steps_before_swa(trainer)
        if swa is None:
            total = _steps_of_this_run(trainer)
        elif swa[0] > 0:
            total = swa[0]  # StochasticWeightAveraging's SWALR takes over from there
        else:
            return None  # SWALR replaces the schedule before its first step: it never runs
        # LearningRateFinder(attr_name="max_lr") writes the suggestion to `max_lr`: every
        # group's peak moves by the same factor, so per-group ratios hold.
        max_lr = _max_lr(self.module)
        factor = max_lr / self.built_max_lr
        return total, [
            max_lr if peak == self.built_max_lr else peak * factor for peak in self.peaks
        ]


def _steps_before_swa(trainer: Any) -> tuple[int, int] | None:
    """Optimizer steps before ``StochasticWeightAveraging`` swaps in SWALR, and that epoch.

    ``None`` without the callback, or before its ``on_fit_start`` turned a fractional
    ``swa_epoch_start`` into an epoch, or when the epoch length is unknown.
    """
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    swa = next((cb for cb in trainer.callbacks if isinstance(cb, StochasticWeightAveraging)), None)
    if swa is None or trainer.max_epochs == -1:
        return None
    try:
        start = swa.swa_start
    except AssertionError:  # a fractional `swa_epoch_start` before its on_fit_start
        return None
    batches = trainer.num_training_batches
    if not isinstance(start, int) or math.isinf(batches):
        return None
    steps = math.ceil(batches / trainer.accumulate_grad_batches) * start
    if trainer.max_steps != -1:
        steps = min(steps, trainer.max_steps)
    return steps, start


def _steps_of_this_run(trainer: Any) -> int:
    """The optimizer step at which this run will end: ``estimated_stepping_batches``, or for a
    resumed run the steps already made plus what the rest of this run makes.

    Lightning's estimate is ``max_epochs`` epochs at this run's epoch length; after a resume
    with another device count or batch size the epochs already done had another length, and
    the run ends elsewhere. The loops' state is restored before the schedule's, so the resume
    point is known when the schedule loads.
    """
    total = check_total_steps(trainer.estimated_stepping_batches, trainer)
    done = trainer.global_step
    batches = trainer.num_training_batches
    max_epochs = trainer.max_epochs
    if done == 0 or math.isinf(batches) or max_epochs is None or max_epochs < 0:
        return total
    accumulate = trainer.accumulate_grad_batches
    per_epoch = math.ceil(batches / accumulate)
    # Epochs whose training batches all ran, and the optimizer steps of the epoch in progress.
    # A checkpoint can be saved after the last batch of an epoch but before the epoch counts
    # as processed (a batch-end or epoch-end save): the batch progress says that it was the
    # last batch, which holds whether the state is read at load time or after the restart.
    batch_progress = trainer.fit_loop.epoch_loop.batch_progress
    last_batch = bool(batch_progress.is_last_batch)
    epochs_done = trainer.fit_loop.epoch_progress.current.started - 1 + last_batch
    in_epoch = 0 if last_batch else batch_progress.current.processed // accumulate
    rest = per_epoch * (max_epochs - epochs_done) - in_epoch
    steps = done + rest
    return int(min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps)


def check_total_steps(total: float, trainer: Any) -> int:
    """Validate ``trainer.estimated_stepping_batches`` for a OneCycle schedule.

    The count is infinite with ``max_epochs=-1`` (train forever) and no ``max_steps``, and
    unknown when the train dataloader has no ``__len__`` (an ``IterableDataset`` or a
    generator) and ``max_steps`` is not set.

    Raises:
        ValueError: The count is infinite or unknown; the message names the cause and the fix.
    """
    if total == -1 or (isinstance(total, float) and math.isinf(total)):
        if getattr(trainer, "max_epochs", None) == -1:
            cause = "`max_epochs=-1` without `max_steps` makes the step count infinite"
        else:
            cause = "the train dataloader has no length and no `max_steps` is set"
        raise ValueError(
            f"OneCycleLR needs a finite number of optimizer steps, but {cause}; set"
            " `Trainer(max_steps=N)`, or a train dataloader with a length and finite `max_epochs`."
        )
    total = int(total)
    if total <= 0:
        raise ValueError(
            f"OneCycleLR needs at least one optimizer step, got total_steps={total} from"
            " `trainer.estimated_stepping_batches`; check `max_epochs`, `max_steps`,"
            " `limit_train_batches` and the train dataloader."
        )
    return total
