"""What the data modules share: argument checks and loader construction."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override


class SplitDataModule(pl.LightningDataModule):
    """A data module whose four loaders come from one ``_loader(split)`` method.

    Prediction reads the test split.
    """

    def _loader(self, split: str) -> DataLoader:
        raise NotImplementedError

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")


def check_loader_args(batch_size: int, num_workers: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"`num_workers` must be an integer >= 0, got {num_workers!r}")


def make_loader(
    dataset: Dataset, batch_size: int, num_workers: int, train: bool, pin_memory: bool = False
) -> DataLoader:
    # drop_last in training: a last batch of 1 breaks BatchNorm and skews per-batch mixing.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
