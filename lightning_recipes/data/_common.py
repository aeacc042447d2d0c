"""What the data modules share: argument checks and loader construction.

Training loaders are *resumable*: their order is a function of the run's seed and the epoch
(not of the global random state), and Lightning saves how many batches of the epoch were
consumed (``state_dict``) in every checkpoint, so a run resumed from a checkpoint taken in the
middle of an epoch sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from typing_extensions import override

from lightning_recipes._validation import check_int


class SplitDataModule(pl.LightningDataModule):
    """A data module whose four loaders come from one ``_loader(split)`` method.

    Prediction reads the test split. The training loader's position is part of the data
    module's ``state_dict``, which Lightning saves in checkpoints and restores before it asks
    for the training loader: Lightning's own restore of a loader's state is skipped when the
    model reads ``trainer.estimated_stepping_batches`` in ``configure_optimizers`` (as
    ``OneCycleModule`` does), because the loader is then built before the loops are restored.
    """

    def __init__(self) -> None:
        super().__init__()
        self._train_loader: DataLoader[Any] | None = None
        self._train_loader_state: dict[str, Any] = {}

    def _loader(self, split: str) -> DataLoader[Any]:
        raise NotImplementedError

    @override
    def train_dataloader(self) -> DataLoader[Any]:
        loader = self._loader("train")
        if isinstance(loader, _ResumableLoader) and self._train_loader_state:
            loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = {}
        self._train_loader = loader
        return loader

    @override
    def state_dict(self) -> dict[str, Any]:
        loader = self._train_loader
        state = loader.state_dict() if isinstance(loader, _ResumableLoader) else {}
        return {"train_loader": state} if state else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_loader_state = dict(state_dict.get("train_loader") or {})

    @override
    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader("val")

    @override
    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader("test")

    @override
    def predict_dataloader(self) -> DataLoader[Any]:
        return self._loader("test")


def check_loader_args(batch_size: int, num_workers: int) -> None:
    check_int(batch_size, "batch_size", minimum=1)
    check_int(num_workers, "num_workers", minimum=0)


class _EpochSampler(DistributedSampler[Any]):
    """Torch's ``DistributedSampler`` (the permutation of an epoch is drawn from ``seed + epoch``)
    that can start an epoch part-way.

    It is what Lightning itself injects under DDP (``seed`` from ``PL_GLOBAL_SEED``, else 0),
    also used on one device, so that the order of any epoch can be rebuilt after a restart
    without replaying the global random state. Lightning calls ``set_epoch`` before every
    epoch; iterated again without it (a plain PyTorch loop), the sampler moves on to the next
    epoch, so every pass is shuffled anew as with ``shuffle=True``. ``start`` indices of the
    next epoch are skipped once, then ``start`` returns to 0.
    """

    def __init__(self, dataset: Dataset[Any], num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0
        self._ready = True  # `epoch` has not been iterated yet

    @override
    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._ready = True

    def begin_epoch(self) -> int:
        """The epoch the next iteration draws: the one set, else the one after the last."""
        if not self._ready:
            self.epoch += 1
            self._ready = True
        return self.epoch

    @override
    def __iter__(self) -> Iterator[int]:
        self.begin_epoch()
        self._ready = False
        start, self.start = self.start, 0
        return itertools.islice(super().__iter__(), start, None)


class _ResumableLoader(DataLoader[Any]):
    """A ``DataLoader`` with the ``state_dict``/``load_state_dict`` pair Lightning saves in
    checkpoints and restores before the interrupted epoch goes on.

    The state is the sampler's seed and epoch and the number of batches handed out in that
    epoch. Lightning does not prefetch from a loader with a length, so at a checkpoint the
    batches handed out are the batches consumed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches) to skip in that epoch

    @override
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # Runs at the first batch, after Lightning has set the sampler's epoch: the saved
        # position applies only if that is the interrupted epoch (a checkpoint taken at the
        # end of an epoch is resumed at the start of the next).
        resume, self._resume = self._resume, None
        self._yielded = 0
        sampler = self.sampler
        epoch = sampler.begin_epoch() if isinstance(sampler, _EpochSampler) else None
        if resume is not None and isinstance(sampler, _EpochSampler) and resume[0] == epoch:
            self._yielded = resume[1]
            sampler.start = resume[1] * self.batch_size  # type: ignore[operator]
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        sampler = self.sampler
        if not isinstance(sampler, _EpochSampler):
            return {}  # Lightning replaced the sampler (e.g. `overfit_batches`): nothing to resume
        return {
            "seed": sampler.seed,
            "epoch": sampler.epoch,
            "batches": self._yielded,
            "batch_size": self.batch_size,
            "num_replicas": sampler.num_replicas,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sampler = self.sampler
        if not state_dict or not isinstance(sampler, _EpochSampler):
            return
        saved = (state_dict["batch_size"], state_dict["num_replicas"])
        if saved != (self.batch_size, sampler.num_replicas):
            rank_zero_warn(
                "The checkpoint's training loader had (batch_size, processes) ="
                f" {saved}, this run has {(self.batch_size, sampler.num_replicas)}: the"
                " interrupted epoch starts again from its first batch instead of resuming."
            )
            return
        sampler.seed = state_dict["seed"]
        self._resume = (state_dict["epoch"], state_dict["batches"])


def _run_seed() -> int:
    # The seed Lightning gives its own DistributedSampler: `seed_everything`'s, else 0.
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    num_workers: int,
    train: bool,
    pin_memory: bool = False,
    trainer: pl.Trainer | None = None,
) -> DataLoader[Any]:
    """A loader of ``dataset``; in training a :class:`_ResumableLoader` over this process's
    share of a seeded per-epoch permutation (``trainer`` gives the process count and rank)."""
    common: dict[str, Any] = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "persistent_workers": num_workers > 0,
        "pin_memory": pin_memory,
    }
    if not train:
        return DataLoader(dataset, shuffle=False, drop_last=False, **common)
    replicas = (trainer.distributed_sampler_kwargs if trainer is not None else None) or {}
    sampler = _EpochSampler(
        dataset,
        num_replicas=replicas.get("num_replicas", 1),
        rank=replicas.get("rank", 0),
        seed=_run_seed(),
    )
    # drop_last in training: a last batch of 1 breaks BatchNorm and skews per-batch mixing.
    return _ResumableLoader(dataset, sampler=sampler, drop_last=True, **common)
