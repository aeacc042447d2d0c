"""A checkpoint at SIGTERM or Ctrl-C, and an exit status that says the run was stopped."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lightning_recipes._compat import PATH as _PATH
from lightning_recipes._compat import request_graceful_stop
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
        self._previous_handler: Any = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.saved_path, self.signal = None, None
        self._trainer = trainer
        # Installed here, after Lightning recorded the handlers it restores when fit ends.
        with contextlib.suppress(ValueError):  # not the main thread: leave Ctrl-C alone
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_sigint()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_sigint()
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

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None or self._trainer is None:
            raise KeyboardInterrupt
        self.signal = signal.SIGINT
        rank_zero_info(
            "Ctrl-C: stopping after the current batch to save a checkpoint;"
            " press Ctrl-C again to stop at once without one."
        )
        request_graceful_stop(self._trainer)

    def _restore_sigint(self) -> None:
        if self._previous_handler is None:
            return
        with contextlib.suppress(ValueError):
            if signal.getsignal(signal.SIGINT) == self._on_sigint:
                signal.signal(signal.SIGINT, self._previous_handler)
        self._previous_handler = None
