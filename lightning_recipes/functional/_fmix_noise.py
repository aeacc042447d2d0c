"""FMix's fast mask sampler: the paper's low-frequency field from the frequencies that carry
its energy, and a threshold found on a sub-lattice of it.

The paper (Harris et al. 2020, ``make_low_freq_image`` and ``binarise_mask``) draws a complex
Gaussian spectrum on the full ``rfftn`` grid of the input, scaled by
``1 / max(|f|, 1 / max(size)) ** decay_power``, inverts it with a real FFT and sets the
``lam * N`` highest values of the field to 1 (the ``"exact"`` sampler of
:mod:`lightning_recipes.functional.fmix`, with an exact count per mask). The ``"fast"``
sampler makes two approximations, both measured in the FMix card (``docs/methods/fmix.md``):

1. **The spectrum is cut** to the block ``|k_d| <= K`` of integer frequencies, ``K`` the
   smallest cutoff that keeps all but :data:`ENERGY_TOLERANCE` of its energy (the power
   falls as ``|f| ** (-2 * decay_power)``: ``K = 6`` at 224x224 with the default 3). Only
   those ``(2K + 1)^(d-1) (K + 1)`` Gaussians are drawn; the field is inverted on a grid of
   ``2K + 1`` points per dim and brought to the input's size by trigonometric interpolation
   (one small matrix product per dim), which is exact for a field of that band: the result
   equals the full-size inverse FFT of the cut spectrum up to float rounding.
2. **The threshold is found on a sub-lattice** of about 1024 points of the field (every
   ``size // 32``-th point of an image): its ``round(lam * n)`` highest points are chosen as
   the exact sampler chooses elements, and the threshold is halfway between the lowest of
   them and the highest of the rest, so the mask's area is ``lam`` up to that lattice's
   resolution, and only its points are ranked. Where the lattice is the whole input, the
   mask holds exactly ``round(lam * N)`` ones, as with ``"exact"``.

Where the cutoff saves nothing (small sizes, small ``decay_power``), the grid is the input's.
The targets are weighted by each mask's actual mean.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = [
    "ENERGY_TOLERANCE",
    "draws_the_exact_masks",
    "fast_field",
    "fast_grid",
    "field_parts",
    "lattice_is_whole",
    "lattice_points",
    "spectrum_cutoff",
    "sub_lattice",
    "threshold_mask",
    "thresholds",
    "upsample_first",
]

# Share of the spectrum's energy (DC excluded: it shifts the field, not its ranks) that the
# fast sampler may drop: an RMS error of the field of sqrt(1e-4) = 1% of its spread.
ENERGY_TOLERANCE = 1e-4
# Points of the sub-lattice the threshold is found on (or all of the input's, if fewer).
_RANKED_POINTS = 1024


def sub_lattice(field: Tensor) -> Tensor:
    """About ``1024`` points of each field ``(batch, *size)`` on a regular lattice (every
    ``size // 32``-th point of an image; all points of a field no larger), ``(batch, n)``."""
    for dim, step in enumerate(_lattice_steps(tuple(field.shape[1:]))):
        field = field[(slice(None),) * (dim + 1) + (slice(None, None, step),)]
    return field.reshape(field.shape[0], -1)


def _lattice_steps(size: tuple[int, ...]) -> list[int]:
    """The step of :func:`sub_lattice` per dim."""
    return [max(1, s // math.ceil(_RANKED_POINTS ** (1 / len(size)))) for s in size]


def draws_the_exact_masks(size: tuple[int, ...], decay_power: float, max_soft: float) -> bool:
    """Whether the fast sampler makes no approximation at ``size``: its cutoff keeps every
    frequency (small inputs: up to 11x11, 9 in 1-D, 17x17x17 at ``decay_power`` 3) and the
    threshold is ranked at every element. The fast sampler then runs the exact one, so that
    it draws the same masks from the same generator (the digits' 8x8 images, for one)."""
    if spectrum_cutoff(size, decay_power) < max(size) // 2:
        return False
    return max_soft > 0.0 or lattice_is_whole(size)


def threshold_mask(field: Tensor, points: Tensor, kept: Tensor) -> Tensor:
    """Each field ``(batch, *size)`` above :func:`thresholds`: 1 or 0 in the field's dtype,
    written into ``field``."""
    threshold = thresholds(points, kept)
    return field.gt_(threshold.view(-1, *([1] * (field.ndim - 1))))


def thresholds(points: Tensor, kept: Tensor) -> Tensor:
    """Per field, the value halfway between the lowest of its lattice ``points`` that are
    ``kept`` and the highest of those that are not (+inf where none is kept, -inf where all
    are), ``(batch,)``."""
    lowest_kept = points.masked_fill(~kept, math.inf).amin(dim=1)
    highest_dropped = points.masked_fill(kept, -math.inf).amax(dim=1)
    return lowest_kept.add_(highest_dropped).mul_(0.5)


def fast_field(
    batch: int,
    size: tuple[int, ...],
    decay_power: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """Fields ``(batch, *size)`` of the spectrum cut at :func:`spectrum_cutoff` (also for
    exact ranks of every element: the soft edge, or inputs no larger than the sub-lattice)."""
    return upsample_first(*field_parts(batch, size, decay_power, generator, device))


def field_parts(
    batch: int,
    size: tuple[int, ...],
    decay_power: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[Tensor, Tensor | None]:
    """:func:`fast_field` but for its last step: the fields upsampled in every dim but the
    first, ``(batch, grid_0, *size[1:])``, and the ``(size_0, grid_0)`` matrix that upsamples
    the first (None where the grid is the input's in that dim: the fields are then whole).

    The split lets a field be finished one sample at a time (the product of
    :func:`upsample_first` on one sample), and its lattice points be found without the whole
    field (:func:`lattice_points`).
    """
    cutoff = spectrum_cutoff(size, decay_power)
    grid = fast_grid(size, decay_power)
    index, scale, shape = _kept_frequencies(size, grid, decay_power, cutoff, device)
    kept = torch.randn(
        (batch, index.shape[0]), dtype=torch.complex64, generator=generator, device=device
    )
    spectrum = torch.zeros((batch, math.prod(shape)), dtype=torch.complex64, device=device)
    spectrum.index_copy_(1, index, kept.mul_(scale))
    field: Tensor = torch.fft.irfftn(
        spectrum.view(batch, *shape), s=grid, dim=tuple(range(1, len(size) + 1))
    )
    # One matrix product per upsampled dim, the last first (the smallest products first).
    for dim in reversed(range(1, len(size))):
        if grid[dim] != size[dim]:
            field = _upsample(field, dim, _interpolation(size[dim], grid[dim], device))
    if grid[0] == size[0]:
        return field, None
    return field, _interpolation(size[0], grid[0], device)


def fast_grid(size: tuple[int, ...], decay_power: float) -> tuple[int, ...]:
    """The grid the fast sampler inverts its spectrum on: ``2K + 1`` points per dim, ``K``
    the :func:`spectrum_cutoff`, or the input's size where that is smaller."""
    cutoff = spectrum_cutoff(size, decay_power)
    return tuple(min(s, 2 * cutoff + 1) for s in size)


def upsample_first(field: Tensor, matrix: Tensor | None) -> Tensor:
    """Fields ``(batch, grid_0, *rest)`` of :func:`field_parts` upsampled in their first dim
    by ``matrix`` ``(size_0, grid_0)``: ``(batch, size_0, *rest)``; ``field`` if None."""
    return field if matrix is None else _upsample(field, 0, matrix)


def _upsample(field: Tensor, dim: int, matrix: Tensor) -> Tensor:
    """Fields ``(batch, ...)`` with spatial dim ``dim`` brought from ``matrix.shape[1]``
    points to ``matrix.shape[0]`` by one matrix product."""
    batch, lead, tail = field.shape[0], field.shape[1 : dim + 1], field.shape[dim + 2 :]
    if not tail:
        return field @ matrix.T
    rows = field.reshape(batch, math.prod(lead), matrix.shape[1], math.prod(tail))
    return (matrix @ rows).view(batch, *lead, matrix.shape[0], *tail)


def lattice_points(field: Tensor, matrix: Tensor | None) -> Tensor:
    """:func:`sub_lattice` of the fields that :func:`upsample_first` makes from
    :func:`field_parts`' ``field`` and ``matrix``, computed on the lattice's points only (the
    upsampling's rows of the lattice applied to the lattice's columns): ``(batch, n)``."""
    if matrix is None:
        return sub_lattice(field)
    size = (matrix.shape[0], *field.shape[2:])
    steps = _lattice_steps(size)
    index = [slice(None), slice(None)] + [slice(None, None, s) for s in steps[1:]]
    rest = field[tuple(index)]
    points = upsample_first(rest, matrix[:: steps[0]].contiguous())
    return points.reshape(points.shape[0], -1)


def lattice_is_whole(size: tuple[int, ...]) -> bool:
    """Whether :func:`sub_lattice` takes every point of an input of ``size``."""
    return all(step == 1 for step in _lattice_steps(size))


@functools.lru_cache(maxsize=64)
def spectrum_cutoff(size: tuple[int, ...], decay_power: float) -> int:
    """The smallest ``K`` whose block ``|k_d| <= K`` holds all but ``ENERGY_TOLERANCE`` of the
    spectrum's energy (DC excluded), counted on the full ``rfftn`` grid of ``size``."""
    energy = _scale(size, size, decay_power, None).square()
    # The half last axis of the real FFT stands for two frequencies, +k and -k, except for 0
    # and, on an even axis, the Nyquist frequency.
    twice = torch.full((energy.shape[-1],), 2.0, dtype=torch.float64)
    twice[0] = 1.0
    if size[-1] % 2 == 0:
        twice[-1] = 1.0
    energy = energy * twice
    energy[(0,) * len(size)] = 0.0
    reach = _integer_frequencies(size).abs().amax(dim=0)
    total = float(energy.sum())
    for cutoff in range(1, max(size) // 2 + 1):
        if float(energy[reach > cutoff].sum()) <= ENERGY_TOLERANCE * total:
            return cutoff
    return max(size) // 2


@functools.lru_cache(maxsize=32)
def _kept_frequencies(
    size: tuple[int, ...],
    grid: tuple[int, ...],
    decay_power: float,
    cutoff: int,
    device: torch.device,
) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Flat indices and float32 scales of the frequencies within the cutoff on the ``rfftn``
    grid of ``grid``, and that grid's shape (cached: it only depends on the arguments)."""
    scale = _scale(size, grid, decay_power, cutoff).flatten()
    index = scale.nonzero().squeeze(1)
    shape = (*grid[:-1], grid[-1] // 2 + 1)
    return index.to(device), scale[index].to(torch.float32).to(device), shape


def _scale(
    size: tuple[int, ...], grid: tuple[int, ...], decay_power: float, cutoff: int | None
) -> Tensor:
    """``1 / max(|f|, 1 / max(size)) ** decay_power`` on the ``rfftn`` grid of ``grid``, with
    ``f`` each point's frequency at the input's ``size`` (cycles per input element), zero
    beyond ``cutoff``; float64."""
    k = _integer_frequencies(grid)
    squared = torch.zeros(k.shape[1:], dtype=torch.float64)
    for dim, length in enumerate(size):
        squared += (k[dim] / length) ** 2
    scale = squared.sqrt_().clamp_min_(1.0 / max(size)).pow_(-decay_power)
    if cutoff is not None:
        scale[k.abs().amax(dim=0) > cutoff] = 0.0
    return scale


def _integer_frequencies(grid: tuple[int, ...]) -> Tensor:
    """The integer frequency ``k_d`` of every point of the ``rfftn`` grid of ``grid``, per
    dim: ``(ndim, grid_0, ..., grid_last // 2 + 1)``, float64."""
    axes = [torch.fft.fftfreq(g, d=1.0 / g, dtype=torch.float64).round() for g in grid[:-1]]
    axes.append(torch.fft.rfftfreq(grid[-1], d=1.0 / grid[-1], dtype=torch.float64).round())
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


@functools.lru_cache(maxsize=32)
def _interpolation(size: int, points: int, device: torch.device) -> Tensor:
    """The ``(size, points)`` matrix of trigonometric interpolation from ``points`` (odd)
    equally spaced samples of a periodic signal to ``size`` ones: row ``i`` is the Dirichlet
    kernel ``(1 + 2 sum_k cos(2 pi k t)) / points`` at ``t = i / size - j / points``, exact
    for frequencies up to ``(points - 1) / 2`` (cached)."""
    t = torch.arange(size, dtype=torch.float64).view(-1, 1) / size
    t = t - torch.arange(points, dtype=torch.float64).view(1, -1) / points
    k = torch.arange(1, (points - 1) // 2 + 1, dtype=torch.float64).view(-1, 1, 1)
    kernel = (1.0 + 2.0 * torch.cos(2 * math.pi * k * t).sum(dim=0)) / points
    return kernel.to(torch.float32).to(device)
