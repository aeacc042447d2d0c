"""Whether a fit's scheduler configs step its per-step schedules once per optimizer step.

One check for every caller: :class:`~lightning_recipes.OneCycleModule` raises the first problem
at fit start, and a sanity rule can report the same problems as warnings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR

from lightning_recipes.scheduler._guarded import GuardedOneCycleLR

__all__ = ["PER_STEP_SCHEDULERS", "SchedulerProblem", "check_scheduler_configs"]

#: Schedulers whose learning rate is defined per optimizer step, not per epoch.
PER_STEP_SCHEDULERS = (OneCycleLR, CyclicLR)

_FIX = "return `self.onecycle_scheduler(optimizer)` as that optimizer's `lr_scheduler`"


@dataclass(frozen=True)
class SchedulerProblem:
    """One way the scheduler configs of a fit break a per-step schedule.

    Attributes:
        kind: ``"interval"``: a per-step scheduler is stepped per epoch or only every N steps.
            ``"plain"``: torch's ``OneCycleLR`` where a :class:`GuardedOneCycleLR` is required
            (it keeps stepping on AMP-skipped steps and cannot check a resume). ``"missing"``:
            no :class:`GuardedOneCycleLR` where one is required.
        message: What is wrong and the fix, one to three lines.
        config: The config at fault; ``None`` for ``"missing"``.
    """

    kind: Literal["interval", "plain", "missing"]
    message: str
    config: LRSchedulerConfig | None = None

    def error(self, owner: str) -> TypeError | ValueError:
        """The exception for a module class named ``owner``: ``TypeError`` for ``"plain"``."""
        message = f"{owner}.configure_optimizers: {self.message}"
        return TypeError(message) if self.kind == "plain" else ValueError(message)


def check_scheduler_configs(
    configs: Iterable[LRSchedulerConfig],
    *,
    automatic_optimization: bool = True,
    require_guarded: bool = False,
) -> list[SchedulerProblem]:
    """The problems of ``trainer.lr_scheduler_configs`` for schedules defined per optimizer step.

    Args:
        configs: The parsed configs, e.g. ``trainer.lr_scheduler_configs``.
        automatic_optimization: Whether Lightning steps the schedulers. Under manual
            optimization the module steps them itself, and ``interval``/``frequency`` are not
            checked.
        require_guarded: The rules of :class:`~lightning_recipes.OneCycleModule`: at least
            one :class:`GuardedOneCycleLR`, and no plain torch ``OneCycleLR``.

    Returns:
        Every problem found, in the order of ``configs``; empty when all is well.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)
        >>> sched = GuardedOneCycleLR(opt, max_lr=0.1, total_steps=10)
        >>> check_scheduler_configs([LRSchedulerConfig(sched, interval="step")])
        []
        >>> [p.kind for p in check_scheduler_configs([LRSchedulerConfig(sched)])]
        ['interval']
    """
    problems = []
    found = False
    for config in configs:
        scheduler = config.scheduler
        if not isinstance(scheduler, PER_STEP_SCHEDULERS):
            continue
        kind = type(scheduler).__name__
        label = f"{kind} '{config.name}'" if config.name else kind
        if automatic_optimization and (config.interval != "step" or config.frequency != 1):
            message = (
                f"{label} is configured with interval={config.interval!r},"
                f" frequency={config.frequency}. {kind} is defined per optimizer step and must be"
                " stepped per batch: return it with `'interval': 'step', 'frequency': 1`."
            )
            problems.append(SchedulerProblem("interval", message, config))
        if require_guarded and isinstance(scheduler, OneCycleLR):
            if isinstance(scheduler, GuardedOneCycleLR):
                found = True
            else:
                message = (
                    "returned torch's plain OneCycleLR, which keeps stepping on AMP-skipped steps"
                    f" and cannot check a resume; {_FIX}."
                )
                problems.append(SchedulerProblem("plain", message, config))
    if require_guarded and not found and not any(p.kind == "plain" for p in problems):
        message = (
            f"returned no OneCycle scheduler; {_FIX}, or inherit from LightningModule for"
            " another schedule."
        )
        problems.append(SchedulerProblem("missing", message))
    return problems


def raise_for_onecycle_module(module: pl.LightningModule) -> None:
    """Raise the first problem of ``module``'s fit under the OneCycleModule rules, if any."""
    problems = check_scheduler_configs(
        module.trainer.lr_scheduler_configs,
        automatic_optimization=module.automatic_optimization,
        require_guarded=True,
    )
    if problems:
        raise problems[0].error(type(module).__name__)
