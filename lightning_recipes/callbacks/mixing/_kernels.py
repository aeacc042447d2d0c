"""The one protocol every mixing method follows: a kernel turns a batch, lam and a generator
into a weight map, and one blend applies it.

A kernel *samples*: given the batch ``x``, the weight ``lam`` of each sample itself (a Python
float for the whole batch, or a tensor ``(batch,)``) and a ``torch.Generator``, it returns the
weight of each sample itself at every element (a :class:`WeightMap`: a per-sample ratio for
MixUp, a box or Fourier mask for CutMix and FMix) and the exact float32 weight of each sample,
the share of it that stays its own. :meth:`MixKernel.mix` then *applies* the map with
:func:`~lightning_recipes.functional.blend`'s kernel, which leaves a sample unmixed when its
partner holds NaN or inf. :class:`~lightning_recipes.callbacks.mixing.RandomMix` composes
kernels by multiplying their maps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, cast

import torch
from torch import Tensor

from lightning_recipes._validation import resolve_spatial_dims
from lightning_recipes.functional._cutmix_boxes import (
    _box_uniform,
    _clipped_boxes,
    _per_sample_mask_of,
    _sample_box,
)
from lightning_recipes.functional._rows import rows_pay
from lightning_recipes.functional.blend import _blend_finite
from lightning_recipes.functional.cutmix import _cutmix_mask, _mix_box_rows, _paste_box
from lightning_recipes.functional.fmix import (
    _draws_fields,
    _exact_fields,
    _exact_masks,
    _fmix_mask,
    _fmix_rows_pay,
    _mix_fmix_rows,
    _resolve_sampler,
)
from lightning_recipes.functional.mixup import _mixup_weight

__all__ = [
    "Apply",
    "CutMixKernel",
    "FMixKernel",
    "MixKernel",
    "MixUpKernel",
    "Mixed",
    "WeightMap",
    "apply_map",
]


class WeightMap(NamedTuple):
    """What a kernel samples for one batch.

    Attributes:
        weight: Weight of each sample itself, broadcastable to ``x``: a Python float (one
            MixUp ratio for the batch), ``(batch, 1, ...)`` ratios or ``(batch or 1, 1, *spatial)``
            masks.
        weights: The exact float32 weight of each sample itself, ``(batch,)``: the mean of its
            map as applied, for the targets.
    """

    weight: float | Tensor
    weights: Tensor


class Mixed(NamedTuple):
    """A mixed batch, the weight of each sample itself ``(batch,)`` and the partners."""

    x: Tensor
    weights: Tensor
    perm: Tensor


# Mixes a batch with a draw made before: ``apply(x, perm, inplace)`` (see `MixKernel.draw`).
Apply = Callable[[Tensor, Tensor, bool], Mixed]


@dataclass(frozen=True)
class MixKernel:
    """One mixing method: :meth:`weight_map` samples, :meth:`mix` applies.

    Attributes:
        name: The method's name in ``RandomMix(probs=...)``.
        batch_draw_on_cpu: Whether a per-batch (float) lam draws its randomness from the CPU
            generator instead of the data's device (CutMix: its one box's corners are then
            Python ints, read without a host-device sync).
    """

    name: ClassVar[str]
    batch_draw_on_cpu: ClassVar[bool] = False

    def check_layout(self, x: Tensor, name: str) -> None:
        """Raises if ``x`` (the batch item called ``name``) has too few dims for the method."""

    def weight_map(self, x: Tensor, lam: float | Tensor, generator: torch.Generator) -> WeightMap:
        """Samples the weight of each sample itself at every element of ``x``."""
        raise NotImplementedError

    def paste(
        self,
        x: Tensor,
        lam: float | Tensor,
        perm: Tensor,
        generator: torch.Generator,
        inplace: bool,
    ) -> Mixed | None:
        """Mixes ``x`` without a full weight map, or returns None where the method has no
        such shortcut for this call (CutMix has: one box per batch is copied, and on the CPU
        large samples are blended through their boxes without a mask; so has FMix per
        sample, whose masks are then made a sample at a time)."""
        return None

    def mix(
        self,
        x: Tensor,
        lam: float | Tensor,
        perm: Tensor,
        generator: torch.Generator,
        inplace: bool,
    ) -> Mixed:
        """Samples the weight map and blends ``x`` with its partners ``x[perm]`` through it,
        or takes the method's :meth:`paste` shortcut where it has one."""
        pasted = self.paste(x, lam, perm, generator, inplace)
        if pasted is not None:
            return pasted
        return apply_map(x, perm, self.weight_map(x, lam, generator), inplace)

    def draw(self, x: Tensor, lam: float | Tensor, generator: torch.Generator) -> object:
        """Draws now what :meth:`weight_map` (or the :meth:`paste` shortcut of :meth:`mix`)
        draws from ``generator`` for ``x``, for :meth:`finish` to make the rest later; for
        calls where :meth:`mix` takes no sample-at-a-time path (``_rows.rows_pay`` is false),
        with the same bits. By default the whole weight map."""
        return self.weight_map(x, lam, generator)

    def finish(self, x: Tensor, drawn: Sequence[object]) -> list[WeightMap | Apply]:
        """The weight maps (or, for a :meth:`paste` shortcut, what applies it,
        ``apply(x, perm, inplace)``) of :meth:`draw`'s results for batches of ``x``'s shape
        and dtype: a method may finish several batches' draws at once where the bits allow
        it, for one batch's fixed costs (``callbacks/mixing/_ahead.py``)."""
        return [cast(WeightMap | Apply, d) for d in drawn]


@dataclass(frozen=True)
class MixUpKernel(MixKernel):
    """MixUp: the weight map is lam itself, one ratio per sample (or per batch)."""

    name: ClassVar[str] = "mixup"

    def weight_map(self, x: Tensor, lam: float | Tensor, generator: torch.Generator) -> WeightMap:
        return WeightMap(*_mixup_weight(x, lam))


@dataclass(frozen=True)
class _SpatialKernel(MixKernel):
    """A method whose map covers the trailing ``spatial_dims`` of the input."""

    spatial_dims: int | None

    def check_layout(self, x: Tensor, name: str) -> None:
        resolve_spatial_dims(x, self.spatial_dims, self.name, name)


@dataclass(frozen=True)
class CutMixKernel(_SpatialKernel):
    """CutMix: 0 inside a box of ``1 - lam`` of the input, 1 outside."""

    name: ClassVar[str] = "cutmix"
    batch_draw_on_cpu: ClassVar[bool] = True

    correct_lam: bool

    def weight_map(self, x: Tensor, lam: float | Tensor, generator: torch.Generator) -> WeightMap:
        return WeightMap(
            *_cutmix_mask(
                x,
                lam,
                generator=generator,
                correct_lam=self.correct_lam,
                spatial_dims=self.spatial_dims,
            )
        )

    def paste(
        self,
        x: Tensor,
        lam: float | Tensor,
        perm: Tensor,
        generator: torch.Generator,
        inplace: bool,
    ) -> Mixed | None:
        if not isinstance(lam, Tensor):
            pasted = _paste_box(
                x, lam, perm, generator, self.correct_lam, self.spatial_dims, inplace
            )
            return Mixed(*pasted, perm)
        if rows_pay(x, 1.0, inplace):  # the CPU, large samples: through the boxes, no mask
            mixed = _mix_box_rows(x, lam, perm, generator, self.correct_lam, self.spatial_dims)
            return Mixed(*mixed, perm)
        return None

    def draw(self, x: Tensor, lam: float | Tensor, generator: torch.Generator) -> object:
        ndim = resolve_spatial_dims(x, self.spatial_dims, self.name)
        size = tuple(x.shape[-ndim:])
        if isinstance(lam, Tensor):
            if ndim != 2:  # see `_per_sample_mask_of`: only images' boxes are finished together
                return super().draw(x, lam, generator)
            return _Corners(lam, _box_uniform(size, lam, generator), size)
        box = _sample_box(size, lam, generator)
        correct_lam, spatial_dims = self.correct_lam, self.spatial_dims

        def paste(x: Tensor, perm: Tensor, inplace: bool) -> Mixed:
            pasted = _paste_box(x, lam, perm, None, correct_lam, spatial_dims, inplace, box)
            return Mixed(*pasted, perm)

        return paste

    def finish(self, x: Tensor, drawn: Sequence[object]) -> list[WeightMap | Apply]:
        boxes = [d for d in drawn if isinstance(d, _Corners)]
        if not boxes:
            return super().finish(x, drawn)
        size = boxes[0].size
        lam, uniform = _joined([b.lam for b in boxes]), _joined([b.uniform for b in boxes])
        mask, weights = _per_sample_mask_of(size, lam, uniform, x.dtype)
        if not self.correct_lam:
            weights = lam.float()
        shape = (len(boxes), -1, *([1] * (x.ndim - 1 - len(size))), *size)
        maps = iter(
            zip(mask.view(shape).unbind(), weights.view(len(boxes), -1).unbind(), strict=True)
        )
        return [
            WeightMap(*next(maps)) if isinstance(d, _Corners) else cast(WeightMap | Apply, d)
            for d in drawn
        ]

    def boxes(
        self, x: Tensor, lam: Tensor, generator: torch.Generator
    ) -> tuple[list[list[tuple[int, int]]], Tensor]:
        """The clipped box of each sample, the same draw as :meth:`weight_map`'s mask, and
        the weights; for the CPU's sample-at-a-time blend, which needs no mask."""
        return _clipped_boxes(x, lam, generator, self.correct_lam, self.spatial_dims)


class _Corners(NamedTuple):
    """Per-sample CutMix's draw for one batch of images: lam and the boxes' uniform draw."""

    lam: Tensor
    uniform: Tensor
    size: tuple[int, ...]


@dataclass(frozen=True)
class FMixKernel(_SpatialKernel):
    """FMix: a binarised low-frequency Fourier mask with ``round(lam * N)`` ones."""

    name: ClassVar[str] = "fmix"

    decay_power: float
    max_soft: float
    mask_sampler: str = "fast"

    def weight_map(self, x: Tensor, lam: float | Tensor, generator: torch.Generator) -> WeightMap:
        return WeightMap(
            *_fmix_mask(
                x,
                lam,
                decay_power=self.decay_power,
                max_soft=self.max_soft,
                generator=generator,
                spatial_dims=self.spatial_dims,
                mask_sampler=self.mask_sampler,
            )
        )

    def paste(
        self,
        x: Tensor,
        lam: float | Tensor,
        perm: Tensor,
        generator: torch.Generator,
        inplace: bool,
    ) -> Mixed | None:
        if isinstance(lam, Tensor) and _fmix_rows_pay(
            x, lam, self.decay_power, self.max_soft, self.spatial_dims, inplace, self.mask_sampler
        ):  # the CPU, large samples, per-sample fast masks: made a sample at a time
            mixed = _mix_fmix_rows(x, lam, perm, self.decay_power, generator, self.spatial_dims)
            return Mixed(*mixed, perm)
        return None

    def draw(self, x: Tensor, lam: float | Tensor, generator: torch.Generator) -> object:
        # Per-sample exact binary masks: only their fields are drawn here; `finish` ranks
        # the fields of several batches at once (the same bits, `fmix._exact_masks`).
        size = tuple(x.shape[-resolve_spatial_dims(x, self.spatial_dims, self.name) :])
        sampler = _resolve_sampler(size, self.decay_power, self.max_soft, self.mask_sampler)
        if isinstance(lam, Tensor) and _draws_fields(self.max_soft, sampler):
            fields = _exact_fields(size, lam, self.decay_power, generator, x.device)
            return _Fields(lam, fields, size)
        return super().draw(x, lam, generator)

    def finish(self, x: Tensor, drawn: Sequence[object]) -> list[WeightMap | Apply]:
        fields = [d for d in drawn if isinstance(d, _Fields)]
        if not fields:
            return super().finish(x, drawn)
        lams, greys = [f.lam for f in fields], [f.fields for f in fields]
        maps = iter(_exact_masks(x, fields[0].size, lams, greys))
        return [
            WeightMap(*next(maps)) if isinstance(d, _Fields) else cast(WeightMap | Apply, d)
            for d in drawn
        ]


class _Fields(NamedTuple):
    """Per-sample FMix's draw for one batch: lam and the grey fields, not yet ranked."""

    lam: Tensor
    fields: Tensor
    size: tuple[int, ...]


def _joined(tensors: list[Tensor]) -> Tensor:
    """The tensors concatenated; one alone as it is (no copy)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def apply_map(x: Tensor, perm: Tensor, weight_map: WeightMap, inplace: bool) -> Mixed:
    """``m * x + (1 - m) * x[perm]`` for the weight map ``m``; a sample whose partner holds
    NaN or inf is left unmixed, with weight 1."""
    mixed, weights = _blend_finite(x, perm, weight_map.weight, weight_map.weights, inplace)
    return Mixed(mixed, weights, perm)
