"""MixUp as a callback (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018,
https://arxiv.org/abs/1710.09412)."""

from __future__ import annotations

from typing_extensions import Unpack

from lightning_recipes._validation import check_alpha
from lightning_recipes.callbacks.mixing._base import MixingCallback, errors_named
from lightning_recipes.callbacks.mixing._draw import Methods
from lightning_recipes.callbacks.mixing._kernels import MixUpKernel
from lightning_recipes.callbacks.mixing._options import MixingOptions, takes_mixing_options

__all__ = ["MixUp"]


@takes_mixing_options
class MixUp(MixingCallback):
    """Mixes training batches with MixUp: ``lam * x_i + (1 - lam) * x_perm(i)``.

    ``lam ~ Beta(alpha, alpha)``, drawn once per batch or, with ``per_sample=True``, per
    sample. Integer labels become float32 soft targets ``(batch, num_classes)`` whose rows sum
    to 1; one-hot, soft and multi-hot float targets are mixed as they are. Each sample is mixed
    with a different one (a random cycle through the batch), so odd batch sizes work; a batch
    of one passes through unmixed (its targets still become soft). Inputs keep their dtype and
    memory format; validation, test and predict batches are never touched.

    Args:
        alpha: Concentration of ``Beta(alpha, alpha)``, > 0; 1 (default, uniform) as in
            timm and torchvision. The paper uses 0.1 to 0.4 on ImageNet, 1 on CIFAR-10.

    Every option of :class:`~lightning_recipes.MixingOptions` is a keyword argument too.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[MixUp(alpha=0.4, stop_fraction=0.9)], logger=False)
    """

    _LOG_NAME = "MixUp"

    def __init__(self, alpha: float = 1.0, **options: Unpack[MixingOptions]) -> None:
        with errors_named(self):
            self.alpha = check_alpha(alpha)
            super().__init__(Methods((MixUpKernel(),), (self.alpha,), None), **options)
