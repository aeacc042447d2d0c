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
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.tuner.tuning import Tuner

from lightning_recipes._lr_suggestions import RULES, LRFindResult, SuggestionRule, suggest_lrs
from lightning_recipes._validation import check_choice, check_int, check_positive

__all__ = ["LRFindResult", "lr_find", "set_max_lr", "suggest_lrs"]


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
    check_choice(rule, "rule", RULES)
    check_int(num_training, "num_training", minimum=3)
    check_positive(min_lr, "min_lr")
    check_positive(max_lr, "max_lr")
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
        fast_dev_run = trainer.fast_dev_run  # type: ignore[attr-defined]  # set at run time
        raise ValueError(
            "The LR range test found nothing to return: it cannot run with `fast_dev_run` or a"
            f" spawning strategy (got {type(trainer.strategy).__name__},"
            f" fast_dev_run={fast_dev_run}); use `strategy='ddp'` for several devices."
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
    model.max_lr = value  # type: ignore[assignment]  # nn.Module types attributes as tensors
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
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
