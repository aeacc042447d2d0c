"""When a mixing callback stops mixing: after an epoch, or after a fraction of the steps."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl

from lightning_recipes._validation import check_int, check_real

__all__ = ["StopSchedule"]


class StopSchedule:
    """Mixing runs until ``stop_epoch`` (0-based) or ``stop_fraction`` of the optimizer steps.

    Args:
        stop_epoch: Mix only in epochs before this one; None for no end.
        stop_fraction: Mix only during this fraction of ``trainer.estimated_stepping_batches``;
            None for no end. Exclusive with ``stop_epoch``.
    """

    def __init__(self, stop_epoch: Any, stop_fraction: Any) -> None:
        if stop_epoch is not None and stop_fraction is not None:
            raise ValueError(
                "`stop_epoch` and `stop_fraction` are two ways to set the same end point; pass"
                f" one, got stop_epoch={stop_epoch} and stop_fraction={stop_fraction}"
            )
        self.stop_epoch: int | None = check_int(stop_epoch, "stop_epoch", minimum=0, optional=True)
        if stop_fraction is not None and not 0.0 < check_real(stop_fraction, "stop_fraction") <= 1:
            raise ValueError(f"`stop_fraction` must be None or in (0, 1], got {stop_fraction}")
        self.stop_fraction: float | None = stop_fraction
        self._stop_step = math.inf

    def start(self, trainer: pl.Trainer, owner: str) -> None:
        """Fixes the last mixed step for this run (``owner`` names the callback in errors)."""
        self._stop_step = math.inf
        if self.stop_fraction is not None:
            total = trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError(
                    f"{owner}: `stop_fraction` needs a run of known length (set `max_epochs` or"
                    f" `max_steps`), got estimated_stepping_batches={total}"
                )
            self._stop_step = self.stop_fraction * total

    def active(self, trainer: pl.Trainer) -> bool:
        """Whether this step still mixes."""
        if self.stop_epoch is not None and trainer.current_epoch >= self.stop_epoch:
            return False
        return trainer.global_step < self._stop_step
