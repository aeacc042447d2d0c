"""CutMix as a callback (Yun et al., "CutMix: Regularization Strategy to Train Strong
Classifiers with Localizable Features", ICCV 2019, https://arxiv.org/abs/1905.04899)."""

from __future__ import annotations

from typing_extensions import Unpack

from lightning_recipes._validation import check_alpha, check_bool, check_spatial_dims
from lightning_recipes.callbacks.mixing._base import MixingCallback, errors_named
from lightning_recipes.callbacks.mixing._draw import Methods
from lightning_recipes.callbacks.mixing._kernels import CutMixKernel
from lightning_recipes.callbacks.mixing._options import MixingOptions, takes_mixing_options

__all__ = ["CutMix"]


@takes_mixing_options
class CutMix(MixingCallback):
    """Mixes training batches with CutMix: a box of the partner is pasted into each sample.

    The box covers ``1 - lam`` of the input, ``lam ~ Beta(alpha, alpha)``, and is clipped at
    the border; the targets are weighted by the area actually pasted (``correct_lam``).
    Works on 1-D, 2-D and 3-D inputs ``(batch, channels, *spatial)``.

    Args:
        alpha: Concentration of ``Beta(alpha, alpha)``, > 0; the paper uses 1.
        correct_lam: Weight targets by the clipped box's area (default) rather than the
            sampled lam.
        spatial_dims: Number of trailing spatial dims; default ``x.ndim - 2``.

    Every option of :class:`~lightning_recipes.MixingOptions` is a keyword argument too.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[CutMix(alpha=1.0, per_sample=True)], logger=False)
    """

    _LOG_NAME = "CutMix"

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        correct_lam: bool = True,
        spatial_dims: int | None = None,
        **options: Unpack[MixingOptions],
    ) -> None:
        with errors_named(self):
            self.alpha = check_alpha(alpha)
            self.correct_lam = check_bool(correct_lam, "correct_lam")
            self.spatial_dims = check_spatial_dims(spatial_dims)
            kernel = CutMixKernel(self.spatial_dims, self.correct_lam)
            super().__init__(Methods((kernel,), (self.alpha,), None), **options)
