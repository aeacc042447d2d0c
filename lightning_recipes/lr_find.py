"""The LR range test wired into OneCycle: Lightning's sweep, fastai's rules, ``max_lr`` set.

Lightning's :meth:`~lightning.pytorch.tuner.Tuner.lr_find` runs the sweep (Leslie Smith's range
test: one optimizer step per learning rate, growing exponentially, the loss smoothed by a
debiased moving average) and writes its single suggestion, the steepest descent, into the
module's ``lr``/``learning_rate``. A OneCycle schedule reads neither: its peak is ``max_lr``.
:func:`lr_find` runs the same sweep, computes fastai's three suggestion rules on the smoothed
loss against log-LR, and sets the chosen one as the module's ``max_lr`` (every
``param_group_max_lr`` peak scaled by the same factor), so the fit that follows peaks there.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.tuner import Tuner

__all__ = ["LRFindResult", "lr_find", "set_max_lr", "suggest_lrs"]

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


def lr_find(
    model: pl.LightningModule,
    trainer: pl.Trainer,
    datamodule: pl.LightningDataModule | None = None,
    *,
    train_dataloaders: Any = None,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_training: int = 100,
    rule: SuggestionRule = "valley",
    early_stop_threshold: float | None = 4.0,
    plot_path: str | Path | None = None,
) -> LRFindResult:
    """Run an LR range test and set the suggestion as the module's OneCycle ``max_lr``.

    The sweep is Lightning's (:meth:`Tuner.lr_find <lightning.pytorch.tuner.Tuner.lr_find>`),
    which restores the weights and the optimizer afterwards and runs with the trainer's other
    callbacks (mixing, monitors, checkpoints) switched off. This function also puts back the
    global random states (torch, numpy, ``random``), so the data order and everything else
    random in the fit that follows are what they would have been without the test. Then every
    rule of :func:`suggest_lrs` is computed, and ``rule``'s value becomes ``model.max_lr`` and
    ``model.hparams.max_lr``; ``param_group_max_lr`` peaks are scaled by the same factor.

    Under DDP (``strategy="ddp"``, where every process runs this function), the loss of each
    sweep step is averaged over the processes, so every process computes the same suggestion
    from the whole batch, and uses it.

    Args:
        model: The module to tune; it needs a ``max_lr`` attribute (every
            :class:`~lightning_recipes.OneCycleModule` has one).
        trainer: The trainer the fit will use (the test runs ``trainer.fit`` for up to
            ``num_training`` optimizer steps).
        datamodule: The data module, or ``None`` with ``train_dataloaders``.
        train_dataloaders: Training loaders, when there is no data module.
        min_lr: First learning rate of the sweep.
        max_lr: Last learning rate of the sweep.
        num_training: Number of sweep steps.
        rule: ``"valley"`` (default), ``"steep"`` or ``"minimum"``; see :func:`suggest_lrs`.
        early_stop_threshold: Stop the sweep once the smoothed loss exceeds this many times its
            best value; ``None`` runs every step. With several processes the sweep always runs
            every step (Lightning would stop each process on its own loss, and hang).
        plot_path: Where to save the loss-against-LR PNG; ``None`` saves none.

    Returns:
        The sweep, every suggestion and the chosen one.

    Raises:
        ValueError: A bad argument, or a sweep that diverged at once or never decreased.
        TypeError: ``model`` has no ``max_lr``.
    """
    if rule not in RULES:
        raise ValueError(f"`rule` must be one of {RULES}, got {rule!r}")
    if not isinstance(num_training, int) or isinstance(num_training, bool) or num_training < 3:
        raise ValueError(f"`num_training` must be an int >= 3, got {num_training!r}")
    for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"`{name}` must be a number > 0, got {value!r}")
    if not min_lr < max_lr:
        raise ValueError(f"`min_lr` must be < `max_lr`, got min_lr={min_lr}, max_lr={max_lr}")
    previous = getattr(model, "max_lr", None)
    if not isinstance(previous, (int, float)):
        raise TypeError(
            f"`model` must have a numeric `max_lr` (a OneCycleModule), got"
            f" {type(model).__name__} with max_lr={previous!r}"
        )

    states = _rng_states()
    # Lightning's sweep also stops at `max_epochs`: a 1-epoch trainer would end a 100-step
    # sweep after one epoch's batches. Every epoch has at least one step, so this many is enough.
    loop = trainer.fit_loop
    max_epochs = loop.max_epochs
    if max_epochs is not None and max_epochs != -1:
        loop.max_epochs = max(max_epochs, num_training)
    distributed = trainer.world_size > 1
    if distributed:
        _average_sweep_over_ranks(trainer.strategy)
        # Lightning decides the early stop on each process's own loss, and nothing syncs that
        # decision: a process stopping alone would leave the others waiting forever. Sweep
        # every step instead; the suggestions stop at the first non-finite loss anyway.
        early_stop_threshold = None
    try:
        finder = Tuner(trainer).lr_find(
            model,
            train_dataloaders=train_dataloaders,
            datamodule=datamodule,
            min_lr=min_lr,
            max_lr=max_lr,
            num_training=num_training,
            early_stop_threshold=early_stop_threshold,
            update_attr=False,
        )
    finally:
        loop.max_epochs = max_epochs
        _set_rng_states(states)
        if distributed:
            del trainer.strategy.broadcast  # back to the class's method
    if finder is None:
        # Lightning returns None under `fast_dev_run`, and in the launching process of a
        # spawned strategy, where the sweep ran in the children.
        raise ValueError(
            "The LR range test found nothing to return: it cannot run with `fast_dev_run` or a"
            f" spawning strategy (got {type(trainer.strategy).__name__},"
            f" fast_dev_run={trainer.fast_dev_run}); use `strategy='ddp'` for several devices."
        )
    lrs = [float(v) for v in finder.results["lr"]]
    losses = [float(v) for v in finder.results["loss"]]
    suggestions = suggest_lrs(lrs, losses)
    result = LRFindResult(lrs, losses, suggestions, rule, float(previous))
    set_max_lr(model, result.suggestion)
    if plot_path is not None and trainer.is_global_zero:
        result = replace(result, plot_path=result.plot(plot_path))
    return result


def set_max_lr(model: pl.LightningModule, value: float) -> None:
    """Set OneCycle's peak to ``value``, scaling ``param_group_max_lr`` peaks by the same factor.

    A :class:`~lightning_recipes.OneCycleModule` does this through its ``lr`` property; other
    modules get ``max_lr`` (and ``hparams.max_lr``, where present) set.
    """
    if isinstance(getattr(type(model), "lr", None), property):
        model.lr = value  # type: ignore[assignment]
        return
    model.max_lr = value
    if "max_lr" in model.hparams:
        model.hparams["max_lr"] = value


def _average_sweep_over_ranks(strategy: Any) -> None:
    """Make the sweep's losses the mean over processes, as every process then uses them.

    Lightning's sweep records each process's own smoothed loss and then broadcasts rank 0's
    (``strategy.broadcast(results)``), so the suggestion rests on one shard of the data. The
    smoothing is linear, so the mean of the processes' smoothed losses is the smoothed mean
    loss. Lightning has no hook there: the broadcast of this one strategy object is wrapped
    (an instance attribute, removed again by :func:`lr_find`).
    """
    broadcast = strategy.broadcast

    def mean_then_broadcast(obj: Any, src: int = 0) -> Any:
        if isinstance(obj, dict) and {"lr", "loss"} <= obj.keys():
            loss = torch.tensor(obj["loss"], dtype=torch.float64, device=strategy.root_device)
            loss = strategy.reduce(loss, reduce_op="mean")
            obj = {**obj, "loss": loss.cpu().tolist()}
        return broadcast(obj, src)

    strategy.broadcast = mean_then_broadcast


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
