"""MixUp: a convex combination of two samples and of their targets.

Paper: Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk Minimization",
ICLR 2018, https://arxiv.org/abs/1710.09412.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_recipes._validation import (
    check_inplace,
    check_input,
    check_lam,
    check_perm,
)
from lightning_recipes.functional.blend import _blend_finite

__all__ = ["mixup"]


def mixup(
    x: Tensor, lam: float | Tensor, perm: Tensor, *, inplace: bool = False
) -> tuple[Tensor, Tensor]:
    """Mixes each sample with its partner: ``lam * x_i + (1 - lam) * x_perm(i)``.

    Args:
        x: Floating-point batch of any shape ``(batch, ...)``.
        lam: Weight of each sample itself: one Python float in [0, 1] for the whole batch,
            or a float tensor of shape ``(batch,)`` on ``x.device`` (one per sample).
        perm: Partner index of each sample (see
            :func:`~lightning_recipes.functional.sample_partners`).
        inplace: Write the mixed batch into ``x`` (see
            :func:`~lightning_recipes.functional.blend`); by default ``x`` is not modified.

    Returns:
        ``(mixed, weights)``: the mixed batch (dtype and memory format of ``x``) and the
        float32 weight of each sample itself, shape ``(batch,)``, for
        :func:`~lightning_recipes.functional.mix_targets`. A per-sample ``lam`` is applied in
        ``x.dtype``, so with fp16/bf16 inputs the weights are the rounded values that were
        actually applied. A sample whose partner holds NaN or inf is not mixed (weight 1).

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.0]])
        >>> mixed, weights = mixup(x, 0.75, torch.tensor([1, 2, 0]))
        >>> mixed.flatten().tolist(), weights.tolist()
        ([0.25, 1.25, 1.5], [0.75, 0.75, 0.75])
    """
    check_input(x)
    check_perm(perm, x.shape[0], x.device)
    check_inplace(x, inplace)
    weight, weights = _mixup_weight(x, check_lam(lam, x.shape[0], x.device))
    return _blend_finite(x, perm, weight, weights, inplace)


def _mixup_weight(x: Tensor, lam: float | Tensor) -> tuple[float | Tensor, Tensor]:
    """The weight map of MixUp for ``blend`` and the float32 weights ``(batch,)``."""
    if isinstance(lam, Tensor):
        applied = lam.to(x.dtype)
        return applied.view(-1, *([1] * (x.ndim - 1))), applied.float()
    # A Python weight is used in float32 (or wider) by lerp whatever the dtype of x.
    return lam, torch.full((x.shape[0],), lam, dtype=torch.float32, device=x.device)
