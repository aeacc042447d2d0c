"""torch's ``OneCycleLR`` phases, and the position on them after a rescaled resume."""

from __future__ import annotations

from typing import Any

__all__ = ["rescaled_position", "schedule_phases"]


def schedule_phases(total: int, pct_start: float, three_phase: bool) -> list[dict[str, Any]]:
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


def rescaled_position(anchor: tuple[int, float], step: int, total: int) -> float:
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
