"""``DigitsDataModule``: scikit-learn's bundled 8x8 handwritten digits, no download."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits  # type: ignore[import-untyped]
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from lightning_recipes._validation import check_int, check_range
from lightning_recipes.data._common import SplitDataModule, check_loader_args, make_loader

__all__ = ["DigitsDataModule"]


class DigitsDataModule(SplitDataModule):
    """The UCI handwritten digits (1,797 real 8x8 grey images, 10 classes) shipped in scikit-learn.

    The split into train, validation and test is stratified by class and fixed by ``seed``, so
    every run and every process sees the same split. Pixels (0 to 16) are scaled to [0, 1] and
    standardised with the mean and standard deviation of the training split.

    Args:
        batch_size: Batch size of every loader.
        val_fraction: Fraction of all images held out for validation.
        test_fraction: Fraction of all images held out for testing.
        seed: Seed of the split.
        image_size: Upscale the 8x8 images to this size (bilinear), e.g. 32 for a
            torchvision model; ``None`` keeps 8x8.
        num_workers: DataLoader workers (the data is in memory; 0 is fastest here).

    Attributes:
        num_classes: 10.
        in_channels: 1.
        image_size: Side of the (square) images the loaders yield.

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), y.dtype
        ((32, 1, 8, 8), torch.int64)
    """

    num_classes = 10
    in_channels = 1

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        image_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            check_range(value, name, 0.0, 1.0, open_low=True, open_high=True)
        if val_fraction + test_fraction >= 0.9:
            raise ValueError(
                "`val_fraction + test_fraction` must leave at least 10% for training, got"
                f" {val_fraction} + {test_fraction}"
            )
        check_int(image_size, "image_size", minimum=8, optional=True)
        check_int(seed, "seed")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.image_size = image_size or 8
        self._splits: dict[str, TensorDataset] = {}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image."""
        return (self.in_channels, self.image_size, self.image_size)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        hp = self.hparams
        digits = load_digits()
        images = digits.images.astype(np.float32) / 16.0
        labels = digits.target.astype(np.int64)
        index = np.arange(len(labels))
        rest, test = train_test_split(
            index, test_size=hp["test_fraction"], stratify=labels, random_state=hp["seed"]
        )
        train, val = train_test_split(
            rest,
            test_size=hp["val_fraction"] / (1.0 - hp["test_fraction"]),
            stratify=labels[rest],
            random_state=hp["seed"],
        )
        x = torch.from_numpy(images).unsqueeze(1)
        mean, std = x[train].mean(), x[train].std()
        x = (x - mean) / std
        if self.image_size != 8:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        y = torch.from_numpy(labels)
        for name, idx in (("train", train), ("val", val), ("test", test)):
            idx_t = torch.from_numpy(np.sort(idx))
            self._splits[name] = TensorDataset(x[idx_t].contiguous(), y[idx_t])

    @override
    def _loader(self, split: str) -> DataLoader[Any]:
        if not self._splits:
            self.setup()
        return make_loader(
            self._splits[split],
            self.batch_size,
            self.hparams["num_workers"],
            split == "train",
            trainer=self.trainer,
        )
