"""A ``OneCycleLR`` that knows when the optimizer really stepped and when a resume changed the plan.

torch's :class:`~torch.optim.lr_scheduler.OneCycleLR` has two traps under Lightning:

* With ``precision="16-mixed"`` the ``GradScaler`` skips ``optimizer.step()`` on overflowing
  gradients, yet Lightning still calls ``scheduler.step()`` (Lightning issue 5558). The schedule
  then runs ahead of the real updates and torch warns ``lr_scheduler.step() before
  optimizer.step()``.
* ``total_steps`` is part of the scheduler's ``state_dict``. Resuming with settings that change
  the step count (more epochs, another device count) silently restores the old total, and the
  run dies later with ``Tried to step N times``.

:class:`GuardedOneCycleLR` fixes both inside the scheduler itself, so no LightningModule hook
(which a user may override without calling ``super()``) is needed for either.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR
from typing_extensions import override

__all__ = ["GuardedOneCycleLR"]

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
        **kwargs: Any other ``OneCycleLR`` argument (``pct_start``, ``div_factor``, ...).

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
        super().__init__(optimizer, max_lr=max_lr, total_steps=total_steps, **kwargs)

    def _on_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: dict[str, Any]) -> None:
        self._pending_updates += 1
        # GradScaler always calls fused optimizers (`_step_supports_amp_scaling`), which skip the
        # update inside the kernel; the `found_inf` tensor it attaches is the only trace of a skip.
        if getattr(optimizer, "_step_supports_amp_scaling", False):
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
        if self.rescale_anchor is None:
            return super().get_lr()
        real = self.last_epoch
        if real > self.total_steps:
            raise ValueError(
                f"Tried to step {real} times. The specified number of total steps is"
                f" {self.total_steps}"
            )
        self.last_epoch = _position(self.rescale_anchor, real, self.total_steps)  # type: ignore[assignment]
        try:
            return super().get_lr()
        finally:
            self.last_epoch = real

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for key in ("_hook", "_pending_updates", "_fused_found_inf"):
            state.pop(key, None)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_total = state_dict.get("total_steps")
        if saved_total is None or saved_total == self.total_steps:
            super().load_state_dict(state_dict)
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
            if key not in ("total_steps", "_schedule_phases", "rescale_anchor")
            and key not in ("on_schedule_mismatch", "on_skipped_step")
        }
        self.__dict__.update(keep)
        self.rescale_anchor = (done, fraction * (self.total_steps - 1))
        # Recompute the current LR and momentum at the new position, as a fresh step would.
        self._get_lr_called_within_step = True
        try:
            lrs = self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


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
