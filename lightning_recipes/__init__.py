"""lightning_recipes: everyday training recipes for PyTorch Lightning, correct by default."""

from lightning_recipes.callbacks import (
    CutMix,
    FMix,
    LossScaleMonitor,
    LRMonitor,
    MixingOptions,
    MixUp,
    RandomMix,
    TrainingSanityChecks,
    TrainingSanityError,
    TrainingSanityWarning,
)
from lightning_recipes.checkpointing import (
    AtomicCheckpointIO,
    InterruptCheckpoint,
    find_last_checkpoint,
)
from lightning_recipes.classifier import ImageClassifier
from lightning_recipes.data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule
from lightning_recipes.lr_find import LRFindResult, lr_find, suggest_lrs
from lightning_recipes.module import OneCycleModule
from lightning_recipes.preview import SchedulePreview, preview_schedule
from lightning_recipes.scheduler import GuardedOneCycleLR, ScheduleMismatchError

__version__ = "0.1.0"

__all__ = [
    "AtomicCheckpointIO",
    "CIFAR10DataModule",
    "CutMix",
    "DigitsDataModule",
    "FMix",
    "GuardedOneCycleLR",
    "ImageClassifier",
    "ImageFolderDataModule",
    "InterruptCheckpoint",
    "LRFindResult",
    "LRMonitor",
    "LossScaleMonitor",
    "MixUp",
    "MixingOptions",
    "OneCycleModule",
    "RandomMix",
    "ScheduleMismatchError",
    "SchedulePreview",
    "TrainingSanityChecks",
    "TrainingSanityError",
    "TrainingSanityWarning",
    "find_last_checkpoint",
    "lr_find",
    "preview_schedule",
    "suggest_lrs",
]
