"""CutMix's boxes: drawn per sample as tensors or per batch as Python ints, clipped at the
border, and turned into masks (:func:`~lightning_recipes.functional.sample_boxes` and
:func:`~lightning_recipes.functional.box_mask` are their public faces)."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from lightning_recipes._validation import check_generator, resolve_spatial_dims


@functools.lru_cache(maxsize=16)
def _grid(size: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``size`` and ``size - 1`` as float32 tensors, and the coordinates ``0 .. max(size) - 1``
    (cached: they depend only on the arguments, and are never written to)."""
    sizes = torch.tensor(size, dtype=torch.float32, device=device)
    coords = torch.arange(max(size), dtype=torch.float32, device=device)
    return sizes, sizes - 1, coords


def _box_corners(
    spatial_size: tuple[int, ...], lam: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Unclipped box corners ``(low, high)``, float32 of shape ``(*lam.shape, ndim)``: all
    spatial dims at once, the same arithmetic as the float path :func:`_sample_box`."""
    return _corners(spatial_size, lam, _box_uniform(spatial_size, lam, generator))


def _box_uniform(
    spatial_size: tuple[int, ...], lam: Tensor, generator: torch.Generator | None
) -> Tensor:
    """All that per-sample boxes draw: a uniform number per sample and spatial dim."""
    shape = (*lam.shape, len(spatial_size))
    return torch.rand(shape, generator=generator, device=lam.device)


def _corners(spatial_size: tuple[int, ...], lam: Tensor, uniform: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_box_corners` from the draw of :func:`_box_uniform`."""
    ndim = len(spatial_size)
    sizes, last, _ = _grid(spatial_size, lam.device)
    # Side ratio (1 - lam)^(1/d): the box keeps the aspect of the input (sqrt for images).
    ratio = (1.0 - lam.float()).clamp_(0.0, 1.0).pow_(1.0 / ndim).unsqueeze(-1)
    cut = ratio.mul(sizes).floor_()
    centre = torch.minimum(uniform.mul_(sizes).floor_(), last)
    low = centre.sub_(cut.mul(0.5).floor_())  # centre - cut // 2, before clipping
    return low, low + cut


def _sample_box(
    spatial_size: tuple[int, ...], lam: float, generator: torch.Generator | None
) -> list[tuple[int, int]]:
    """One box as Python ints, the same rule as the tensor path of :func:`sample_boxes`,
    from one CPU draw: per batch, a few float operations instead of some 30 tiny tensor ops."""
    generator = check_generator(generator, torch.device("cpu"))
    uniform = torch.rand(len(spatial_size), generator=generator).tolist()
    ratio = min(max(1.0 - lam, 0.0), 1.0) ** (1.0 / len(spatial_size))
    box = []
    for u, size in zip(uniform, spatial_size, strict=True):
        cut = math.floor(ratio * size)
        low = min(math.floor(u * size), size - 1) - cut // 2
        box.append((min(max(low, 0), size), min(max(low + cut, 0), size)))
    return box


def _outside_mask(low: Tensor, high: Tensor, size: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """1 outside the boxes ``[low, high)`` (each ``(*batch, d)``, clipped or not: clipping
    does not change which coordinates lie inside), 0 inside; shape ``(*batch, *size)``.

    A point is outside a box when it is outside along any dim, so the mask is the maximum of
    0/1 "outside" vectors, one per dim, broadcast against each other: (*batch, size_0, 1, 1),
    (*batch, 1, size_1, 1), ... For images that is one pass over the full mask
    (``1 - inside_0 * inside_1`` would take three). All dims are compared with one
    coordinate row at once.
    """
    batch_shape = low.shape[:-1]
    coords = _grid(size, low.device)[2]
    outside = (coords < low.unsqueeze(-1)).logical_or_(coords >= high.unsqueeze(-1)).to(dtype)
    masks = []
    for dim, length in enumerate(size):  # the 1 to 3 spatial dims, not the samples
        shape = (*batch_shape, *(length if d == dim else 1 for d in range(len(size))))
        masks.append(outside[..., dim, :length].reshape(shape))
    mask = functools.reduce(torch.maximum, masks)
    return mask.expand(*batch_shape, *size).contiguous()


def _per_sample_mask(
    size: tuple[int, ...], lam: Tensor, generator: torch.Generator | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Masks ``(batch, *size)`` and weights ``1 - clipped box area`` for one box per sample.

    :func:`sample_boxes` then :func:`box_mask` with fewer small ops (on the CPU the dispatch
    of each small op can cost more than writing the masks of a small batch): the mask comes
    from the unclipped corners, and only the area is clipped.
    """
    return _per_sample_mask_of(size, lam, _box_uniform(size, lam, generator), dtype)


def _per_sample_mask_of(
    size: tuple[int, ...], lam: Tensor, uniform: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """:func:`_per_sample_mask` from the draw of :func:`_box_uniform`. For images (two
    spatial dims) every op here treats each sample on its own and rounds exactly (the side
    ratio's power 1/2 is a square root), so samples give the same bits alone or with others;
    with one or three dims the power is a ``pow``, which the CPU's vectorised and scalar
    loops need not round alike."""
    low, high, _, weights = _boxes_of(size, lam, uniform)
    return _outside_mask(low, high, size, dtype), weights


def _per_sample_boxes(
    size: tuple[int, ...], lam: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Unclipped corners, the high corners clipped, and weights ``1 - clipped box area``."""
    return _boxes_of(size, lam, _box_uniform(size, lam, generator))


def _boxes_of(
    size: tuple[int, ...], lam: Tensor, uniform: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_per_sample_boxes` from the draw of :func:`_box_uniform`."""
    low, high = _corners(size, lam, uniform)
    clipped_high = torch.minimum(high, _grid(size, lam.device)[0])
    extent = clipped_high - low.clamp(min=0)  # >= 0: high >= centre >= 0
    return low, high, clipped_high, extent.prod(dim=-1).div_(-math.prod(size)).add_(1.0)


def _clipped_boxes(
    x: Tensor,
    lam: Tensor,
    generator: torch.Generator | None,
    correct_lam: bool,
    spatial_dims: int | None,
) -> tuple[list[list[tuple[int, int]]], Tensor]:
    """The boxes of :func:`_per_sample_mask`'s draw, clipped, as ``(low, high)`` Python ints
    per spatial dim of each sample (read on the CPU: no device sync), and their weights."""
    ndim = resolve_spatial_dims(x, spatial_dims, "cutmix")
    low, _, clipped_high, weights = _per_sample_boxes(tuple(x.shape[-ndim:]), lam, generator)
    corners = zip(low.clamp(min=0).long().tolist(), clipped_high.long().tolist(), strict=True)
    boxes = [list(zip(lows, highs, strict=True)) for lows, highs in corners]
    return boxes, weights if correct_lam else lam.float()
