"""FMix as a callback (Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation", 2020,
https://arxiv.org/abs/2002.12047)."""

from __future__ import annotations

from typing import Any, Literal

from typing_extensions import Unpack

from lightning_recipes._validation import (
    check_alpha,
    check_decay_power,
    check_mask_sampler,
    check_max_soft,
    check_spatial_dims,
)
from lightning_recipes.callbacks.mixing._base import MixingCallback, errors_named
from lightning_recipes.callbacks.mixing._draw import Methods
from lightning_recipes.callbacks.mixing._kernels import FMixKernel
from lightning_recipes.callbacks.mixing._options import MixingOptions, takes_mixing_options

__all__ = ["FMix"]


@takes_mixing_options
class FMix(MixingCallback):
    """Mixes training batches with FMix: a binarised low-frequency Fourier mask per batch or
    per sample selects which parts come from the partner.

    The mask has ``round(lam * N)`` ones, ``lam ~ Beta(alpha, alpha)`` (with the default fast
    sampler, up to the resolution of its lattice of about 1024 points on larger inputs), and
    the targets are weighted by its mean. Works on 1-D (audio, sequences), 2-D and 3-D inputs
    of any size.

    Args:
        alpha: Concentration of ``Beta(alpha, alpha)``, > 0; the paper uses 1.
        decay_power: Decay ``d`` of the ``1 / f**d`` spectrum, > 0; the paper's default 3.
        max_soft: Soft edge of the mask as a fraction of its size, in [0, 0.5]; 0 (default)
            gives binary masks.
        spatial_dims: Number of trailing spatial dims; default ``x.ndim - 2``: 1 for audio
            ``(batch, channels, time)``, 3 for volumes ``(batch, channels, D, H, W)``.
        mask_sampler: ``"fast"`` (default): only the frequencies that carry the mask's
            energy, on a coarse grid, upsampled, and the threshold found on a lattice of about
            1024 points; the paper's distribution within sampling error at a fraction of the
            cost, and the exact sampler itself where that makes no approximation (inputs up
            to 11x11). ``"exact"``: the paper's algorithm, a spectrum on the full frequency
            grid per mask, for its draws (see the FMix card).

    Every option of :class:`~lightning_recipes.MixingOptions` is a keyword argument too.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[FMix(alpha=1.0, decay_power=3.0)], logger=False)
    """

    _LOG_NAME = "FMix"

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        decay_power: float = 3.0,
        max_soft: float = 0.0,
        spatial_dims: int | None = None,
        mask_sampler: Literal["exact", "fast"] = "fast",
        **options: Unpack[MixingOptions],
    ) -> None:
        with errors_named(self):
            self.alpha = check_alpha(alpha)
            kernel = checked_fmix_kernel(decay_power, max_soft, spatial_dims, mask_sampler)
            self.decay_power, self.max_soft = kernel.decay_power, kernel.max_soft
            self.spatial_dims, self.mask_sampler = kernel.spatial_dims, kernel.mask_sampler
            super().__init__(Methods((kernel,), (self.alpha,), None), **options)


def checked_fmix_kernel(
    decay_power: Any, max_soft: Any, spatial_dims: Any, mask_sampler: Any
) -> FMixKernel:
    """The FMix kernel of the arguments :class:`FMix` and :class:`RandomMix` share, checked."""
    return FMixKernel(
        check_spatial_dims(spatial_dims),
        check_decay_power(decay_power),
        check_max_soft(max_soft),
        check_mask_sampler(mask_sampler),
    )
