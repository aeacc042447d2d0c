"""Data modules: embedded digits, any ImageFolder, CIFAR-10."""

from lightning_recipes.data.cifar10 import CIFAR10DataModule
from lightning_recipes.data.digits import DigitsDataModule
from lightning_recipes.data.image_folder import ImageFolderDataModule

__all__ = ["CIFAR10DataModule", "DigitsDataModule", "ImageFolderDataModule"]
