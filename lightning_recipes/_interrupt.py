"""A checkpoint at SIGTERM or Ctrl-C, and an exit status that says the run was stopped."""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import signal
import socket
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lightning_recipes._compat import PATH as _PATH
from lightning_recipes._compat import (
    request_graceful_stop,
    save_and_requeue_on_slurm,
    slurm_requeue_signal,
)
from lightning_recipes._validation import check_type

__all__ = ["InterruptCheckpoint"]


class InterruptCheckpoint(Callback):
    """Save the training state when ``fit`` is stopped by SIGTERM or Ctrl-C, then exit non-zero.

    Lightning already catches SIGTERM: its loops raise ``SIGTERMException`` after the current
    training batch (or validation batch), but nothing is saved and the process exits with
    status 0. This callback

    - turns the first Ctrl-C (SIGINT) during training into the same graceful stop (a second
      Ctrl-C stops at once, without a checkpoint, as Lightning does);
    - on that stop, saves ``dirpath/filename.ckpt`` with ``trainer.save_checkpoint`` (atomic
      with :class:`~lightning_recipes.AtomicCheckpointIO`): the state after the last finished
      batch, which ``fit(ckpt_path=...)`` resumes from, mid-epoch included;
    - makes the process exit with ``128 + signal`` (143 for SIGTERM, 130 for Ctrl-C), as a
      shell reports a killed process, and logs where the checkpoint is.

    Nothing is saved for any other exception (the state may be half-updated), outside
    ``fit``, or during the sanity check.

    With several processes (DDP), a signal may reach every rank (a scheduler's preemption),
    the launching process only, or one rank only, and each at another moment. A rank that
    receives one only takes note; after every training and validation batch the ranks start
    an all-reduce of what they noted (on the CPU, in the background) and read the one started
    a batch before, so when any of them received a signal, all stop after the same batch (the
    next but one) and save one checkpoint together, and no batch waits for the others.
    Lightning's own handler instead runs a collective inside the signal handler and lets a
    rank stop alone, which leaves the others waiting in their next collective. A rank that
    Lightning's launcher started waits, before it exits, for that launcher to exit first: the
    launcher kills itself with SIGKILL when it sees a child exit with a non-zero status.

    On SLURM with Lightning's automatic requeue (``SLURMEnvironment(auto_requeue=True)``, the
    default there), the requeue signal (SIGUSR1, sent ahead of the time limit by
    ``#SBATCH --signal=USR1@90``) is deferred the same way: at the end of a batch (the
    current one on one process, the next but one on several) every rank takes part in
    Lightning's save of ``hpc_ckpt_<N>.ckpt`` and rank 0 requeues the job.
    Lightning saves it inside the signal handler, wherever the step is (between the optimizer
    and the scheduler step, say) and, with several processes, with a collective among the
    other ranks' collectives.

    Args:
        dirpath: Folder of the checkpoint; by default that of the first ``ModelCheckpoint``,
            else ``<log_dir>/checkpoints``.
        filename: File name without the ``.ckpt`` extension.

    Attributes:
        saved_path: The checkpoint written at the last interruption, else ``None``.
        signal: The signal that stopped the run (``signal.SIGTERM``/``signal.SIGINT``), else
            ``None``.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_recipes import AtomicCheckpointIO
        >>> trainer = pl.Trainer(callbacks=[InterruptCheckpoint()], plugins=[AtomicCheckpointIO()])
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: _PATH | None = None, filename: str = "interrupted") -> None:
        super().__init__()
        check_type(filename, "filename", str, "a string")
        if not filename or os.sep in filename:
            raise ValueError(
                f"`filename` must be a non-empty file name without folders, got {filename!r}"
            )
        self.dirpath = dirpath
        self.filename = filename
        self.saved_path: Path | None = None
        self.signal: signal.Signals | None = None
        self._trainer: pl.Trainer | None = None
        self._previous_handlers: dict[signal.Signals, Any] = {}
        # A signal this process received that the ranks have not yet agreed to stop for.
        self._received: signal.Signals | None = None
        self._stopping = False
        self._requeue_signal: signal.Signals | None = None
        self._requeue_asked = False
        self._launcher_pid: int | None = None
        self._group: Any = None  # the process group of the ranks' agreement
        self._round: tuple[Any, torch.Tensor] | None = None  # the all-reduce under way

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Every stage, not only fit: under `ddp_spawn`, `trainer.test()` after a fit runs in
        # new processes, which never reach `on_train_start`. Lightning sets up the process
        # group before it calls `setup`.
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            _destroy_process_groups_at_exit()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.saved_path, self.signal, self._received, self._stopping = None, None, None, False
        self._trainer, self._requeue_asked = trainer, False
        self._launcher_pid, self._round = None, None
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            self._launcher_pid, self._group = _launching_rank_pid(), _cpu_group()
        self._requeue_signal = slurm_requeue_signal(trainer)
        # Installed here, after Lightning recorded the handlers it restores when fit ends. One
        # process keeps Lightning's SIGTERM handler (it stops that process alone, which is
        # right); several get this one (see the class docstring).
        signals = [signal.SIGINT] + ([signal.SIGTERM] if trainer.world_size > 1 else [])
        if self._requeue_signal is not None:
            signals.append(self._requeue_signal)
        for signum in signals:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._agree_to_stop(trainer)

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._agree_to_stop(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()
        self._finish_round()  # every rank ends training here: none is left under way
        self._group = None  # no reference that keeps the group (and its threads) alive

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()
        self._group = None
        if not isinstance(exception, SIGTERMException):
            return
        stopped_by = self.signal or signal.SIGTERM
        self.signal = stopped_by
        if exception.code is None:  # Lightning's SIGTERMException exits with status 0
            exception.code = 128 + int(stopped_by)
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)
        self.saved_path = path
        rank_zero_info(
            f"{stopped_by.name} at epoch {trainer.current_epoch}, global step"
            f" {trainer.global_step}: saved the training state to {path}; resume with"
            f" `ckpt_path={str(path)!r}` (`--ckpt_path last` on the command line)."
        )
        if self._launcher_pid is not None:
            _wait_for_exit_of(self._launcher_pid, timeout=_LAUNCHER_EXIT_TIMEOUT)

    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        """Where this run's interrupt checkpoint goes."""
        dirpath = self.dirpath
        if dirpath is None:
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
                    dirpath = callback.dirpath
                    break
        if dirpath is None:
            dirpath = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        return Path(dirpath) / f"{self.filename}{self.FILE_EXTENSION}"

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        received = signal.Signals(signum)
        if received == self._requeue_signal:
            self._requeue_asked = True  # saved and requeued after the current batch
            return
        if received == signal.SIGINT and (self.signal is not None or self._trainer is None):
            raise KeyboardInterrupt  # a second Ctrl-C
        trainer = self._trainer
        if received == signal.SIGINT:
            rank_zero_info(
                "Ctrl-C: stopping after the current batch to save a checkpoint;"
                " press Ctrl-C again to stop at once without one."
            )
        if trainer is None or trainer.world_size == 1:
            self.signal = received
            if trainer is not None:
                request_graceful_stop(trainer)
            return
        # No collective here: the handler runs between any two bytecodes, and the other ranks
        # are elsewhere. The ranks agree after the current batch.
        self._received = self._received or received
        if received == signal.SIGINT:
            self.signal = received  # a second Ctrl-C on this rank stops it at once

    def _agree_to_stop(self, trainer: pl.Trainer) -> None:
        # Every rank reaches this point after the same batch, and all stop asking at once.
        if self._stopping:
            return
        if self._group is None:  # one process: a stop is already requested by the handler
            stop, requeue = 0, int(self._requeue_asked)
            self._requeue_asked = False
        else:
            stop, requeue = self._finish_round()
            noted = torch.tensor([int(self._received or 0), int(self._requeue_asked)])
            self._requeue_asked = False
            work = dist.all_reduce(noted, dist.ReduceOp.MAX, group=self._group, async_op=True)
            self._round = (work, noted)
        if requeue and self._requeue_signal is not None:
            save_and_requeue_on_slurm(trainer, self._requeue_signal)
        if stop:
            self.signal, self._stopping = signal.Signals(stop), True
            self._finish_round()  # started by every rank: ends on every rank
            request_graceful_stop(trainer)

    def _finish_round(self) -> tuple[int, int]:
        """The ranks' agreed (signal number, requeue) of the round started a batch before; by
        now it has finished, as the batch's gradient all-reduce brought the ranks together."""
        if self._round is None:
            return 0, 0
        work, noted = self._round
        self._round = None
        work.wait()
        stop, requeue = noted.tolist()
        return int(stop), int(requeue)

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous_handlers.items():
            with contextlib.suppress(ValueError):
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, previous)
        self._previous_handlers = {}


# Long enough for the launcher to print its summary and exit; bounded, so that a rank whose
# launcher hangs still exits.
_LAUNCHER_EXIT_TIMEOUT = 30.0


def _launching_rank_pid() -> int | None:
    """The pid of this process's parent when the parent is a rank of the same run (Lightning's
    launcher starts ranks 1.. of a machine from its rank 0), else ``None``.

    Every rank calls it (an all-gather of host names and pids), at the start of training.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    ranks: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, (socket.gethostname(), os.getpid()))
    parent = (socket.gethostname(), os.getppid())
    return parent[1] if parent in ranks else None


def _cpu_group() -> Any:
    """A process group whose collectives take CPU tensors: the default one under gloo, else a
    gloo group of all ranks, so that the agreement never waits for a GPU stream."""
    if "gloo" in str(dist.get_backend()):
        return dist.group.WORLD
    return dist.new_group(backend="gloo")


_destroy_registered = False


def _destroy_process_groups_at_exit() -> None:
    """Destroy and free the process groups (the default one and the agreement's) before the
    interpreter finalizes, once per process.

    Lightning destroys the group at exit only for NCCL. A gloo group alive at exit keeps its
    worker threads, and one that frees a finished collective's tensors during the
    interpreter's finalization cannot take the GIL and aborts the process ("terminate called
    without an active exception", status 134) after a run that finished or saved its
    checkpoint. ``atexit`` runs while the interpreter is still whole.
    """
    global _destroy_registered
    if not _destroy_registered:
        atexit.register(_destroy_process_groups)
        _destroy_registered = True


def _destroy_process_groups() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        # A gloo group's worker threads stop only when the group itself is freed, and the
        # trainer and its DDP model that hold it are cycles by now (the command has returned):
        # collected here, the threads are joined before finalization, not during it.
        gc.collect()


def _wait_for_exit_of(pid: int, timeout: float) -> None:
    """Wait until ``pid``, this process's parent, has exited (this process is then adopted by
    another), or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while os.getppid() == pid and time.monotonic() < deadline:
        time.sleep(0.05)
