"""How far a OneCycle schedule got, for the summary at the end of a fit."""

from __future__ import annotations

from dataclasses import dataclass

from torch.optim.lr_scheduler import OneCycleLR

__all__ = ["ScheduleProgress", "schedule_progress"]


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
        >>> import torch
        >>> from lightning_recipes.scheduler import GuardedOneCycleLR
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
