"""CutMix: paste a box of the partner sample; weight the targets by the area actually pasted.

Paper: Yun, Han, Oh, Chun, Choe, Yoo, "CutMix: Regularization Strategy to Train Strong
Classifiers with Localizable Features", ICCV 2019, https://arxiv.org/abs/1905.04899.

The box has sides ``size * (1 - lam) ** (1 / d)`` around a uniform random centre and is clipped
at the border, as in the paper's code; clipping shrinks the pasted area, so the target weights
are taken from the clipped box ("lam correction", on by default as in timm). Boxes are drawn per
sample as tensors and turned into masks by broadcast comparisons: no Python loop over samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_recipes._validation import (
    check_generator,
    check_inplace,
    check_input,
    check_lam,
    check_lam_value,
    check_perm,
    check_spatial_size,
    resolve_spatial_dims,
)
from lightning_recipes.functional._cutmix_boxes import (
    _box_corners,
    _clipped_boxes,
    _grid,
    _outside_mask,
    _per_sample_mask,
    _sample_box,
)
from lightning_recipes.functional._rows import blend_box_rows, paste_rows, rows_pay
from lightning_recipes.functional.blend import _blend_finite, _finite_partners, _guarded_weights

__all__ = ["box_mask", "cutmix", "sample_boxes"]


def sample_boxes(
    spatial_size: Sequence[int],
    lam: float | Tensor,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draws CutMix boxes whose unclipped volume is ``(1 - lam)`` of the input.

    Args:
        spatial_size: Size of the 1 to 3 spatial dims, e.g. ``(height, width)``.
        lam: Weight of the sample itself (outside the box): a Python float for one box, drawn
            on the CPU (so that reading it costs no device sync), or a tensor of any shape for
            one box per element, drawn on its device.
        generator: Source of randomness, on the CPU for a float ``lam``, else on the device
            of ``lam``.

    Returns:
        A ``torch.long`` tensor of shape ``(*lam.shape, len(spatial_size), 2)`` holding the
        half-open range ``[low, high)`` of the box along each spatial dim, clipped to the
        input.

    Example:
        >>> boxes = sample_boxes((32, 32), torch.tensor([0.75, 1.0]),
        ...                      generator=torch.Generator().manual_seed(0))
        >>> boxes.shape, (boxes[1, :, 1] - boxes[1, :, 0]).tolist()
        (torch.Size([2, 2, 2]), [0, 0])
    """
    spatial_size = check_spatial_size(spatial_size)
    if not isinstance(lam, Tensor):
        box = _sample_box(spatial_size, check_lam_value(lam), generator)
        return torch.tensor(box, dtype=torch.long)
    generator = check_generator(generator, lam.device)
    low, high = _box_corners(spatial_size, lam, generator)
    sizes = _grid(spatial_size, lam.device)[0]
    low = torch.minimum(low.clamp_(min=0), sizes)
    high = torch.minimum(high.clamp_(min=0), sizes)
    return torch.stack((low, high), dim=-1).long()


def box_mask(
    boxes: Tensor, spatial_size: Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Turns boxes into masks ``m``: 0 inside the box (the partner's pixels), 1 outside.

    Args:
        boxes: Output of :func:`sample_boxes`, shape ``(*batch, d, 2)``.
        spatial_size: Size of the ``d`` spatial dims.
        dtype: dtype of the mask.

    Returns:
        A tensor of shape ``(*batch, *spatial_size)`` on the device of ``boxes``.

    Example:
        >>> box_mask(torch.tensor([[1, 3]]), (4,))
        tensor([1., 0., 0., 1.])
    """
    spatial_size = check_spatial_size(spatial_size)
    ndim = len(spatial_size)
    if boxes.ndim < 2 or tuple(boxes.shape[-2:]) != (ndim, 2):
        raise ValueError(
            f"`boxes` must have shape (..., {ndim}, 2) for {ndim} spatial dims, got"
            f" {tuple(boxes.shape)}"
        )
    return _outside_mask(boxes[..., 0], boxes[..., 1], spatial_size, dtype)


def cutmix(
    x: Tensor,
    lam: float | Tensor,
    perm: Tensor,
    *,
    generator: torch.Generator | None = None,
    correct_lam: bool = True,
    spatial_dims: int | None = None,
    inplace: bool = False,
) -> tuple[Tensor, Tensor]:
    """Pastes a box of each sample's partner into it and returns the true weights.

    Args:
        x: Floating-point batch ``(batch, channels, *spatial)`` with 1 to 3 spatial dims
            (``spatial_dims`` for other layouts).
        lam: Requested weight of each sample itself: a Python float (one box for the whole
            batch) or a tensor of shape ``(batch,)`` on ``x.device`` (one box per sample).
        perm: Partner index of each sample.
        generator: Source of randomness for the box positions: on the CPU for a float
            ``lam`` (one box, whose corners are read without a device sync), else on
            ``x.device``.
        correct_lam: Return the weights of the clipped boxes, i.e. the areas actually mixed
            (default). ``False`` returns ``lam`` as requested, as the CutMix paper's code does.
        spatial_dims: Number of trailing spatial dims; default ``x.ndim - 2``.
        inplace: Write the mixed batch into ``x`` (see
            :func:`~lightning_recipes.functional.blend`); by default ``x`` is not modified.
            With one box per batch only the box is copied then, as in timm's ``Mixup``;
            without it, ``x`` is cloned and the box copied into the clone.

    Returns:
        ``(mixed, weights)``: the mixed batch (dtype and memory format of ``x``) and the
        float32 weight of each sample itself, shape ``(batch,)``. A sample whose partner holds
        NaN or inf (with one box per batch: inside the box) is not mixed (weight 1).

    Example:
        >>> x = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
        >>> g = torch.Generator().manual_seed(0)
        >>> mixed, weights = cutmix(x, 0.75, torch.tensor([1, 0]), generator=g)
        >>> torch.allclose(weights, 1 - (mixed != x).flatten(1).float().mean(1))
        True
    """
    check_input(x)
    check_perm(perm, x.shape[0], x.device)
    check_inplace(x, inplace)
    lam = check_lam(lam, x.shape[0], x.device)
    box_device = x.device if isinstance(lam, Tensor) else torch.device("cpu")
    generator = check_generator(generator, box_device)
    if not isinstance(lam, Tensor):
        return _paste_box(x, lam, perm, generator, correct_lam, spatial_dims, inplace)
    if rows_pay(x, 1.0, inplace):
        return _mix_box_rows(x, lam, perm, generator, correct_lam, spatial_dims)
    mask, weights = _cutmix_mask(
        x, lam, generator=generator, correct_lam=correct_lam, spatial_dims=spatial_dims
    )
    return _blend_finite(x, perm, mask, weights, inplace)


def _paste_box(
    x: Tensor,
    lam: float,
    perm: Tensor,
    generator: torch.Generator | None,
    correct_lam: bool,
    spatial_dims: int | None,
    inplace: bool,
    box: list[tuple[int, int]] | None = None,
) -> tuple[Tensor, Tensor]:
    """CutMix with one box: only the box is read from the partners and written; ``box``
    is drawn from ``generator`` unless given (drawn ahead by :func:`_sample_box`).

    In place, the box of every partner is gathered before any is written, so a sample whose
    box is overwritten still gives its own pixels to the sample that takes it as partner. Out
    of place, ``x`` is cloned and the partners' boxes are gathered straight into the clone's
    box: one pass over the batch and one over the boxes, instead of building a mask, gathering
    every partner and blending through the mask (``benchmarks/RESULTS.md``); on the CPU, with
    large samples, a sample at a time (:func:`~lightning_recipes.functional._rows.paste_rows`).
    Pasting gives the blend's values, since a binary weight copies pixel values (bit for bit
    but for the sign of a zero, which the paste keeps and the blend's ``lerp`` may not; see
    :func:`blend`). The box is the same draw as :func:`_cutmix_mask` makes, so all paths give
    the same result.
    """
    ndim = resolve_spatial_dims(x, spatial_dims, "cutmix")
    size = tuple(x.shape[-ndim:])
    if box is None:
        box = _sample_box(size, lam, generator)
    region = (slice(None),) * (x.ndim - ndim) + tuple(slice(low, high) for low, high in box)
    boxes = x[region]
    weights = torch.full((x.shape[0],), _box_weight(box, size, lam, correct_lam), device=x.device)
    # Only the boxes are read, so only they are checked: a partner whose NaN lies outside
    # its box gives finite pixels.
    if rows_pay(x, 1.0, inplace):  # on the CPU, large samples: a sample at a time
        mixed, partner_finite = paste_rows(x, region, perm)
        return mixed, torch.where(partner_finite, weights, 1.0)
    perm, finite = _finite_partners(boxes, perm)
    if inplace:
        mixed = x
        mixed[region] = boxes.index_select(0, perm)
    else:
        mixed = x.clone()  # keeps the memory format
        # The clone's box is a view that does not overlap `x`: the gather writes into it.
        torch.index_select(boxes, 0, perm, out=mixed[region])
    return mixed, _guarded_weights(weights, finite)


def _box_weight(
    box: list[tuple[int, int]], size: tuple[int, ...], lam: float, correct_lam: bool
) -> float:
    """The weight of the sample itself: 1 - the clipped box's share, or ``lam`` uncorrected."""
    area = math.prod(high - low for low, high in box) / math.prod(size)
    return 1.0 - area if correct_lam else lam


def _cutmix_mask(
    x: Tensor,
    lam: float | Tensor,
    *,
    generator: torch.Generator | None,
    correct_lam: bool,
    spatial_dims: int | None,
) -> tuple[Tensor, Tensor]:
    """The CutMix mask, broadcastable to ``x``, and the float32 weights ``(batch,)``."""
    batch_size = x.shape[0]
    ndim = resolve_spatial_dims(x, spatial_dims, "cutmix")
    size = tuple(x.shape[-ndim:])
    if isinstance(lam, Tensor):
        mask, weights = _per_sample_mask(size, lam, generator, x.dtype)
        if not correct_lam:
            weights = lam.float()
    else:
        # One box, drawn on the CPU: its corners are Python ints without a device sync.
        box = _sample_box(size, lam, generator)
        mask = torch.ones(size, dtype=x.dtype, device=x.device)
        mask[tuple(slice(low, high) for low, high in box)] = 0
        weight = _box_weight(box, size, lam, correct_lam)
        weights = torch.full((batch_size,), weight, device=x.device)
    # (batch or 1, 1 for each non-spatial dim, *spatial) broadcasts over channels.
    return mask.view(-1, *([1] * (x.ndim - 1 - ndim)), *size), weights


def _mix_box_rows(
    x: Tensor,
    lam: Tensor,
    perm: Tensor,
    generator: torch.Generator | None,
    correct_lam: bool,
    spatial_dims: int | None,
) -> tuple[Tensor, Tensor]:
    """Per-sample CutMix out of place on the CPU for large samples, without a mask: the same
    draws and bits as the mask's blend (:func:`.blend_box_rows`)."""
    boxes, weights = _clipped_boxes(x, lam, generator, correct_lam, spatial_dims)
    return blend_box_rows(x, perm, boxes, weights)
