"""Lightning's learning-rate key names: each optimizer and param group as it names them.

:class:`~lightning_recipes.callbacks.lr_monitor.LRMonitor` logs under the keys of Lightning's
``LearningRateMonitor`` (``lr-SGD``, ``lr-SGD/pg1``, a scheduler config's ``name``), extended by
the suffixes below, so that its values sit beside Lightning's in every logger.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.optim import Optimizer

# Key suffixes, appended to Lightning's own key the way Lightning appends `-momentum` and
# `-weight_decay`.
SCHEDULER = "-scheduler"
MOMENTUM = "-momentum"
WEIGHT_DECAY = "-weight_decay"
MISMATCH = "-lr_mismatch_steps"


@dataclass
class Tracked:
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
        return [to_float(lr) for lr in last]


def to_float(value: float | Tensor) -> float:
    # torch accepts Tensor learning rates (for capturable/compiled optimizers).
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def momentum(group: dict[str, Any]) -> float | None:
    if "momentum" in group:
        return to_float(group["momentum"])
    if "betas" in group:
        return to_float(group["betas"][0])
    return None


def tracked_optimizers(trainer: pl.Trainer) -> list[Tracked]:
    """Name every optimizer exactly as Lightning's ``LearningRateMonitor`` does.

    Schedulers first, by their config ``name`` or ``lr-<OptimizerClass>``; then the optimizers
    without a scheduler. Several optimizers of one class get ``-1``, ``-2`` suffixes in order.

    Written again on purpose: Lightning keeps this naming in private methods of
    ``LearningRateMonitor`` (``_find_names_from_schedulers``, ``_find_names_from_optimizers``),
    which take the monitor's own state; tests/test_lr_monitor.py checks that the keys match
    those Lightning's monitor logs.
    """
    tracked: list[Tracked] = []
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
        tracked.append(Tracked(optimizer, scheduler, base))

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
