"""The one protocol every mixing method follows: a kernel turns a batch, lam and a generator
into a weight map, and one blend applies it.

A kernel *samples*: given the batch ``x``, the weight ``lam`` of each sample itself (a Python
float for the whole batch, or a tensor ``(batch,)``) and a ``torch.Generator``, it returns the
weight of each sample itself at every element (a :class:`WeightMap`: a per-sample ratio for
MixUp, a box or Fourier mask for CutMix and FMix) and the exact float32 weight of each sample,
the share of it that stays its own. :meth:`MixKernel.mix` then *applies* the map with
:func:`~lightning_recipes.functional.blend`'s kernel, which leaves a sample unmixed when its
partner holds NaN or inf. :class:`~lightning_recipes.callbacks.mixing.RandomMix` composes
kernels by multiplying their maps (see :func:`compose`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from lightning_recipes._validation import resolve_spatial_dims
from lightning_recipes.functional.blend import _blend_finite
from lightning_recipes.functional.cutmix import _cutmix_mask, _paste_box
from lightning_recipes.functional.fmix import _fmix_mask
from lightning_recipes.functional.mixup import _mixup_weight

__all__ = ["CutMixKernel", "FMixKernel", "MixKernel", "MixUpKernel", "Mixed", "WeightMap"]


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

    def mix(
        self,
        x: Tensor,
        lam: float | Tensor,
        perm: Tensor,
        generator: torch.Generator,
        inplace: bool,
    ) -> Mixed:
        """Samples the weight map and blends ``x`` with its partners ``x[perm]`` through it."""
        weight, weights = self.weight_map(x, lam, generator)
        return Mixed(*_blend_finite(x, perm, weight, weights, inplace), perm)


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

    def mix(
        self,
        x: Tensor,
        lam: float | Tensor,
        perm: Tensor,
        generator: torch.Generator,
        inplace: bool,
    ) -> Mixed:
        if inplace and not isinstance(lam, Tensor):  # one box: only the box is copied
            pasted = _paste_box(x, lam, perm, generator, self.correct_lam, self.spatial_dims)
            return Mixed(*pasted, perm)
        return super().mix(x, lam, perm, generator, inplace)


@dataclass(frozen=True)
class FMixKernel(_SpatialKernel):
    """FMix: a binarised low-frequency Fourier mask with ``round(lam * N)`` ones."""

    name: ClassVar[str] = "fmix"

    decay_power: float
    max_soft: float

    def weight_map(self, x: Tensor, lam: float | Tensor, generator: torch.Generator) -> WeightMap:
        return WeightMap(
            *_fmix_mask(
                x,
                lam,
                decay_power=self.decay_power,
                max_soft=self.max_soft,
                generator=generator,
                spatial_dims=self.spatial_dims,
            )
        )


def compose(
    kernels: tuple[MixKernel, ...],
    choice: Tensor,
    x: Tensor,
    lam: float | Tensor,
    perm: Tensor,
    generator: torch.Generator,
    inplace: bool,
) -> Mixed:
    """Mixes each sample with the kernel of index ``choice[i]`` and its own ``lam[i]``.

    Each kernel maps the samples that did not choose it with lam = 1: weight 1 everywhere (no
    box, a full mask). A sample's map is then the product of all kernels' maps, and its weight
    the product of their weights: one multiplication per extra kernel instead of a ``where``
    over the full masks, and no sample-dependent shapes (so no device sync).
    """
    maps = [
        kernel.weight_map(x, torch.where(choice == index, lam, 1.0), generator)
        for index, kernel in enumerate(kernels)
    ]
    weight = functools.reduce(torch.mul, [m.weight for m in maps])
    weights = functools.reduce(torch.mul, [m.weights for m in maps])
    return Mixed(*_blend_finite(x, perm, weight, weights, inplace), perm)
