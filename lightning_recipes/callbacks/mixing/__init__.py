"""Mixed-sample augmentation callbacks: :class:`MixUp`, :class:`CutMix`, :class:`FMix` and
:class:`RandomMix`.

Papers: Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018
(https://arxiv.org/abs/1710.09412); Yun et al., "CutMix: Regularization Strategy to Train
Strong Classifiers with Localizable Features", ICCV 2019 (https://arxiv.org/abs/1905.04899);
Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation", 2020
(https://arxiv.org/abs/2002.12047).

The callbacks only decide *when* to mix and draw the randomness; the mixing itself is
:mod:`lightning_recipes.functional`. They work in ``on_train_batch_start``, after the batch has
reached the device, and replace the input and the targets inside the (list or dict) batch, so
``training_step`` receives the mixed inputs and float32 soft targets of shape
``(batch, num_classes)``.

Layout: ``_options`` (the shared options, typed), ``_base`` (batch access, hooks),
``_batch`` (finding and checking the inputs and targets), ``_randomness`` (per-batch seeding),
``_draw`` (sample, then apply), ``_kernels`` (the one protocol of the methods), ``_schedule``
(when mixing stops), ``_grid`` (the picture), and one module per public callback.
"""

from lightning_recipes.callbacks.mixing._options import MixingOptions
from lightning_recipes.callbacks.mixing.cutmix import CutMix
from lightning_recipes.callbacks.mixing.fmix import FMix
from lightning_recipes.callbacks.mixing.mixup import MixUp
from lightning_recipes.callbacks.mixing.random_mix import RandomMix

__all__ = ["CutMix", "FMix", "MixUp", "MixingOptions", "RandomMix"]
