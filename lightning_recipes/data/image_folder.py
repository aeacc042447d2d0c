"""``ImageFolderDataModule``: any ``root/train/<class>/*.jpg`` + ``root/val/<class>/*.jpg`` tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder  # type: ignore[import-untyped]
from torchvision.datasets.folder import IMG_EXTENSIONS  # type: ignore[import-untyped]
from torchvision.transforms import v2  # type: ignore[import-untyped]
from typing_extensions import override

from lightning_recipes._validation import check_int, check_range
from lightning_recipes.data._common import SplitDataModule, check_loader_args, make_loader

__all__ = ["ImageFolderDataModule"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFolderDataModule(SplitDataModule):
    """Images in class folders, read by torchvision's ``ImageFolder``.

    ``root`` must hold ``train/`` and ``val/``, each with one sub-folder per class; a
    ``test/`` folder is used for testing and prediction if present, else ``val/``. Training uses
    the standard ImageNet augmentation (``RandomResizedCrop`` + horizontal flip, torchvision v2
    transforms); evaluation resizes to ``image_size / crop_fraction`` and centre-crops.

    Args:
        root: Folder with ``train/`` and ``val/``.
        image_size: Side of the square crops.
        batch_size: Batch size of every loader.
        num_workers: DataLoader worker processes.
        crop_fraction: Evaluation centre crop as a fraction of the resized side (0.875 is the
            usual ImageNet value).
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.

    Raises:
        FileNotFoundError: ``root``, ``root/train`` or ``root/val`` is missing, or one of them
            or an existing ``root/test`` holds no class folder, or a class folder without
            images; the message names the path.
        ValueError: ``val/`` or ``test/`` has other class folders than ``train/``.

    Attributes:
        num_classes: Number of class folders in ``root/train``.
        in_channels: 3 (images are converted to RGB).
    """

    in_channels = 3

    def __init__(
        self,
        root: str | Path,
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
        crop_fraction: float = 0.875,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        check_int(image_size, "image_size", minimum=1)
        check_range(crop_fraction, "crop_fraction", 0.0, 1.0, open_low=True)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"`root` must be an existing folder, got {str(self.root)!r}")
        self.classes = _class_folders(self.root / "train")
        # ImageFolder numbers the classes of each split by its own sorted folder names, so a
        # split with other folders would get other labels for the same class, silently.
        splits = ("val", "test") if (self.root / "test").is_dir() else ("val",)
        for split in splits:
            split_classes = _class_folders(self.root / split)
            if split_classes != self.classes:
                raise ValueError(
                    f"The class folders of {str(self.root / split)!r} ({split_classes}) differ"
                    f" from those of {str(self.root / 'train')!r} ({self.classes}), so ImageFolder"
                    " would label them differently; use the same class sub-folders in every split"
                )
        self.num_classes = len(self.classes)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        self.train_transform = v2.Compose(
            [
                v2.RandomResizedCrop(image_size, antialias=True),
                v2.RandomHorizontalFlip(),
                *normalize,
            ]
        )
        self.eval_transform = v2.Compose(
            [
                v2.Resize(round(image_size / crop_fraction), antialias=True),
                v2.CenterCrop(image_size),
                *normalize,
            ]
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image."""
        return (self.in_channels, self.image_size, self.image_size)

    @override
    def _loader(self, split: str) -> DataLoader[Any]:
        folder = self.root / split
        if split == "test" and not folder.is_dir():
            folder = self.root / "val"
        train = split == "train"
        transform = self.train_transform if train else self.eval_transform
        dataset = ImageFolder(str(folder), transform=transform)
        return make_loader(
            dataset,
            self.batch_size,
            self.num_workers,
            train,
            pin_memory=torch.cuda.is_available(),
            trainer=self.trainer,
        )


def _class_folders(folder: Path) -> list[str]:
    """The classes torchvision's ImageFolder will find, checked up front with clear errors."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Expected a folder of class sub-folders at {str(folder)!r}, but it does not exist"
        )
    # The same class list ImageFolder builds: every sub-folder, sorted.
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"{str(folder)!r} holds no class sub-folder")
    for name in classes:
        files = (f for f in (folder / name).rglob("*") if f.is_file())
        if not any(f.suffix.lower() in IMG_EXTENSIONS for f in files):
            raise FileNotFoundError(
                f"Class folder {str(folder / name)!r} holds no image"
                f" (extensions {', '.join(IMG_EXTENSIONS)}); remove it or add its images"
            )
    return classes
