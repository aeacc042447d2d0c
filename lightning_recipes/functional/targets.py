"""Targets of mixed samples: soft class distributions weighted by what was actually mixed."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from lightning_recipes._validation import (
    check_label_range,
    check_label_smoothing,
    check_num_classes,
    check_perm,
    check_targets,
)

__all__ = ["mix_targets", "soft_targets"]


def soft_targets(y: Tensor, num_classes: int | None = None, label_smoothing: float = 0.0) -> Tensor:
    """Turns labels into float32 targets of shape ``(batch, num_classes)``.

    Integer labels ``(batch,)`` become one-hot rows; float targets ``(batch, C)`` (one-hot,
    soft, or multi-hot for multi-label) are kept as they are, in float32. Label smoothing is
    ``y * (1 - label_smoothing) + label_smoothing / C``, the definition ``F.cross_entropy``
    uses, for both.

    The range of integer labels is checked when they are on the CPU; on an accelerator that
    check would synchronise with the host, so it is left to the caller (the mixing callbacks
    do it on their first batch).

    Args:
        y: Integer labels ``(batch,)`` or float targets ``(batch, C)``.
        num_classes: Number of classes; required for integer labels.
        label_smoothing: In [0, 1); 0 (default) leaves the targets as they are.

    Example:
        >>> soft_targets(torch.tensor([2, 0]), num_classes=3)
        tensor([[0., 0., 1.],
                [1., 0., 0.]])
    """
    num_classes = check_num_classes(num_classes)
    label_smoothing = check_label_smoothing(label_smoothing)
    num_classes = check_targets(y, None, num_classes)
    if not y.is_floating_point() and y.device.type == "cpu":
        check_label_range(y, num_classes)
    return _soft_targets(y, num_classes, label_smoothing)


def mix_targets(
    y: Tensor,
    weights: Tensor,
    perm: Tensor,
    *,
    num_classes: int | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Mixes targets like their samples: ``w_i * t_i + (1 - w_i) * t_perm(i)``.

    ``t`` are the targets of :func:`soft_targets`; pass the ``weights`` returned by
    :func:`~lightning_recipes.functional.mixup`, ``cutmix`` or ``fmix``, which are the areas
    (or ratios) actually mixed, so rows of integer-label targets sum to 1 and put on each
    class the share of the input that shows it.

    Args:
        y: Integer labels ``(batch,)`` or float targets ``(batch, C)``.
        weights: Weight of each sample itself, shape ``(batch,)``.
        perm: Partner index of each sample.
        num_classes: Number of classes; required for integer labels.
        label_smoothing: See :func:`soft_targets`.

    Returns:
        float32 targets of shape ``(batch, num_classes)``.

    Example:
        >>> mix_targets(torch.tensor([0, 1]), torch.tensor([0.7, 0.6]), torch.tensor([1, 0]),
        ...             num_classes=2)
        tensor([[0.7000, 0.3000],
                [0.4000, 0.6000]])
    """
    targets = soft_targets(y, num_classes, label_smoothing)
    batch_size = targets.shape[0]
    check_perm(perm, batch_size, targets.device)
    if not isinstance(weights, Tensor):
        got = type(weights).__name__
        raise TypeError(f"`weights` must be a tensor of shape ({batch_size},), got {got}")
    if weights.shape != (batch_size,):
        got = str(tuple(weights.shape))
        raise ValueError(f"`weights` must be a tensor of shape ({batch_size},), got {got}")
    return _mix_soft_targets(targets, weights, perm)


def _soft_targets(y: Tensor, num_classes: int, label_smoothing: float) -> Tensor:
    """:func:`soft_targets` without the checks."""
    off = label_smoothing / num_classes
    if y.is_floating_point():
        out = y.float()
        return out.mul(1.0 - label_smoothing).add_(off) if label_smoothing else out
    if num_classes > _TABLE_CLASSES:
        out = torch.full((y.shape[0], num_classes), off, dtype=torch.float32, device=y.device)
        return out.scatter_(1, y.long().unsqueeze(1), 1.0 - label_smoothing + off)
    # A row of a cached table per label: one op where filling a new tensor and scattering
    # the ones take two (on small batches each op's fixed cost counts), the same values, and
    # `index_select` refuses a label outside [0, num_classes) as the scatter does.
    index = y if y.dtype in (torch.int64, torch.int32) else y.long()
    return _target_table(num_classes, label_smoothing, y.device).index_select(0, index)


# Classes up to which the soft targets are rows of a (num_classes, num_classes) table (4 MiB).
_TABLE_CLASSES = 1024


@functools.lru_cache(maxsize=16)
def _target_table(num_classes: int, label_smoothing: float, device: torch.device) -> Tensor:
    """Row ``c``: the float32 soft target of label ``c`` (cached: only read)."""
    off = label_smoothing / num_classes
    table = torch.full((num_classes, num_classes), off, dtype=torch.float32, device=device)
    return table.fill_diagonal_(1.0 - label_smoothing + off)


def _mix_soft_targets(targets: Tensor, weights: Tensor, perm: Tensor) -> Tensor:
    """``w_i * t_i + (1 - w_i) * t_perm(i)`` for float32 targets ``t``, without checks."""
    return targets.index_select(0, perm).lerp_(targets, weights.float().unsqueeze(1))
