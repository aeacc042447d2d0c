"""A ``OneCycleLR`` that knows when the optimizer really stepped and when a resume changed the plan.

torch's :class:`~torch.optim.lr_scheduler.OneCycleLR` has two traps under Lightning:

* With ``precision="16-mixed"`` the ``GradScaler`` skips ``optimizer.step()`` on overflowing
  gradients, yet Lightning still calls ``scheduler.step()`` (Lightning issue 5558). The schedule
  then runs ahead of the real updates and torch warns ``lr_scheduler.step() before
  optimizer.step()``.
* ``total_steps`` is part of the scheduler's ``state_dict``. Resuming with settings that change
  the step count (more epochs, another device count) silently restores the old total, and the
  run dies later with ``Tried to step N times``.

A third comes from the order of a fit: ``configure_optimizers`` runs before the callbacks'
``on_fit_start``, where ``BatchSizeFinder`` changes the batch size (so the step count) and
``LearningRateFinder`` the peak learning rate. Given a ``resolver``, :class:`GuardedOneCycleLR`
fixes its length and peak right before the first real optimizer step instead.

:class:`GuardedOneCycleLR` handles all three inside the scheduler itself, so no LightningModule
hook (which a user may override without calling ``super()``) is needed for any.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR
from typing_extensions import override

from lightning_recipes._compat import (
    get_lr_within_step,
    onecycle_anneal,
    set_last_lr,
    steps_with_amp_scaling,
)

__all__ = [
    "GuardedOneCycleLR",
    "ScheduleMismatchError",
    "ScheduleProgress",
    "check_total_steps",
    "schedule_progress",
]

#: What a resolver returns: the schedule's total number of optimizer steps and the peak LR of
#: each param group, or ``None`` when the schedule cannot be fixed yet.
ScheduleTarget = tuple[int, list[float]]
Resolver = Callable[[], "ScheduleTarget | None"]

_SKIP_MODES = ("hold", "advance")
_MISMATCH_MODES = ("error", "rescale")


class ScheduleMismatchError(RuntimeError):
    """A checkpoint's OneCycle schedule has a different total step count than this run."""


class GuardedOneCycleLR(OneCycleLR):
    """:class:`~torch.optim.lr_scheduler.OneCycleLR` that holds on skipped steps and checks resumes.

    It takes every argument of torch's ``OneCycleLR`` and produces exactly the same learning
    rates and momenta as long as every ``scheduler.step()`` follows a real ``optimizer.step()``.

    Args:
        optimizer: The wrapped optimizer.
        max_lr: Peak learning rate, one float or one per param group.
        total_steps: Number of optimizer steps the schedule spans.
        on_skipped_step: ``"hold"`` (default): a ``step()`` that follows no ``optimizer.step()``
            (an AMP overflow skip) leaves the schedule where it is, so the schedule's position
            always equals the number of real parameter updates. ``"advance"``: torch's behaviour.
        on_schedule_mismatch: What :meth:`load_state_dict` does with a state whose
            ``total_steps`` differs from this scheduler's. ``"error"`` (default) raises
            :class:`ScheduleMismatchError` naming both counts. ``"rescale"`` keeps the progress
            fraction reached in the checkpoint and squeezes or stretches the rest of the schedule
            so that it ends exactly at this scheduler's ``total_steps``.
        resolver: A callable returning ``(total_steps, max_lrs)`` (one peak per param group), or
            ``None`` while they cannot be known yet. With a resolver the schedule is
            *unresolved* at first: it holds at its first step, and right before the first
            optimizer step after which the resolver answers (and when a checkpoint of a
            resolved schedule is loaded) it takes the resolver's total and peaks.
            :class:`~lightning_recipes.OneCycleModule` passes one that reads
            ``trainer.estimated_stepping_batches`` and ``max_lr`` once training really starts,
            after ``BatchSizeFinder`` and ``LearningRateFinder`` ran. The callable is not part
            of :meth:`state_dict`; the ``resolved`` flag is.
        **kwargs: Any other ``OneCycleLR`` argument (``pct_start``, ``div_factor``, ...).

    A phase of zero length (``pct_start * total_steps == 1``, e.g. 4 steps at
    ``pct_start=0.25``), where torch divides by zero, is passed at once: the step that both
    starts and ends it takes the phase's end value.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> sched = GuardedOneCycleLR(opt, max_lr=0.1, total_steps=10)
        >>> sched.step()  # no optimizer.step() happened: the schedule holds
        >>> sched.last_epoch
        0
        >>> opt.step(); sched.step()
        >>> sched.last_epoch
        1
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | list[float],
        total_steps: int,
        *,
        on_skipped_step: Literal["hold", "advance"] = "hold",
        on_schedule_mismatch: Literal["error", "rescale"] = "error",
        resolver: Resolver | None = None,
        **kwargs: Any,
    ) -> None:
        if on_skipped_step not in _SKIP_MODES:
            raise ValueError(
                f"`on_skipped_step` must be one of {_SKIP_MODES}, got {on_skipped_step!r}"
            )
        if on_schedule_mismatch not in _MISMATCH_MODES:
            raise ValueError(
                f"`on_schedule_mismatch` must be one of {_MISMATCH_MODES},"
                f" got {on_schedule_mismatch!r}"
            )
        self.on_skipped_step = on_skipped_step
        self.on_schedule_mismatch = on_schedule_mismatch
        # (real step at resume, schedule position at resume) once a resume was rescaled.
        self.rescale_anchor: tuple[int, float] | None = None
        # Number of real optimizer steps since the last scheduler step. A post hook counts them:
        # GradScaler does not call `optimizer.step()` when it skips, so the hook never fires then.
        self._pending_updates = 0
        self._fused_found_inf: torch.Tensor | None = None
        self._hook = optimizer.register_step_post_hook(self._on_optimizer_step)
        # torch's defaults; kept to rebuild the phases and the group LRs when resolving.
        self._pct_start = float(kwargs.get("pct_start", 0.3))
        self._three_phase = bool(kwargs.get("three_phase", False))
        self._div_factor = float(kwargs.get("div_factor", 25.0))
        self._final_div_factor = float(kwargs.get("final_div_factor", 1e4))
        self._resolver = resolver
        #: False until the resolver fixed the total and the peaks (always True without one).
        self.resolved = resolver is None
        super().__init__(optimizer, max_lr=max_lr, total_steps=total_steps, **kwargs)
        self._pre_hook = optimizer.register_step_pre_hook(self._before_optimizer_step)

    def resolve(self) -> bool:
        """Fix ``total_steps`` and the peaks from the resolver now, unless already done.

        Only an unresolved schedule, which has not left its first step, is changed: its phases,
        each group's ``max_lr``, ``initial_lr``, ``min_lr`` and its current LR and momentum
        follow the resolver's answer.

        Returns:
            Whether the schedule is resolved (False while the resolver answers ``None``).
        """
        if self.resolved or self._resolver is None:  # unresolved only with a resolver
            return True
        target = self._resolver()
        if target is None:
            return False
        total, peaks = target
        groups = self.optimizer.param_groups
        if len(peaks) != len(groups):
            raise ValueError(
                f"The OneCycle resolver returned {len(peaks)} peak LRs for an optimizer with"
                f" {len(groups)} param groups; return one `max_lr` per param group."
            )
        self.total_steps = total
        self._schedule_phases = _phases(total, self._pct_start, self._three_phase)  # type: ignore[assignment]
        default_lr, old_peak = self.optimizer.defaults.get("lr"), groups[0].get("max_lr")
        if isinstance(default_lr, (int, float)) and old_peak and peaks[0] != old_peak:
            # The optimizer's own lr (used by groups added later) moves with the peaks.
            scaled = peaks[0] if default_lr == old_peak else default_lr * peaks[0] / old_peak
            self.optimizer.defaults["lr"] = scaled
        for group, peak in zip(groups, peaks, strict=True):
            group["max_lr"] = peak
            group["initial_lr"] = peak / self._div_factor
            group["min_lr"] = group["initial_lr"] / self._final_div_factor
        self.base_lrs = [group["initial_lr"] for group in groups]
        self.resolved = True
        self._refresh()
        return True

    @property
    def progress(self) -> ScheduleProgress:
        """How far the schedule got: see :func:`schedule_progress`."""
        return schedule_progress(self)

    def _before_optimizer_step(
        self, optimizer: Optimizer, args: Any, kwargs: dict[str, Any]
    ) -> None:
        # A pre hook, so that the step's own LR (at step 0: max_lr / div_factor) already uses
        # the resolved peak.
        if not self.resolved:
            self.resolve()

    def _refresh(self) -> None:
        """Write the LR (and momentum) of the current position into the param groups."""
        with get_lr_within_step(self):
            lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        set_last_lr(self, [group["lr"] for group in self.optimizer.param_groups])

    def _on_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: dict[str, Any]) -> None:
        self._pending_updates += 1
        # GradScaler always calls fused optimizers (`_step_supports_amp_scaling`), which skip the
        # update inside the kernel; the `found_inf` tensor it attaches is the only trace of a skip.
        if steps_with_amp_scaling(optimizer):
            self._fused_found_inf = getattr(optimizer, "found_inf", None)

    def _optimizer_stepped(self) -> bool:
        if self._pending_updates == 0:
            return False
        if self._fused_found_inf is not None:
            # One host sync per step, only for fused optimizers under GradScaler.
            return not bool(self._fused_found_inf.item())
        return True

    @override
    def step(self, epoch: int | None = None) -> None:
        # `_initial_step` in `LRScheduler.__init__` (step count 0) precedes any update.
        # GradScaler skips `optimizer.step()` (and so the pre hook) on overflow: resolve here
        # too, so that "advance" advances over a skipped first step of the real schedule.
        if self._step_count > 0 and epoch is None and not self.resolve():
            # Steps the resolver cannot place are a tuner's trials (BatchSizeFinder), which
            # restores the checkpoint it saved before them: hold at the first step meanwhile.
            self._pending_updates = 0
            self._fused_found_inf = None
            return
        if (
            self._step_count > 0
            and epoch is None
            and self.on_skipped_step == "hold"
            and not self._optimizer_stepped()
        ):
            return
        self._pending_updates = 0
        self._fused_found_inf = None
        super().step(epoch)

    @override
    def get_lr(self) -> list[float | torch.Tensor]:
        # torch's `OneCycleLR.get_lr`, with a rescaled position after a rescaled resume and
        # zero-length phases passed at once instead of dividing by zero.
        real = self.last_epoch
        if real > self.total_steps:
            raise ValueError(
                f"Tried to step {real} times. The specified number of total steps is"
                f" {self.total_steps}"
            )
        position = (
            float(real)
            if self.rescale_anchor is None
            else _position(self.rescale_anchor, real, self.total_steps)
        )
        # Lightning steps the scheduler once more after the last update; torch's formula then
        # runs past the end of the cosine and the LR rises again. No update uses that value,
        # but logs and summaries read it: stay at the schedule's end (min_lr) instead.
        position = min(position, float(self.total_steps - 1))
        phases = self._schedule_phases
        lrs: list[float | torch.Tensor] = []
        for group in self.optimizer.param_groups:
            start = 0.0
            for i, phase in enumerate(phases):
                end = phase["end_step"]
                if position <= end or i == len(phases) - 1:
                    span = end - start
                    pct = (position - start) / span if span > 0 else 1.0
                    lrs.append(
                        onecycle_anneal(self, group[phase["start_lr"]], group[phase["end_lr"]], pct)
                    )
                    if self.cycle_momentum:
                        momentum = onecycle_anneal(
                            self, group[phase["start_momentum"]], group[phase["end_momentum"]], pct
                        )
                        if self.use_beta1:
                            group["betas"] = (momentum, *group["betas"][1:])
                        else:
                            group["momentum"] = momentum
                    break
                start = end
        return lrs

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # The hooks and the resolver are bound to this run's objects; checkpoints stay plain.
        for key in ("_hook", "_pre_hook", "_resolver", "_pending_updates", "_fused_found_inf"):
            state.pop(key, None)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A checkpoint saved before the schedule was resolved (a tuner's, before its trials)
        # restores the unresolved schedule; one of a resolved schedule (checkpoints of earlier
        # versions have no flag and were resolved at build time) is compared with this run's
        # real total, so resolve first.
        saved_resolved = bool(state_dict.get("resolved", True))
        if not saved_resolved:
            state = dict(state_dict)
            if self._resolver is None:  # no way to resolve later: keep this run's own plan
                state["resolved"] = True
            super().load_state_dict(state)
            return
        self.resolve()
        saved_total = state_dict.get("total_steps")
        if saved_total is None or saved_total == self.total_steps:
            super().load_state_dict({**state_dict, "resolved": self.resolved})
            # Resolving wrote the first step's LR into the groups; restore the saved position's.
            self._refresh()
            return
        done = int(state_dict["last_epoch"])
        anchor = state_dict.get("rescale_anchor")
        saved_pos = float(done) if anchor is None else _position(anchor, done, saved_total)
        fraction = saved_pos / max(saved_total - 1, 1)
        if self.on_schedule_mismatch == "error":
            raise ScheduleMismatchError(
                f"The checkpoint's OneCycle schedule spans total_steps={saved_total} optimizer"
                f" steps ({done} done, {fraction:.1%} of the schedule), but this run's"
                f" `trainer.estimated_stepping_batches` gives total_steps={self.total_steps}."
                " The step count depends on max_epochs, max_steps, limit_train_batches,"
                " accumulate_grad_batches, the batch size and the number of devices. Resume with"
                " the settings the checkpoint was trained with, or set"
                " `on_schedule_mismatch='rescale'` to keep the progress fraction and end the"
                f" schedule exactly at step {self.total_steps}."
            )
        if done >= self.total_steps - 1:
            raise ScheduleMismatchError(
                f"Cannot rescale the OneCycle schedule: the checkpoint already made {done}"
                f" optimizer steps, but this run's schedule has only total_steps="
                f"{self.total_steps}. Raise max_epochs or max_steps above the steps already done."
            )
        keep = {
            key: value
            for key, value in state_dict.items()
            if key not in ("total_steps", "_schedule_phases", "rescale_anchor", "resolved")
            and key not in ("on_schedule_mismatch", "on_skipped_step")
        }
        self.__dict__.update(keep)
        self.rescale_anchor = (done, fraction * (self.total_steps - 1))
        # Recompute the current LR and momentum at the new position, as a fresh step would.
        self._refresh()


def _phases(total: int, pct_start: float, three_phase: bool) -> list[dict[str, Any]]:
    """torch's ``OneCycleLR`` phases for ``total`` steps (its ``_schedule_phases``)."""
    up = {"start_lr": "initial_lr", "end_lr": "max_lr"}
    up_momentum = {"start_momentum": "max_momentum", "end_momentum": "base_momentum"}
    if three_phase:
        return [
            {"end_step": float(pct_start * total) - 1, **up, **up_momentum},
            {
                "end_step": float(2 * pct_start * total) - 2,
                "start_lr": "max_lr",
                "end_lr": "initial_lr",
                "start_momentum": "base_momentum",
                "end_momentum": "max_momentum",
            },
            {
                "end_step": total - 1,
                "start_lr": "initial_lr",
                "end_lr": "min_lr",
                "start_momentum": "max_momentum",
                "end_momentum": "max_momentum",
            },
        ]
    return [
        {"end_step": float(pct_start * total) - 1, **up, **up_momentum},
        {
            "end_step": total - 1,
            "start_lr": "max_lr",
            "end_lr": "min_lr",
            "start_momentum": "base_momentum",
            "end_momentum": "max_momentum",
        },
    ]


@dataclass(frozen=True)
class ScheduleProgress:
    """How far a OneCycle schedule got: ``step`` optimizer steps of ``total``.

    Attributes:
        step: Optimizer steps the schedule advanced (its ``last_epoch``).
        total: The schedule's ``total_steps``.
        lr: The current learning rate of param group 0 (the next step's).
        min_lr: Where the schedule of param group 0 ends.

    Example:
        >>> ScheduleProgress(step=57, total=380, lr=0.066, min_lr=4e-7)
        ScheduleProgress(step=57, total=380, lr=0.066, min_lr=4e-07)
        >>> str(ScheduleProgress(step=57, total=380, lr=0.066, min_lr=4e-7))
        'step 57 of 380 (15.0%), lr=0.066 (min_lr=4e-07)'
    """

    step: int
    total: int
    lr: float
    min_lr: float

    @property
    def fraction(self) -> float:
        """``step / total``."""
        return self.step / self.total

    @property
    def finished(self) -> bool:
        """Whether the schedule reached its last step (its LR annealed to ``min_lr``)."""
        return self.step >= self.total

    def __str__(self) -> str:
        return (
            f"step {self.step} of {self.total} ({self.fraction:.1%}), lr={self.lr:.3g}"
            f" (min_lr={self.min_lr:.3g})"
        )


def schedule_progress(scheduler: OneCycleLR) -> ScheduleProgress:
    """How far a ``OneCycleLR`` (torch's or :class:`GuardedOneCycleLR`) got.

    For a summary at the end of a fit: ``schedule_progress(trainer.lr_scheduler_configs[0]
    .scheduler)``. A fit that stopped early (``EarlyStopping``, ``max_time``, an interruption)
    has ``finished == False`` and an LR above ``min_lr``.

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)
        >>> sched = GuardedOneCycleLR(opt, max_lr=0.1, total_steps=10)
        >>> opt.step(); sched.step()
        >>> progress = schedule_progress(sched)
        >>> progress.step, progress.total, progress.finished
        (1, 10, False)
    """
    group = scheduler.optimizer.param_groups[0]
    return ScheduleProgress(
        step=int(scheduler.last_epoch),
        total=int(scheduler.total_steps),
        lr=float(group["lr"]),
        min_lr=float(group.get("min_lr", float("nan"))),
    )


def _position(anchor: tuple[int, float], step: int, total: int) -> float:
    """The schedule position (in torch's step units) that real step ``step`` maps to.

    Real steps from the resume point ``anchor[0]`` to the last one, ``total - 1``, map linearly
    onto the positions from ``anchor[1]`` to ``total - 1``: the schedule ends at the new total.
    """
    real0, pos0 = anchor
    last = total - 1
    if step >= last:
        # The last update lands on the schedule's end; the extra `step()` Lightning makes after
        # the final update stays there too.
        return float(last)
    return pos0 + (last - pos0) * (step - real0) / (last - real0)


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
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps


def check_total_steps(total: float, trainer: Any) -> int:
    """Validate ``trainer.estimated_stepping_batches`` for a OneCycle schedule.

    Raises:
        ValueError: The count is infinite or unknown; the message names the cause and the fix.
    """
    if total == -1 or (isinstance(total, float) and math.isinf(total)):
        if getattr(trainer, "max_epochs", None) == -1:
            cause = (
                "`max_epochs=-1` (train forever) without `max_steps`, so the total number of"
                " optimizer steps is infinite"
            )
        else:
            cause = (
                "the train dataloader has no length (an IterableDataset or a generator) and"
                " `max_steps` is not set, so the number of optimizer steps is unknown"
            )
        raise ValueError(
            f"OneCycleLR needs a finite number of optimizer steps, but {cause}. Set"
            " `Trainer(max_steps=N)`, or give the train dataloader a `__len__` and a finite"
            " `max_epochs`."
        )
    total = int(total)
    if total <= 0:
        raise ValueError(
            f"OneCycleLR needs at least one optimizer step, got total_steps={total} from"
            " `trainer.estimated_stepping_batches`. Check `max_epochs`, `max_steps`,"
            " `limit_train_batches` and that the train dataloader is not empty."
        )
    return total
