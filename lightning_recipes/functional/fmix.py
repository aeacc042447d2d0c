"""FMix: mix with a binarised low-frequency Fourier mask, weighted by the mask's actual area.

Paper: Harris, Marcu, Painter, Niranjan, Prügel-Bennett, Hare, "FMix: Enhancing Mixed Sample
Data Augmentation", 2020, https://arxiv.org/abs/2002.12047 (code: github.com/ecs-vlc/FMix).

The mask is sampled as in the paper: a complex Gaussian spectrum scaled by
``1 / max(f, 1 / max(size)) ** decay_power`` is inverted with a real FFT into a smooth "grey"
image, whose ``round(lam * N)`` highest values are set to 1 and the rest to 0 (with ``max_soft``,
a linear ramp over the ranks around the cut, keeping the mean). Unlike the paper's code, which
draws one numpy mask per batch on the CPU, randomly rounds the area up or down and then weights
the targets with the *sampled* lam, here:

* masks are drawn per sample or per batch on the data's device with one batched inverse FFT
  (on the CPU, for up to 128 elements, one matrix product: the same linear map);
* the area is exactly ``round(lam * N) / N`` and the target weights are the mask's mean;
* odd sizes and 1-D, 2-D and 3-D inputs use the exact real-FFT frequency grid.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import overload

import torch
from torch import Tensor

from lightning_recipes._validation import (
    check_decay_power,
    check_generator,
    check_inplace,
    check_input,
    check_lam,
    check_lam_value,
    check_mask_sampler,
    check_max_soft,
    check_perm,
    check_spatial_size,
    resolve_spatial_dims,
)
from lightning_recipes.functional._fmix_binarise import (
    soft_top_k_mask,
    threshold_ranks,
    threshold_top_k_mask,
    top_k_mask,
)
from lightning_recipes.functional._fmix_noise import (
    draws_the_exact_masks,
    fast_field,
    fast_grid,
    field_parts,
    lattice_is_whole,
    lattice_points,
    threshold_mask,
    thresholds,
    upsample_first,
)
from lightning_recipes.functional._rows import blend_mask_rows, rows_pay
from lightning_recipes.functional.blend import _blend_finite

__all__ = ["fmix", "sample_fmix_mask"]


def sample_fmix_mask(
    spatial_size: Sequence[int],
    lam: float | Tensor,
    *,
    decay_power: float = 3.0,
    max_soft: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    mask_sampler: str = "fast",
) -> Tensor:
    """Samples FMix masks of mean ``round(lam * N) / N``, ``N`` the number of elements (with
    the default fast sampler, where ``N`` exceeds the lattice of about 1024 points it finds
    the cut on: that share of the lattice's points, and of the input up to the lattice's
    resolution, measured in the FMix card: 0.16% on average at 224x224, 3% at most in 1-D).

    Args:
        spatial_size: Size of the 1 to 3 spatial dims: ``(length,)`` for audio or sequences,
            ``(height, width)`` for images, ``(depth, height, width)`` for volumes.
        lam: Requested mean: a Python float in [0, 1] for one mask, or a tensor of any shape
            for one mask per element (values are not checked, to avoid a device sync).
        decay_power: Exponent ``d`` of the ``1 / f**d`` decay of the spectrum; larger values
            give smoother masks with fewer, larger blobs.
        max_soft: Half-width of the soft edge as a fraction of ``N``, in [0, 0.5]: the ranks
            ``round(lam * N) +- max_soft * N`` get a linear ramp from 1 to 0 instead of a
            hard edge. 0 (default) gives binary masks.
        generator: Source of randomness, on the mask's device.
        device: Where to draw when ``lam`` is a Python float; defaults to the generator's.
        dtype: dtype of the mask.
        mask_sampler: ``"fast"`` (default) draws only the spectrum's lowest frequencies,
            which carry all but 1e-4 of its energy, on a coarse grid, upsamples the field and
            finds the threshold on a lattice of about 1024 of its points: masks of the
            paper's distribution within sampling error (tested) at a fraction of the cost,
            with an area that is ``lam``'s on that lattice and near it on the input where
            the input has more points (0.16% off on average at 224x224).
            Where that makes no approximation (inputs up to 11x11, 9 in 1-D), it is the exact
            sampler, with the same draws. ``"exact"``: the paper's algorithm, a spectrum on
            the full frequency grid per mask and exactly ``round(lam * N)`` ones (see the FMix
            card).

    Returns:
        A tensor of shape ``(*lam.shape, *spatial_size)``: 1 where a sample keeps its own
        values, 0 where it takes its partner's.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> masks = sample_fmix_mask((31, 17), torch.tensor([0.3, 0.5]), generator=g)
        >>> masks.shape, masks.sum(dim=(1, 2)).tolist()  # round(lam * 31 * 17)
        (torch.Size([2, 31, 17]), [158.0, 264.0])
    """
    size = check_spatial_size(spatial_size)
    decay_power = check_decay_power(decay_power)
    max_soft = check_max_soft(max_soft)
    mask_sampler = check_mask_sampler(mask_sampler)
    if isinstance(lam, Tensor):
        device = lam.device
    else:
        lam = check_lam_value(lam)
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
    generator = check_generator(generator, torch.device(device))
    device = torch.device(device)
    mask_sampler = _resolve_sampler(size, decay_power, max_soft, mask_sampler)
    return _sample_mask(size, lam, decay_power, max_soft, generator, device, dtype, mask_sampler)


def _sample_mask(
    size: tuple[int, ...],
    lam: float | Tensor,
    decay_power: float,
    max_soft: float,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
    mask_sampler: str = "fast",
    count: int | Tensor | None = None,
) -> Tensor:
    """:func:`sample_fmix_mask` on checked arguments (the callbacks check them once, at
    construction, instead of on every batch) and a sampler from :func:`_resolve_sampler`;
    ``count`` is ``_count(lam, N)`` where the caller has it already."""
    n = math.prod(size)
    batch_shape = tuple(lam.shape) if isinstance(lam, Tensor) else ()
    batch = math.prod(batch_shape)
    if batch == 0:  # no sample: no mask (the FFT and the reshapes below refuse empty input)
        return torch.empty((*batch_shape, *size), dtype=dtype, device=device)
    if mask_sampler == "fast" and max_soft == 0.0:
        field, matrix = field_parts(batch, size, decay_power, generator, device)
        points = lattice_points(field, matrix)
        kept = top_k_mask(points, _count(lam, points.shape[1]))
        if points.shape[1] == n:
            mask = kept
        else:
            mask = threshold_mask(upsample_first(field, matrix), points, kept)
        return mask.to(dtype).view(*batch_shape, *size)
    if count is None:
        count = _count(lam, n)
    noise = fast_field if mask_sampler == "fast" else _low_frequency_noise
    grey = noise(batch, size, decay_power, generator, device).reshape(batch, -1)
    if max_soft == 0.0:
        mask = top_k_mask(grey, count, dtype)
    else:
        if isinstance(count, int):
            count = torch.full((1,), count, dtype=torch.long, device=device)
        soft = torch.minimum(count, n - count).clamp_max(int(n * max_soft))
        mask = soft_top_k_mask(grey, count, soft)
    return mask.to(dtype).view(*batch_shape, *size)


@functools.lru_cache(maxsize=64)
def _resolve_sampler(
    size: tuple[int, ...], decay_power: float, max_soft: float, mask_sampler: str
) -> str:
    """``"exact"`` where the fast sampler would make no approximation (its masks are then the
    exact sampler's, drawn from the same generator), else ``mask_sampler`` (cached: every
    batch of a run asks the same)."""
    if mask_sampler == "fast" and draws_the_exact_masks(size, decay_power, max_soft):
        return "exact"
    return mask_sampler


@overload
def _count(lam: float, n: int) -> int: ...
@overload
def _count(lam: Tensor, n: int) -> Tensor: ...
def _count(lam: float | Tensor, n: int) -> int | Tensor:
    """``round(lam * n)``: a Python int, or per element of ``lam`` flat ``torch.long``."""
    if isinstance(lam, Tensor):
        return (lam.float().clamp(0.0, 1.0) * n).round_().long().reshape(-1)
    return round(lam * n)


def fmix(
    x: Tensor,
    lam: float | Tensor,
    perm: Tensor,
    *,
    decay_power: float = 3.0,
    max_soft: float = 0.0,
    generator: torch.Generator | None = None,
    spatial_dims: int | None = None,
    inplace: bool = False,
    mask_sampler: str = "fast",
) -> tuple[Tensor, Tensor]:
    """Mixes each sample with its partner through an FMix mask ``m``: ``m*x_i + (1-m)*x_perm(i)``.

    Args:
        x: Floating-point batch ``(batch, channels, *spatial)`` with 1 to 3 spatial dims of
            any size, odd ones included (``spatial_dims`` for other layouts).
        lam: Requested weight of each sample itself: a Python float (one mask for the whole
            batch) or a tensor of shape ``(batch,)`` on ``x.device`` (one mask per sample).
        perm: Partner index of each sample.
        decay_power: See :func:`sample_fmix_mask`.
        max_soft: See :func:`sample_fmix_mask`.
        generator: Source of randomness for the masks, on ``x.device``.
        spatial_dims: Number of trailing spatial dims; default ``x.ndim - 2``.
        inplace: Write the mixed batch into ``x`` (see
            :func:`~lightning_recipes.functional.blend`); by default ``x`` is not modified.
        mask_sampler: See :func:`sample_fmix_mask`.

    Returns:
        ``(mixed, weights)``: the mixed batch (dtype and memory format of ``x``) and the
        float32 weight of each sample itself, shape ``(batch,)``: the mean of its mask as
        applied (in ``x.dtype``), not the sampled ``lam``. A sample whose partner holds NaN or
        inf is not mixed (weight 1).

    Example:
        >>> x = torch.stack([torch.zeros(3, 9, 9), torch.ones(3, 9, 9)])
        >>> g = torch.Generator().manual_seed(0)
        >>> mixed, weights = fmix(x, 0.3, torch.tensor([1, 0]), generator=g)
        >>> weights  # round(0.3 * 81) / 81 = 24 / 81
        tensor([0.2963, 0.2963])
        >>> (mixed[0] == x[0]).float().mean()  # the share of sample 0 that stayed its own
        tensor(0.2963)
    """
    check_input(x)
    check_perm(perm, x.shape[0], x.device)
    check_inplace(x, inplace)
    lam = check_lam(lam, x.shape[0], x.device)
    decay_power = check_decay_power(decay_power)
    max_soft = check_max_soft(max_soft)
    generator = check_generator(generator, x.device)
    mask_sampler = check_mask_sampler(mask_sampler)
    if isinstance(lam, Tensor) and _fmix_rows_pay(
        x, lam, decay_power, max_soft, spatial_dims, inplace, mask_sampler
    ):
        return _mix_fmix_rows(x, lam, perm, decay_power, generator, spatial_dims)
    mask, weights = _fmix_mask(
        x,
        lam,
        decay_power=decay_power,
        max_soft=max_soft,
        generator=generator,
        spatial_dims=spatial_dims,
        mask_sampler=mask_sampler,
    )
    return _blend_finite(x, perm, mask, weights, inplace)


def _fmix_rows_pay(
    x: Tensor,
    lam: float | Tensor,
    decay_power: float,
    max_soft: float,
    spatial_dims: int | None,
    inplace: bool,
    mask_sampler: str,
) -> bool:
    """Whether :func:`_mix_fmix_rows` is chosen: per-sample binary masks of the fast sampler
    on the CPU's sample-at-a-time blend (``_rows.rows_pay``), where a field is finished by a
    matrix product of its own (2 or 3 spatial dims, the first upsampled) and its threshold
    is found on a lattice that is not the whole input (else every element is ranked, which
    takes the whole field at once)."""
    if not isinstance(lam, Tensor) or max_soft > 0.0 or not rows_pay(x, 1.0, inplace):
        return False
    ndim = resolve_spatial_dims(x, spatial_dims, "fmix")
    size = tuple(x.shape[-ndim:])
    if ndim < 2 or _resolve_sampler(size, decay_power, max_soft, mask_sampler) != "fast":
        return False
    upsampled = fast_grid(size, decay_power)[0] < size[0]
    return upsampled and not lattice_is_whole(size)


def _mix_fmix_rows(
    x: Tensor,
    lam: Tensor,
    perm: Tensor,
    decay_power: float,
    generator: torch.Generator | None,
    spatial_dims: int | None,
) -> tuple[Tensor, Tensor]:
    """Per-sample FMix with the fast sampler, out of place on the CPU for large samples,
    without the batch's masks: the same draws and bits as :func:`_fmix_mask` and the blend.

    The fields are drawn for the batch and upsampled in every dim but the first; their
    lattice points, and so their thresholds, come from those partial fields. Each sample's
    field is then finished (the batch's matrix product on one sample: ``mm`` where the batch
    takes ``bmm``, which the tests hold to the same bits), thresholded and counted in a buffer of
    one mask's size, which stays in the cache, just before its row's ``lerp``
    (:func:`~lightning_recipes.functional._rows.blend_mask_rows`). The batch's masks, a
    float field of ``batch * N`` elements written, thresholded and read again, are never
    made: beside the mixed batch the hook holds the partial fields and one mask's buffers
    only, and its time falls a little (``benchmarks/RESULTS.md``).
    """
    ndim = resolve_spatial_dims(x, spatial_dims, "fmix")
    size = tuple(x.shape[-ndim:])
    batch = x.shape[0]
    field, matrix = field_parts(batch, size, decay_power, generator, x.device)
    assert matrix is not None  # _fmix_rows_pay: the first dim is upsampled
    points = lattice_points(field, matrix)
    kept = top_k_mask(points, _count(lam, points.shape[1]))
    # Python floats of float32 values: comparing the float32 field with them is comparing it
    # with the batch's float32 thresholds.
    cut = thresholds(points, kept).tolist()
    fields = field.reshape(batch, matrix.shape[1], -1).unbind(0)
    grey = torch.empty((size[0], fields[0].shape[1]), dtype=field.dtype)
    mask = grey if x.dtype == grey.dtype else torch.empty(grey.shape, dtype=x.dtype)
    weight = mask.view(*([1] * (x.ndim - 1 - ndim)), *size)  # the batched mask's row shape
    ones = torch.empty(batch)
    ones_of = [total.view(1) for total in ones.unbind(0)]
    flat = grey.view(1, -1)

    def mask_of(i: int) -> Tensor:
        torch.mm(matrix, fields[i], out=grey).gt_(cut[i])
        if mask is not grey:
            mask.copy_(grey)
        torch.sum(flat, dim=1, out=ones_of[i])
        return weight

    mixed, partner_finite = blend_mask_rows(x, perm, mask_of)
    # `_fmix_mask`'s weights, the float32 mean of each mask: on the CPU, `mean` is this sum
    # divided by the count, so the bits are the same.
    means = ones.div_(math.prod(size))
    return mixed, torch.where(partner_finite, means, 1.0)


def _fmix_mask(
    x: Tensor,
    lam: float | Tensor,
    *,
    decay_power: float,
    max_soft: float,
    generator: torch.Generator | None,
    spatial_dims: int | None,
    mask_sampler: str = "fast",
) -> tuple[Tensor, Tensor]:
    """The FMix mask, broadcastable to ``x``, and the float32 weights ``(batch,)``."""
    ndim = resolve_spatial_dims(x, spatial_dims, "fmix")
    size = tuple(x.shape[-ndim:])
    mask_sampler = _resolve_sampler(size, decay_power, max_soft, mask_sampler)
    if isinstance(lam, Tensor) and _draws_fields(max_soft, mask_sampler):
        fields = _exact_fields(size, lam, decay_power, generator, x.device)
        return _exact_masks(x, size, [lam], [fields])[0]
    n = math.prod(size)
    # The exact sampler's binary mask per batch holds round(lam * n) ones: counted once.
    count = None
    if not isinstance(lam, Tensor) and _draws_fields(max_soft, mask_sampler):
        count = _count(lam, n)
    mask = _sample_mask(
        size, lam, decay_power, max_soft, generator, x.device, x.dtype, mask_sampler, count
    )
    mask = mask.view(-1, *([1] * (x.ndim - 1 - ndim)), *size)
    if count is None:
        # The mean of the mask as applied (in x.dtype): (1,) or (batch,). The fast sampler's
        # mask holds round(lam * n) ones only where its grid is the input's.
        weights = mask.flatten(1).float().mean(dim=1).expand(x.shape[0]).contiguous()
    else:
        weights = torch.full((x.shape[0],), count / n, device=x.device)
    return mask, weights


def _draws_fields(max_soft: float, mask_sampler: str) -> bool:
    """Whether the masks are the exact sampler's binary ones: per sample, :func:`_fmix_mask`
    draws them as :func:`_exact_fields` and binarises them by :func:`_exact_masks`."""
    return max_soft == 0.0 and mask_sampler == "exact"


def _exact_fields(
    size: tuple[int, ...],
    lam: Tensor,
    decay_power: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """What per-sample exact masks draw from ``generator``: a grey field per element of
    ``lam``, ``(lam.numel(), N)``."""
    batch = lam.numel()
    return _low_frequency_noise(batch, size, decay_power, generator, device).reshape(batch, -1)


def _exact_masks(
    x: Tensor, size: tuple[int, ...], lams: Sequence[Tensor], fields: Sequence[Tensor]
) -> list[tuple[Tensor, Tensor]]:
    """The binary masks (broadcastable to ``x``) and float32 weights of one or several
    batches of ``x``'s shape, from their lam and :func:`_exact_fields`: ``round(lam * N)``
    ones per mask, at its field's highest values.

    Several batches whose rows the CPU's numpy ranking takes are binarised at once: every
    op then treats each sample on its own (elementwise ops that round exactly, a ranking per
    row), so each batch gets the bits it gets alone, for one batch's fixed costs, most of the
    time on small batches (``callbacks/mixing/_ahead.py``). Others go one at a time.
    """
    n = math.prod(size)
    if len(lams) > 1 and threshold_ranks(fields[0], x.dtype):
        count = _count(torch.cat(list(lams)), n)
        mask = threshold_top_k_mask(torch.cat(list(fields)), count, x.dtype)
        masks = mask.view(len(lams), -1, n).unbind()
        weights = count.float().div_(n).view(len(lams), -1).unbind()
    else:
        counts = [_count(lam, n) for lam in lams]
        masks = tuple(top_k_mask(f, c, x.dtype) for f, c in zip(fields, counts, strict=True))
        weights = tuple(c.float().div_(n) for c in counts)
    shape = (-1, *([1] * (x.ndim - 1 - len(size))), *size)
    return [(m.to(x.dtype).view(shape), w) for m, w in zip(masks, weights, strict=True)]


@functools.lru_cache(maxsize=16)
def _spectrum_scale(size: tuple[int, ...], decay_power: float, device: torch.device) -> Tensor:
    """``1 / max(|f|, 1 / max(size)) ** decay_power`` on the ``rfftn`` grid (cached: it only
    depends on the arguments)."""
    return _frequencies(size, device).clamp_min_(1.0 / max(size)).pow_(-decay_power)


def _frequencies(size: tuple[int, ...], device: torch.device) -> Tensor:
    """``|f|`` on the grid of ``rfftn`` for ``size``: full axes, then the half last axis."""
    axes = [torch.fft.fftfreq(s, device=device) for s in size[:-1]]
    axes.append(torch.fft.rfftfreq(size[-1], device=device))
    squared = torch.zeros((), device=device)
    for dim, axis in enumerate(axes):
        squared = squared + axis.view(*(-1 if d == dim else 1 for d in range(len(axes)))) ** 2
    return squared.sqrt()


def _low_frequency_noise(
    batch: int,
    size: tuple[int, ...],
    decay_power: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """The paper's "grey" images, one per row of the result ``(batch, N)``.

    On the CPU, fields of up to :data:`_DENSE_ELEMENTS` elements are one matrix product of
    the spectra's real and imaginary parts with :func:`_inverse_matrix`, the same linear map
    as the scaled inverse FFT (the same field up to float rounding), faster than the FFT at
    such sizes (``benchmarks/fmix_small.py``).
    """
    if torch.device(device).type == "cpu" and math.prod(size) <= _DENSE_ELEMENTS:
        points = math.prod(size[:-1]) * (size[-1] // 2 + 1)  # of the rfftn grid
        # The real and imaginary parts of complex64 spectra as `view_as_real` lays them out:
        # torch draws a complex normal as two normals of variance 1/2 in this order, so these
        # are the same bits, in fewer ops than drawing complex numbers and viewing them.
        spectra = torch.empty(batch, 2 * points).normal_(0.0, 0.5**0.5, generator=generator)
        return spectra @ _inverse_matrix(size, decay_power)
    scale = _spectrum_scale(size, decay_power, torch.device(device))
    spectrum = torch.randn(
        (batch, *scale.shape), dtype=torch.complex64, generator=generator, device=device
    )
    grey: Tensor = torch.fft.irfftn(
        spectrum.mul_(scale), s=size, dim=tuple(range(1, len(size) + 1))
    )
    return grey.reshape(batch, -1)


# Fields up to this many elements are drawn by :func:`_inverse_matrix` on the CPU: the matrix
# has about 2N x N entries, so its product grows as N^2 per field, the FFT's as N log N; at a
# batch of 64 they take the same time near 12x12 (``benchmarks/fmix_small.py``).
_DENSE_ELEMENTS = 128


@functools.lru_cache(maxsize=16)
def _inverse_matrix(size: tuple[int, ...], decay_power: float) -> Tensor:
    """The float32 ``(2 M, N)`` matrix that takes a spectrum on the ``rfftn`` grid (``M``
    points), as ``view_as_real`` lays it out (real and imaginary part of each point in turn),
    to the field ``irfftn(spectrum * scale)`` of ``N`` elements (cached).

    Row ``2 k`` is the field of a spectrum that is 1 at point ``k`` and 0 elsewhere, row
    ``2 k + 1`` that of ``1j`` there, computed by the same ``irfftn`` in float64: the inverse
    real FFT is linear over the reals, so the product reproduces it, including what it makes
    of the imaginary parts it ignores (at frequency 0 and, on even axes, the Nyquist one)."""
    scale = _spectrum_scale(size, decay_power, torch.device("cpu")).to(torch.float64)
    points = scale.numel()
    ones = torch.eye(points, dtype=torch.float64)
    zeros = torch.zeros_like(ones)
    # 1 and 1j at each point in turn, as view_as_real orders them: (points, 2, points).
    spectra = torch.stack([torch.complex(ones, zeros), torch.complex(zeros, ones)], dim=1)
    spectra = spectra.view(2 * points, *scale.shape)
    fields: Tensor = torch.fft.irfftn(spectra * scale, s=size, dim=tuple(range(1, len(size) + 1)))
    return fields.reshape(2 * points, -1).to(torch.float32)
