"""RandomMix: MixUp, CutMix or FMix at random for each batch or sample, as timm's ``Mixup``
switches between MixUp and CutMix."""

from __future__ import annotations

from typing import Any, Literal

from typing_extensions import Unpack

from lightning_recipes._validation import (
    check_alpha,
    check_bool,
    check_positive,
)
from lightning_recipes.callbacks.mixing._base import MixingCallback, errors_named
from lightning_recipes.callbacks.mixing._draw import Methods
from lightning_recipes.callbacks.mixing._kernels import (
    CutMixKernel,
    MixKernel,
    MixUpKernel,
)
from lightning_recipes.callbacks.mixing._options import MixingOptions, takes_mixing_options
from lightning_recipes.callbacks.mixing._randomness import MethodChoice
from lightning_recipes.callbacks.mixing.fmix import checked_fmix_kernel

__all__ = ["RandomMix"]

_METHODS = ("mixup", "cutmix", "fmix")


@takes_mixing_options
class RandomMix(MixingCallback):
    """Picks MixUp, CutMix or FMix at random for each batch (or each sample) and applies it.

    With ``per_sample=True`` every sample gets its own method and lam in one vectorised step:
    the weight maps of all methods in ``probs`` are computed for the whole batch and each
    sample takes its own, so no sample-dependent shapes (and no device sync) arise.

    Args:
        probs: Probability of each method, by name (``"mixup"``, ``"cutmix"``, ``"fmix"``),
            summing to 1; default ``{"mixup": 0.5, "cutmix": 0.5}``, timm's usual choice.
        alpha: ``Beta(alpha, alpha)`` concentration, one for all methods or one per name
            (e.g. ``{"mixup": 0.8, "cutmix": 1.0}``); missing names get 1.
        correct_lam: See :class:`CutMix`.
        spatial_dims: Number of trailing spatial dims of CutMix and FMix; default ``x.ndim - 2``.
        decay_power: See :class:`FMix`.
        max_soft: See :class:`FMix`.
        mask_sampler: See :class:`FMix`.

    Every option of :class:`~lightning_recipes.MixingOptions` is a keyword argument too.

    Example:
        >>> import lightning.pytorch as pl
        >>> mix = RandomMix({"mixup": 0.5, "cutmix": 0.3, "fmix": 0.2}, alpha={"mixup": 0.8})
        >>> trainer = pl.Trainer(callbacks=[mix], logger=False)
    """

    _LOG_NAME = "RandomMix"

    def __init__(
        self,
        probs: dict[str, float] | None = None,
        *,
        alpha: float | dict[str, float] = 1.0,
        correct_lam: bool = True,
        spatial_dims: int | None = None,
        decay_power: float = 3.0,
        max_soft: float = 0.0,
        mask_sampler: Literal["exact", "fast"] = "fast",
        **options: Unpack[MixingOptions],
    ) -> None:
        with errors_named(self):
            self.probs = _check_probs(probs)
            self.methods = tuple(m for m in _METHODS if self.probs.get(m, 0.0) > 0)
            self.alpha = _check_alphas(alpha)
            self.correct_lam = check_bool(correct_lam, "correct_lam")
            fmix = checked_fmix_kernel(decay_power, max_soft, spatial_dims, mask_sampler)
            self.decay_power, self.max_soft = fmix.decay_power, fmix.max_soft
            self.mask_sampler = fmix.mask_sampler
            self.spatial_dims = fmix.spatial_dims
            kernels: dict[str, MixKernel] = {
                "mixup": MixUpKernel(),
                "cutmix": CutMixKernel(self.spatial_dims, self.correct_lam),
                "fmix": fmix,
            }
            methods = Methods(
                tuple(kernels[m] for m in self.methods),
                tuple(self.alpha[m] for m in self.methods),
                MethodChoice([self.probs[m] for m in self.methods]),
            )
            super().__init__(methods, **options)


def _check_probs(probs: Any) -> dict[str, float]:
    probs = {"mixup": 0.5, "cutmix": 0.5} if probs is None else _check_names(probs, "probs")
    checked = {
        name: check_positive(v, f"probs[{name!r}]", allow_zero=True) for name, v in probs.items()
    }
    if abs(sum(checked.values()) - 1.0) > 1e-6:
        raise ValueError(f"`probs` must sum to 1, got {sum(checked.values())} for {probs}")
    return checked


def _check_alphas(alpha: Any) -> dict[str, float]:
    if not isinstance(alpha, dict):
        return dict.fromkeys(_METHODS, check_alpha(alpha))
    alpha = _check_names(alpha, "alpha")
    return {m: check_alpha(alpha.get(m, 1.0), f"alpha[{m!r}]") for m in _METHODS}


def _check_names(values: Any, name: str) -> dict[str, Any]:
    """A dict whose keys are method names."""
    if not isinstance(values, dict):
        raise TypeError(f"`{name}` must be a dict of method names, got {values!r}")
    unknown = sorted(set(values) - set(_METHODS))
    if unknown:
        raise ValueError(f"`{name}` keys must be among {_METHODS}, got {unknown}")
    return values
