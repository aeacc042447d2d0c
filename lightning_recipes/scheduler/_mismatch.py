"""What a resume does when the checkpoint's OneCycle spans another number of optimizer steps.

``total_steps`` is part of a ``OneCycleLR`` state. Resuming with settings that change the step
count (more epochs, another device count or batch size) would silently restore the old total,
and the run would die later with torch's ``Tried to step N times``. This module decides
instead: stop with :class:`ScheduleMismatchError`, or rescale the rest of the schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_recipes.scheduler._phases import rescaled_position

__all__ = ["ScheduleMismatchError", "rescale_anchor"]


class ScheduleMismatchError(RuntimeError):
    """A checkpoint's OneCycle schedule has a different total step count than this run.

    The step count depends on ``max_epochs``, ``max_steps``, ``limit_train_batches``,
    ``accumulate_grad_batches``, the batch size and the number of devices.
    """


def rescale_anchor(state: Mapping[str, Any], total_steps: int, mode: str) -> tuple[int, float]:
    """Where a schedule of ``total_steps`` resumes from ``state``, a state with another total.

    Args:
        state: The checkpoint's scheduler state (``total_steps``, ``last_epoch`` and, after an
            earlier rescale, ``rescale_anchor``).
        total_steps: This run's total number of optimizer steps.
        mode: ``"error"`` or ``"rescale"`` (``on_schedule_mismatch``).

    Returns:
        ``(real step at resume, schedule position at resume)``: the progress fraction reached in
        the checkpoint, placed on the new schedule, so that it ends exactly at ``total_steps``.

    Raises:
        ScheduleMismatchError: ``mode="error"``, or the checkpoint already made
            ``total_steps - 1`` optimizer steps or more.
    """
    saved_total = int(state["total_steps"])
    done = int(state["last_epoch"])
    anchor = state.get("rescale_anchor")
    saved_position = float(done) if anchor is None else rescaled_position(anchor, done, saved_total)
    fraction = saved_position / max(saved_total - 1, 1)
    if mode == "error":
        raise ScheduleMismatchError(
            f"The checkpoint's OneCycle spans total_steps={saved_total} ({done} done,"
            f" {fraction:.1%} of it), this run's total_steps={total_steps}. Resume with the"
            " checkpoint's settings, or set `on_schedule_mismatch='rescale'`."
        )
    if done >= total_steps - 1:
        raise ScheduleMismatchError(
            f"Cannot rescale the OneCycle: the checkpoint already made {done} optimizer steps,"
            f" this run's schedule has total_steps={total_steps}; raise max_epochs or max_steps."
        )
    return done, fraction * (total_steps - 1)
