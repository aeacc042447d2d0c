"""Interrupt-safe checkpoints: atomic writes, a checkpoint at SIGTERM or Ctrl-C, and the search
for the newest ``last`` checkpoint of a run.

- :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the target folder
  and renames it over the target (``os.replace``), so a process killed during a save leaves the
  previous checkpoint whole; a file that cannot be read is reported with its path.
- :class:`InterruptCheckpoint` turns the first Ctrl-C into the same graceful stop as SIGTERM
  (Lightning's loops stop after the current batch) and saves the state at that moment; the
  process then exits with ``128 + signal number`` (143 for SIGTERM, 130 for Ctrl-C).
- :func:`find_last_checkpoint` picks the newest ``last``/interrupt/step/SLURM-requeue
  checkpoint among the folders of a run, for ``lightning-recipes fit --ckpt_path last``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from lightning_recipes._compat import PATH as _PATH
from lightning_recipes._interrupt import InterruptCheckpoint

__all__ = ["AtomicCheckpointIO", "InterruptCheckpoint", "find_last_checkpoint"]

_TEMP_SUFFIX = ".tmp"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` that never leaves a half-written checkpoint behind.

    A local checkpoint is streamed by ``torch.save`` into a hidden temporary file in the target
    folder, flushed to disk (``fsync``) and renamed over the target with ``os.replace``, which
    is atomic on one file system: a kill at any moment leaves either the previous file or the
    new one, never a truncated one. Lightning's own save renames from the system temporary
    folder, which becomes a plain copy over the target when that folder is on another file
    system (a tmpfs ``/tmp``, a node-local disk), and holds the whole checkpoint in memory
    twice. Remote paths (``s3://`` and other fsspec URLs) are left to Lightning.

    Loading a file that is truncated, empty or not a checkpoint raises a ``ValueError`` that
    names the file instead of a pickle or zip traceback.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(plugins=[AtomicCheckpointIO()], logger=False)
        >>> type(trainer.strategy.checkpoint_io).__name__
        'AtomicCheckpointIO'
    """

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                f"`storage_options` is not supported by {type(self).__name__}, got"
                f" {storage_options!r}; pass None"
            )
        _atomic_torch_save(checkpoint, Path(path))

    @override
    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable[..., Any] | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        try:
            return super().load_checkpoint(
                path, map_location=map_location, weights_only=weights_only
            )
        except Exception as error:
            if not _is_local(path) or not _is_damaged(path):
                raise
            raise _unreadable_error(path, error) from None


def read_checkpoint(path: _PATH, **kwargs: Any) -> dict[str, Any]:
    """``torch.load`` of a local checkpoint file with a clear error when it cannot be read.

    Args:
        path: The checkpoint file.
        **kwargs: Passed to ``torch.load`` (``map_location``, ``weights_only``, ``mmap``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is truncated, empty or not a checkpoint; the message names it.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"`ckpt_path` {str(path)!r} does not exist or is not a file")
    try:
        checkpoint = torch.load(path, **kwargs)
    except Exception as error:
        if not _is_damaged(path):
            raise
        raise _unreadable_error(path, error) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"`ckpt_path` {str(path)!r} holds a {type(checkpoint).__name__}, not a Lightning"
            " checkpoint (a dict with 'state_dict')"
        )
    return checkpoint


def find_last_checkpoint(
    directories: Iterable[_PATH], names: Iterable[str] = ("last", "interrupted", "hpc_ckpt")
) -> Path | None:
    """The newest checkpoint named ``<name>.ckpt``, ``<name>-v<N>.ckpt`` or ``<name>_<N>.ckpt``
    in ``directories``.

    "Newest" is the latest modification time, as for Lightning's ``ckpt_path="last"``; files
    being written (the hidden temporary files of :class:`AtomicCheckpointIO`) and missing
    folders are skipped.

    Args:
        directories: Checkpoint folders, e.g. every ``version_N/checkpoints`` of a run.
        names: Checkpoint names without extension: ``ModelCheckpoint``'s ``last``,
            :class:`InterruptCheckpoint`'s ``interrupted`` and the ``hpc_ckpt_<N>`` that
            Lightning saves before a SLURM requeue, by default.

    Returns:
        The path, or ``None`` when no such file exists.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> find_last_checkpoint([folder / "version_0" / "checkpoints"]) is None
        True
    """
    patterns = [re.compile(rf"{re.escape(name)}(-v\d+|_\d+)?") for name in names]
    found: list[tuple[int, str, Path]] = []
    for directory in directories:
        directory = Path(directory)
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            stem, suffix = os.path.splitext(path.name)
            if suffix != ".ckpt" or not path.is_file():
                continue
            # `last`, and `last-v1`, ... that ModelCheckpoint writes beside an existing file,
            # or `hpc_ckpt_1`, `hpc_ckpt_2`, ... that Lightning numbers.
            if any(pattern.fullmatch(stem) for pattern in patterns):
                found.append((path.stat().st_mtime_ns, str(path), path))
    return max(found)[2] if found else None


def _atomic_torch_save(checkpoint: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and not ending in `.ckpt`, so that no "last" search or glob ever picks it up;
    # opened with `open` (not `mkstemp`, whose files are private) to get the usual permissions.
    temp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
    try:
        with open(temp, "xb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise
    # The rename itself reaches the disk with the folder's metadata.
    with contextlib.suppress(OSError):
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _is_local(path: _PATH) -> bool:
    return isinstance(get_filesystem(path), LocalFileSystem)


def _is_damaged(path: _PATH) -> bool:
    """Whether ``path`` is not a whole ``torch.save`` archive (a zip whose members all pass
    their CRC check and hold a pickle). Other load errors (``weights_only`` refusals, a CUDA
    tensor on a CPU-only machine) are about a whole file and keep their own message."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            return archive.testzip() is not None or not any(n.endswith("data.pkl") for n in names)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return True


def _unreadable_error(path: _PATH, error: BaseException) -> ValueError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else "no data"
    return ValueError(
        f"Checkpoint {str(path)!r} cannot be read ({type(error).__name__}: {reason}); it is"
        " truncated, empty or not a checkpoint. Pass another `ckpt_path`, e.g. an earlier"
        " checkpoint of the run."
    )
