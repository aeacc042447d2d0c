"""The command's view of a run: where its checkpoints are, and the lines of its closing summary.

Kept apart from :mod:`lightning_recipes.cli._command`, which parses, builds and reports errors.
"""

from __future__ import annotations

import importlib
import signal
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_recipes._compat import saved_class_path
from lightning_recipes.checkpointing import InterruptCheckpoint, read_checkpoint
from lightning_recipes.scheduler import schedule_progress


def _recover_checkpoint_paths(trainer: pl.Trainer) -> None:
    """Fills in the folders and files of checkpoint callbacks that ran in child processes.

    Under ``strategy="ddp_spawn"`` this process's ``ModelCheckpoint`` callbacks never ran:
    Lightning sends back only the first one's ``best_model_path``. The others wrote into the
    same folder (the default ``dirpath``), so their files are found there by name.
    """
    checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    first = trainer.checkpoint_callback
    if not isinstance(first, ModelCheckpoint) or first.dirpath is not None:
        return
    if not first.best_model_path:
        return
    folder = Path(first.best_model_path).parent
    for checkpoint in checkpoints:
        if checkpoint.dirpath is not None:
            continue
        checkpoint.dirpath = str(folder)
        last = folder / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
        if checkpoint.save_last and not checkpoint.last_model_path and last.is_file():
            checkpoint.last_model_path = str(last)
        # An unmonitored callback with a plain file name (the configs' `last`) keeps one file.
        named = folder / f"{checkpoint.filename}{checkpoint.FILE_EXTENSION}"
        if not checkpoint.best_model_path and checkpoint.filename and named.is_file():
            checkpoint.best_model_path = str(named)


def _schedule_lines(trainer: pl.Trainer) -> list[str]:
    """How far each OneCycle got: a fit stopped early (EarlyStopping, ``max_time``) says so."""
    lines = []
    for config in trainer.lr_scheduler_configs:
        if not isinstance(config.scheduler, torch.optim.lr_scheduler.OneCycleLR):
            continue
        progress = schedule_progress(config.scheduler)
        if progress.step == 0:  # a spawned fit: the schedule ran in the child processes
            continue
        note = "" if progress.finished else "; stopped before the end, the LR never annealed"
        lines.append(f"  schedule:    {progress}{note}")
    return lines


def _import(class_path: str | None) -> type | None:
    if not class_path:
        return None
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name, None)


def _check_checkpoint(path: str | Path, model_cls: type) -> None:
    """Read ``path`` (memory-mapped, so the tensors are not loaded) and check its model class."""
    try:
        checkpoint = read_checkpoint(path, map_location="cpu", weights_only=True, mmap=True)
    except ValueError as error:
        if "mmap" not in str(error):
            raise
        # A file in torch's legacy (pre-zip) format cannot be memory-mapped.
        checkpoint = read_checkpoint(path, map_location="cpu", weights_only=True)
    saved = saved_class_path(checkpoint.get("hyper_parameters"))
    if saved is None:
        return  # not written through a LightningCLI: the weights' keys are checked on load
    try:
        saved_cls = _import(saved)
    except ImportError:
        saved_cls = None
    if saved_cls is model_cls:
        return
    configured = f"{model_cls.__module__}.{model_cls.__qualname__}"
    raise ValueError(
        f"Checkpoint {str(path)!r} was saved from the model class {saved}, but the model is"
        f" {configured}; pass `--model {saved}` with its arguments, or a checkpoint of a"
        f" {model_cls.__name__} run as `--ckpt_path`"
    )


def _run_root(trainer: pl.Trainer) -> Path:
    """The folder that holds a run's ``version_N`` folders (``save_dir/name`` of the first
    logger), or ``default_root_dir`` without a logger, as ``ModelCheckpoint`` resolves it."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = logger.save_dir or trainer.default_root_dir
        return Path(save_dir) / str(logger.name or "")
    return Path(trainer.default_root_dir)


def _checkpoint_folders(trainer: pl.Trainer) -> list[Path]:
    """Where the run's checkpoints are: the folders set on checkpoint callbacks, then every
    ``<version>/checkpoints`` of the run (or ``default_root_dir/checkpoints``), then
    ``default_root_dir``, where Lightning saves ``hpc_ckpt_<N>.ckpt`` before a SLURM requeue."""
    folders = [
        Path(callback.dirpath)
        for callback in trainer.callbacks  # type: ignore[attr-defined]
        if isinstance(callback, (ModelCheckpoint, InterruptCheckpoint)) and callback.dirpath
    ]
    root = _run_root(trainer)
    if trainer.loggers:
        folders += sorted(path for path in root.glob("*/checkpoints") if path.is_dir())
    else:
        folders.append(root / "checkpoints")
    folders.append(Path(trainer.default_root_dir))
    return folders


def _last_names(trainer: pl.Trainer) -> tuple[str, ...]:
    """The names of the checkpoints that hold a run's latest state: ``last``, Lightning's
    ``hpc_ckpt``, the interrupt checkpoint's, and the file that an unmonitored
    ``ModelCheckpoint`` with a fixed file name keeps rewriting (the configs' ``step``)."""
    names = {ModelCheckpoint.CHECKPOINT_NAME_LAST, "hpc_ckpt"}
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, InterruptCheckpoint) or _keeps_one_latest_file(callback):
            names.add(callback.filename)
    return tuple(sorted(names))


def _keeps_one_latest_file(callback: object) -> bool:
    return (
        isinstance(callback, ModelCheckpoint)
        and callback.monitor is None
        and callback.save_top_k == 1
        and bool(callback.filename)
        and "{" not in str(callback.filename)
    )


def _checkpoint_lines(
    trainer: pl.Trainer, interrupt: InterruptCheckpoint | None = None
) -> list[str]:
    """The summary's checkpoint line: the folder, the last and the best checkpoint, and the
    interrupt checkpoint when one was written."""
    checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    if not checkpoints and interrupt is None:
        return []
    # The last checkpoint is a `save_last` file, or what an unmonitored callback keeps (its
    # "best" is the latest epoch); the best is that of a monitored callback.
    last = next(
        (cb.last_model_path for cb in checkpoints if cb.last_model_path),
        next(
            (cb.best_model_path for cb in checkpoints if not cb.monitor and cb.best_model_path),
            "none",
        ),
    )
    best = next(
        (cb.best_model_path for cb in checkpoints if cb.monitor and cb.best_model_path), "none"
    )
    dirpath = next((cb.dirpath for cb in checkpoints if cb.dirpath), None)
    parts = [f"last: {last}", f"best: {best}"]
    if interrupt is not None:
        parts.insert(0, f"interrupted: {interrupt.saved_path or 'none'}")
        if dirpath is None and interrupt.saved_path is not None:
            dirpath = str(interrupt.saved_path.parent)
    return [f"  checkpoints: {dirpath} ({', '.join(parts)})"]


def _log_dir_of_rank_zero(trainer: pl.Trainer) -> str:
    """``trainer.log_dir`` as global rank 0 computes it, without the broadcast that sends it to
    the other ranks: an interrupted run's summary comes when they may have exited already."""
    if not trainer.loggers:
        return str(trainer.default_root_dir)
    logger = trainer.loggers[0]
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        return str(logger.log_dir)
    return str(logger.save_dir or trainer.default_root_dir)


def _interrupted_summary(trainer: pl.Trainer) -> str:
    """What a stopped run saved, printed by global rank 0; it runs no collective."""
    callbacks = trainer.callbacks  # type: ignore[attr-defined]
    interrupt = next((cb for cb in callbacks if isinstance(cb, InterruptCheckpoint)), None)
    stopped_by = interrupt.signal if interrupt is not None else None
    what = stopped_by.name if isinstance(stopped_by, signal.Signals) else "an interrupt"
    lines = [
        "",
        f"lightning-recipes fit interrupted by {what} at epoch {trainer.current_epoch},"
        f" global step {trainer.global_step}; not tested.",
        f"  logs:        {_log_dir_of_rank_zero(trainer)}",
        *_checkpoint_lines(trainer, interrupt),
    ]
    if interrupt is not None and interrupt.saved_path is not None:
        lines.append("  resume:      the same command with `--ckpt_path last`")
    else:
        lines.append("  resume:      no checkpoint of this moment was written")
    return "\n".join(lines)
