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
:func:`check_scheduler_configs` says whether a fit steps its per-step schedules per optimizer
step.

The package holds one concept a module: the scheduler (``_guarded``), the phases and the
rescaled position (``_phases``), the resume check (``_mismatch``), the step count and the
resolver (``_steps``), the config check (``_configs``) and the progress summary (``_progress``).
"""

from lightning_recipes.scheduler._configs import (
    PER_STEP_SCHEDULERS,
    SchedulerProblem,
    check_scheduler_configs,
)
from lightning_recipes.scheduler._guarded import GuardedOneCycleLR, Resolver, ScheduleTarget
from lightning_recipes.scheduler._mismatch import ScheduleMismatchError
from lightning_recipes.scheduler._progress import ScheduleProgress, schedule_progress

# The two private step counts are also read by the sanity checks' scheduler rules.
from lightning_recipes.scheduler._steps import (
    check_total_steps,
)

__all__ = [
    "PER_STEP_SCHEDULERS",
    "GuardedOneCycleLR",
    "Resolver",
    "ScheduleMismatchError",
    "ScheduleProgress",
    "ScheduleTarget",
    "SchedulerProblem",
    "check_scheduler_configs",
    "check_total_steps",
    "schedule_progress",
]
