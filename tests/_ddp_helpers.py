"""Callbacks that a ``lightning-recipes`` subprocess loads by class path
(``--trainer.callbacks+=_ddp_helpers.RankRecorder``) to hand per-rank facts back to a test."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_recipes import LossScaleMonitor, LRMonitor, TrainingSanityChecks
from lightning_recipes._interrupt import _destroy_process_groups_at_exit


def _number(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


class RankRecorder(Callback):
    """Writes ``<out>/rank<global_rank>.json`` at the end of fit, one file per process.

    Recorded: the rank and world size, the LR and momentum of the first param group before
    every optimizer step, each step's local (unsynced) training loss, the mixing weight the
    mixing callback logged, the synced metrics at every validation end, the scheduler's
    ``total_steps``, ``trainer.estimated_stepping_batches``, the log folder, the loss scale
    and skipped steps of a ``LossScaleMonitor``, the ``LRMonitor`` disagreement counts and
    whether a ``TrainingSanityChecks`` was present.
    """

    def __init__(self, out: str) -> None:
        self.out = out
        self.lrs: list[float] = []
        self.momentums: list[float] = []
        self.losses: list[float] = []
        self.lams: list[float] = []
        self.validation: list[dict[str, float]] = []
        self.loss_scales: list[float] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        group = optimizer.param_groups[0]
        self.lrs.append(group["lr"])
        self.momentums.append(group.get("momentum", group.get("betas", (None,))[0]))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.losses.append(_number(outputs["loss"]))
        metrics = trainer.callback_metrics
        lam = next((v for k, v in metrics.items() if k.startswith("lam-")), None)
        if lam is not None:
            self.lams.append(_number(lam))
        if "loss_scale" in metrics:
            self.loss_scales.append(_number(metrics["loss_scale"]))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        keys = ("val/loss", "val/acc", "train/loss")
        metrics = trainer.callback_metrics
        self.validation.append({k: _number(metrics[k]) for k in keys if k in metrics})

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # `log_dir` is broadcast from rank 0: every rank has to ask for it.
        self._write(trainer, trainer.log_dir)

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        # What a stopped run saw, without a collective: another rank may be gone already. A
        # fit's only: the record is of its schedule, and would hide a later stage's error.
        if trainer.state.fn == "fit":
            self._write(trainer, None, stopped_by=type(exception).__name__)

    def _write(
        self, trainer: pl.Trainer, log_dir: str | None, stopped_by: str | None = None
    ) -> None:
        (config,) = trainer.lr_scheduler_configs[:1]
        monitors = [c for c in trainer.callbacks if isinstance(c, LRMonitor)]
        scales = [c for c in trainer.callbacks if isinstance(c, LossScaleMonitor)]
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "estimated_stepping_batches": trainer.estimated_stepping_batches,
            "total_steps": config.scheduler.total_steps,
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "pid": os.getpid(),
            "stopped_by": stopped_by,
            "log_dir": log_dir,
            "lrs": self.lrs,
            "momentums": self.momentums,
            "losses": self.losses,
            "lams": self.lams,
            "validation": self.validation,
            "loss_scales": self.loss_scales,
            "skipped_steps": [c.skipped_steps for c in scales],
            "lr_mismatch_steps": [dict(m.mismatch_steps) for m in monitors],
            "sanity_checks": sum(isinstance(c, TrainingSanityChecks) for c in trainer.callbacks),
        }
        folder = Path(self.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class TrainDuringValidation(Callback):
    """Breaks a training-loop rule on purpose: validation runs with the model in train mode.

    Writes ``<out>/rank<global_rank>.error`` with the exception that ends the run.
    """

    def __init__(self, out: str) -> None:
        self.out = out

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        folder = Path(self.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank{trainer.global_rank}.error").write_text(f"{exception!r}")

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        pl_module.train()


class SignalRankAt(Callback):
    """Sends ``signum`` to its own process on global rank ``rank`` after the training batch that
    brings ``global_step`` to ``step`` (a real signal, to the handlers the fit installed), and
    writes ``<out>/signal.json``: the rank, the step, the epoch and the time it was sent.

    On rank 0 of a ``ddp`` run that process is the command the user started, which launched the
    other ranks; on another rank it is that one process only.
    """

    def __init__(
        self, out: str, step: int, rank: int = 0, signum: int = signal.SIGTERM.value
    ) -> None:
        self.out, self.step, self.rank, self.signum = out, step, rank, signum
        self.sent = False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.sent or trainer.global_rank != self.rank or trainer.global_step != self.step:
            return
        self.sent = True
        folder = Path(self.out)
        folder.mkdir(parents=True, exist_ok=True)
        sent = {
            "rank": self.rank,
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batches_in_epoch": batch_idx + 1,
            "time": time.time(),
        }
        (folder / "signal.json").write_text(json.dumps(sent))
        os.kill(os.getpid(), self.signum)


class DestroyProcessGroupsAtExit(Callback):
    """What :class:`~lightning_recipes.InterruptCheckpoint` does in a multi-process fit, for a
    test that has no such callback: each rank destroys its gloo process group before the
    interpreter finalizes, so no rank aborts at exit after the fit has finished."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            _destroy_process_groups_at_exit()
