"""What an LR range test found, and fastai's rules that turn its losses into a learning rate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["RULES", "LRFindResult", "SuggestionRule", "suggest_lrs"]

SuggestionRule = Literal["valley", "steep", "minimum"]
RULES: tuple[SuggestionRule, ...] = ("valley", "steep", "minimum")


@dataclass(frozen=True)
class LRFindResult:
    """What one range test found.

    Attributes:
        lrs: Learning rate of each sweep step.
        losses: Smoothed training loss of each sweep step (``nan`` where a step gave no loss).
        suggestions: Every rule's suggestion: ``{"valley": ..., "steep": ..., "minimum": ...}``.
        rule: The rule whose suggestion was chosen.
        previous_max_lr: The module's ``max_lr`` before the test.
        plot_path: The saved PNG, if one was asked for.
    """

    lrs: list[float]
    losses: list[float]
    suggestions: dict[str, float]
    rule: str
    previous_max_lr: float
    plot_path: Path | None = field(default=None)

    @property
    def suggestion(self) -> float:
        """The chosen rule's learning rate, set as ``max_lr``."""
        return self.suggestions[self.rule]

    def table(self) -> str:
        """The suggestions as a short text table, the chosen one marked."""
        lines = ["rule      max_lr"]
        for rule, lr in self.suggestions.items():
            mark = "  <- max_lr" if rule == self.rule else ""
            lines.append(f"{rule:<9} {lr:.3g}{mark}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Save loss against learning rate (log axis) with every suggestion marked, as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.lrs, self.losses, color="black", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("smoothed training loss")
        for rule, lr in self.suggestions.items():
            style = "-" if rule == self.rule else ":"
            ax.axvline(lr, ls=style, label=f"{rule}: {lr:.3g}", color=_COLORS[rule])
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


_COLORS = {"valley": "tab:green", "steep": "tab:orange", "minimum": "tab:blue"}


def suggest_lrs(
    lrs: Sequence[float],
    losses: Sequence[float],
    *,
    skip_begin: int | None = None,
    skip_end: int = 5,
) -> dict[str, float]:
    """fastai's suggestion rules on a range test's smoothed losses.

    The first ``skip_begin`` (default: a tenth of the steps) and the last ``skip_end`` steps are
    left out, and so is everything from the first ``nan`` loss on, as fastai's ``lr_find`` does.

    * ``valley``: the longest run of decreasing losses (not necessarily consecutive steps),
      about two thirds of the way down it (fastai's default, from ESRI);
    * ``steep``: the steepest descent of the loss against ``log(lr)``;
    * ``minimum``: the learning rate at the loss minimum, divided by 10.

    Raises:
        ValueError: Fewer than 3 usable steps, or a loss that never decreases; the message
            names the range tried and what to change.

    Example:
        >>> lrs = [10 ** (-4 + i / 10) for i in range(50)]
        >>> losses = [2.0 - (i / 30) ** 2 if i < 30 else 1.0 + (i - 30) for i in range(50)]
        >>> s = suggest_lrs(lrs, losses)
        >>> sorted(s), s["minimum"] == lrs[30] / 10
        (['minimum', 'steep', 'valley'], True)
    """
    if len(lrs) != len(losses):
        raise ValueError(
            f"`lrs` and `losses` must have the same length, got {len(lrs)} and {len(losses)}"
        )
    n = len(lrs)
    begin = n // 10 if skip_begin is None else skip_begin
    lr = np.asarray(lrs, dtype=np.float64)[begin : max(n - skip_end, begin)]
    loss = np.asarray(losses, dtype=np.float64)[begin : max(n - skip_end, begin)]
    nan = np.flatnonzero(~np.isfinite(loss))
    if nan.size:
        lr, loss = lr[: nan[0]], loss[: nan[0]]
    span = f"between lr={lrs[0]:.3g} and lr={lrs[-1]:.3g}" if n else "(no step)"
    if loss.size < 3:
        raise ValueError(
            f"The LR range test has {loss.size} usable steps {span} (the loss diverged or was"
            " nan at once): lower `min_lr` or raise `num_training`."
        )
    if int(np.argmin(loss)) == 0:
        raise ValueError(
            f"The loss never decreased {span}: raise `max_lr` (or `num_training`), or check"
            " that the model trains at all."
        )
    steep = np.diff(loss) / np.diff(np.log(lr))
    return {
        "valley": float(lr[_valley_index(loss)]),
        "steep": float(lr[int(np.argmin(steep))]),
        "minimum": float(lr[int(np.argmin(loss))] / 10),
    }


def _valley_index(loss: np.ndarray) -> int:
    # Longest decreasing subsequence ending at each step (quadratic; sweeps have ~100 steps),
    # then the point two thirds down the longest one: fastai's `valley`.
    run = np.ones(len(loss), dtype=np.int64)
    end = 0
    for i in range(1, len(loss)):
        earlier = run[:i][loss[:i] > loss[i]]
        if earlier.size:
            run[i] = earlier.max() + 1
        if run[i] > run[end]:
            end = i
    start = end - int(run[end])
    third = (end - start) / 3
    return max(start + int(third) + int(third / 2), 0)
