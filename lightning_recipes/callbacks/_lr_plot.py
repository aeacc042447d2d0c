"""The PNG that :class:`~lightning_recipes.callbacks.lr_monitor.LRMonitor` writes at train end."""

from __future__ import annotations

import math
from array import array

from lightning_recipes.callbacks._lr_keys import MOMENTUM, SCHEDULER, Tracked


def plot_history(
    history: dict[str, tuple[array[int], array[float]]], tracked: list[Tracked], path: str
) -> None:
    # The object-oriented API with the Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lr_keys = [name for entry in tracked for name in entry.names if name in history]
    momentum_keys = [k + MOMENTUM for k in lr_keys if k + MOMENTUM in history]
    rows = 2 if momentum_keys else 1
    height = 3.2 * rows
    fig = Figure(figsize=(9, height))
    FigureCanvasAgg(fig)
    # Fixed margins and legend places: a layout engine or loc="best" would draw twice.
    fig.subplots_adjust(
        left=0.09, right=0.98, top=1 - 0.35 / height, bottom=0.5 / height, hspace=0.08
    )
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for i, key in enumerate(lr_keys):
        color = f"C{i % 10}"
        steps, values = history[key]
        axes[0].plot(steps, values, color=color, label=f"{key} (optimizer)")
        if key + SCHEDULER in history:
            s_steps, s_values = history[key + SCHEDULER]
            axes[0].plot(s_steps, s_values, color=color, linestyle="--", label=f"{key} (scheduler)")
            off = [
                (step, value)
                for step, value, other in zip(s_steps, s_values, values, strict=False)
                if not math.isclose(value, other, rel_tol=1e-5, abs_tol=1e-12)
            ]
            if off:
                xs, ys = [step for step, _ in off], [value for _, value in off]
                axes[0].scatter(xs, ys, color="red", marker="x", s=12, zorder=3)
    axes[0].set_ylabel("learning rate")
    axes[0].set_title("learning rate per optimizer step (red x: scheduler != optimizer)")
    axes[0].legend(fontsize="small", loc="upper right")
    if momentum_keys:
        for i, key in enumerate(momentum_keys):
            steps, values = history[key]
            axes[1].plot(steps, values, color=f"C{i % 10}", label=key)
        axes[1].set_ylabel("momentum / beta1")
        axes[1].legend(fontsize="small", loc="lower right")
    axes[-1].set_xlabel("optimizer step")
    fig.savefig(path, dpi=100)
