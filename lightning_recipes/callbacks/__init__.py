"""Lightning callbacks: mixed-sample augmentation, honest LR and loss-scale logging, loop checks."""

from lightning_recipes.callbacks.loss_scale import LossScaleMonitor
from lightning_recipes.callbacks.lr_monitor import LRMonitor
from lightning_recipes.callbacks.mixing import CutMix, FMix, MixingOptions, MixUp, RandomMix
from lightning_recipes.callbacks.sanity import (
    TrainingSanityChecks,
    TrainingSanityError,
    TrainingSanityWarning,
)

__all__ = [
    "CutMix",
    "FMix",
    "LRMonitor",
    "LossScaleMonitor",
    "MixUp",
    "MixingOptions",
    "RandomMix",
    "TrainingSanityChecks",
    "TrainingSanityError",
    "TrainingSanityWarning",
]
