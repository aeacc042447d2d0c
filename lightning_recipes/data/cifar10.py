"""``CIFAR10DataModule``: torchvision's CIFAR-10 with random crop and flip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import CIFAR10  # type: ignore[import-untyped]
from torchvision.transforms import v2  # type: ignore[import-untyped]
from typing_extensions import override

from lightning_recipes._validation import check_int, check_range
from lightning_recipes.data._common import SplitDataModule, check_loader_args, make_loader

__all__ = ["CIFAR10DataModule"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class CIFAR10DataModule(SplitDataModule):
    """CIFAR-10 read by torchvision, with the standard pad-4 random crop and horizontal flip.

    ``val_size`` images of the training batches (chosen by ``seed``) are held out for
    validation; the official test batch is the test set.

    Args:
        root: Folder that holds (or will hold) ``cifar-10-batches-py``.
        download: Download the data set into ``root`` if missing. Off by default: nothing is
            fetched unless asked.
        batch_size: Batch size per process.
        num_workers: DataLoader worker processes.
        val_size: Training images held out for validation.
        seed: Seed of the validation hold-out.

    Raises:
        FileNotFoundError: ``download=False`` and ``root/cifar-10-batches-py`` is missing.
    """

    num_classes = 10
    in_channels = 3
    image_size = 32
    image_shape = (3, 32, 32)

    def __init__(
        self,
        root: str | Path = "data",
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 4,
        val_size: int = 5000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        check_int(val_size, "val_size", minimum=1)
        check_range(val_size, "val_size", 1, 49999)  # CIFAR-10 has 50000 training images
        check_int(seed, "seed")
        self.root = Path(root)
        self.download = download
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.seed = seed
        normalize = [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
        self.train_transform = v2.Compose(
            [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), *normalize]
        )
        self.eval_transform = v2.Compose(normalize)
        self._data: dict[str, Dataset[Any]] = {}

    @override
    def prepare_data(self) -> None:
        if self.download:
            CIFAR10(str(self.root), train=True, download=True)
            CIFAR10(str(self.root), train=False, download=True)

    def _check_present(self) -> None:
        folder = self.root / CIFAR10.base_folder
        if not folder.is_dir():
            raise FileNotFoundError(
                f"CIFAR-10 not found at {str(folder)!r}. Put the extracted"
                " `cifar-10-batches-py` folder under `root`, or pass `download=True`."
            )

    @override
    def setup(self, stage: str | None = None) -> None:
        if self._data:
            return
        self._check_present()
        root = str(self.root)
        train_aug = CIFAR10(root, train=True, transform=self.train_transform)
        train_eval = CIFAR10(root, train=True, transform=self.eval_transform)
        n = len(train_aug)
        if self.val_size >= n:
            raise ValueError(f"`val_size` ({self.val_size}) must be smaller than {n} images")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        self._data["train"] = Subset(train_aug, order[self.val_size :])
        self._data["val"] = Subset(train_eval, order[: self.val_size])
        self._data["test"] = CIFAR10(root, train=False, transform=self.eval_transform)

    @override
    def _loader(self, split: str) -> DataLoader[Any]:
        self.setup()
        train = split == "train"
        return make_loader(
            self._data[split],
            self.batch_size,
            self.num_workers,
            train,
            pin_memory=torch.cuda.is_available(),
            trainer=self.trainer,
        )
