"""The non-finite guard and the blend in one pass over the batch on the CPU, a sample at a time.

In batched torch ops, :func:`~lightning_recipes.functional.blend._blend_finite` makes four
passes over memory: a per-sample sum of ``x`` (which samples are finite), a gather of the
partners into a new tensor (a read and a write), and a ``lerp`` that reads the gathered
partners and ``x`` and writes the result. A batch larger than the processor's caches (a
64x3x224x224 float32 batch is 38.5 MB) comes from main memory in each of them.

Here the same ops run on one sample at a time, on views: the partner's sum reads it from
memory into the cache, and the ``lerp`` then reads it again from the cache, reads the sample
and writes its row of the result. What crosses main memory is what a fused kernel moves (the
partner, the sample, the result), with no gathered copy of the batch. No torch op fuses a
gather with a ``lerp``, and the CPU has no compiler that keeps eager's ``lerp`` bits (see
:mod:`~lightning_recipes.functional._fused`), hence this composition.

The results are those of the batched ops bit for bit (of a NaN, only its payload may differ):
the same ``lerp`` on the same operands, element by element, and a sample whose partner is
non-finite is blended with itself, as the batched guard does. :func:`blend_rows` is the plain
blend, :func:`paste_rows` per-batch CutMix's paste, :func:`blend_box_rows` a blend through
one box per sample (per-sample CutMix, and RandomMix of MixUp and CutMix) with each sample's
mask made in the cache instead of the batch's mask, and :func:`blend_mask_rows` the same for
any mask made a sample at a time (per-sample FMix).
The result is written into memory whose fresh pages were faulted in beforehand with one
system call (:mod:`~lightning_recipes.functional._pages`), at one intra-op thread.
A Python loop over the samples is the price: a few microseconds per sample, against the tens
of microseconds that moving a sample of 256 KiB or more costs.

It is chosen where it measured faster (``benchmarks/mixing.py``): samples of at least
:data:`_ROW_BYTES` bytes, so that each op's fixed cost (microseconds) is small against its
sample, and of at least :data:`_ROW_ELEMENTS_PER_THREAD` elements per intra-op thread, so
that an op on one sample still keeps every thread busy (with fewer, the batched ops spread
over more threads win).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lightning_recipes.functional._pages import empty_populated_like

__all__ = [
    "blend_box_rows",
    "blend_mask_rows",
    "blend_rows",
    "finite_sums",
    "guard_dtype",
    "paste_rows",
    "rows_pay",
]

# A sample of at least this many bytes, and at least this many elements per intra-op thread
# (twice the 32768-element grain at which torch's CPU kernels split work across threads).
_ROW_BYTES = 256 * 1024
_ROW_ELEMENTS_PER_THREAD = 65536
# Per-batch CutMix's paste copies this many bytes of samples per op (a few samples of
# 3x224x224 float32): they stay in the caches between the copy, the guard and the paste.
_PASTE_CHUNK_BYTES = 4 * 1024 * 1024


def guard_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the non-finite guard sums a sample in: its own, float32 for float16 (whose
    sums of finite images overflow; see ``blend._finite_partners``)."""
    return torch.float32 if dtype == torch.float16 else dtype


def finite_sums(sums: Tensor) -> Tensor:
    """Whether each of the guard's sums is finite: ``|sum| < inf``, False for NaN and for
    either inf alike. Two ops where ``isfinite`` of a float tensor takes four (``x == x``,
    ``abs``, ``!= inf``, ``and``): on small batches each op counts."""
    return sums.abs() < math.inf


def _guarded_rows(
    x: Tensor,
    perm: Tensor,
    guarded: Tensor,
    mix: Callable[[int, int], None],
    before: Callable[[int], object] | None = None,
) -> Tensor:
    """For each sample ``i``: ``before(i)`` (if given), the sum of ``guarded[perm[i]]`` (the
    part of the partner that is used), then ``mix(i, perm[i])``; then ``mix(i, i)`` again for
    each sample whose partner's sum is not finite. Returns whether each sample's partner is
    finite, ``(batch,)`` bool.

    The rows are views made once per call by ``unbind`` (one op for the batch, where indexing
    costs an op per sample): the loop's fixed cost per sample is what it adds to the batched
    ops' time, so it is kept to the ops that move data."""
    sums = torch.empty(x.shape[0], dtype=guard_dtype(x.dtype))
    dims = tuple(range(guarded.ndim - 1))
    partners, totals = guarded.unbind(0), sums.unbind(0)
    for i, j in enumerate(perm.tolist()):  # on the CPU: no device synchronisation
        if before is not None:
            before(i)
        torch.sum(partners[j], dim=dims, dtype=sums.dtype, out=totals[i])
        mix(i, j)
    partner_finite = finite_sums(sums)
    if not bool(partner_finite.all()):
        # Rare: the samples whose partner is broken are mixed with themselves instead.
        for i in (~partner_finite).nonzero().flatten().tolist():
            mix(i, i)
    return partner_finite


def rows_pay(x: Tensor, weight: float | Tensor, inplace: bool) -> bool:
    """Whether :func:`blend_rows` is chosen for this call (see the module docstring)."""
    if inplace or x.device.type != "cpu" or x.ndim < 2 or x.requires_grad:
        # In place, a sample's row would be overwritten before a later sample reads it as its
        # partner, so all partners must be gathered first.
        return False
    if isinstance(weight, Tensor) and (
        weight.ndim != x.ndim or weight.shape[0] not in (1, x.shape[0]) or weight.requires_grad
    ):
        return False
    row = math.prod(x.shape[1:])  # not `x[0].numel()`: a view is an op, a few us
    return (
        row * x.element_size() >= _ROW_BYTES
        and row >= _ROW_ELEMENTS_PER_THREAD * torch.get_num_threads()
    )


def blend_rows(
    x: Tensor, perm: Tensor, weight: float | Tensor, weights: Tensor
) -> tuple[Tensor, Tensor]:
    """``lerp(x[perm], x, weight)`` as a new tensor, a sample whose partner holds NaN or inf
    blended with itself (left as it is) and its ``weights`` set to 1; ``weight`` is a Python
    float or a tensor of ``x.ndim`` dims in ``x.dtype`` with a batch dim of 1 or ``batch``."""
    batch = x.shape[0]
    if not isinstance(weight, Tensor) and x.dtype in (torch.float32, torch.float64):
        # `lerp` takes a Python weight in x's dtype here (float32 or wider), so a tensor of it
        # gives the same bits; with glibc's malloc its kernel writes the fresh rows of the
        # result (page faults) measurably faster than the Python-scalar kernel does.
        weight = torch.full((1,) * x.ndim, weight, dtype=x.dtype)
    weights_of_rows: Sequence[float | Tensor]
    if not isinstance(weight, Tensor):
        weights_of_rows = (weight,) * batch
    elif weight.shape[0] == batch:
        weights_of_rows = weight.unbind(0)
    else:
        weights_of_rows = (weight[0],) * batch
    out, partner_finite = blend_mask_rows(x, perm, weights_of_rows.__getitem__)
    return out, torch.where(partner_finite, weights, 1.0)


def blend_mask_rows(
    x: Tensor, perm: Tensor, mask_of: Callable[[int], float | Tensor]
) -> tuple[Tensor, Tensor]:
    """``lerp(x[perm], x, weight)`` as a new tensor (the memory format of ``x``, as the batched
    path keeps it), each sample's weight made by ``mask_of(i)`` just before its row's ``lerp``
    instead of read from a batch of weights; and whether each sample's partner is finite,
    ``(batch,)`` bool. A sample whose partner holds NaN or inf is blended with itself,
    through its own weight (``mask_of(i)`` again). A weight is in ``x.dtype`` and of the
    batched weight's row shape, so that ``lerp`` splits its loop where the batched one does.
    The loop of :func:`blend_rows` (weights read from a batch), :func:`blend_box_rows` (a
    box's mask written per sample) and per-sample FMix (a mask finished per sample)."""
    out = empty_populated_like(x)
    rows, out_rows = x.unbind(0), out.unbind(0)

    def mix(i: int, j: int) -> None:
        torch.lerp(rows[j], rows[i], mask_of(i), out=out_rows[i])

    return out, _guarded_rows(x, perm, x, mix)


def paste_rows(x: Tensor, region: tuple[slice, ...], perm: Tensor) -> tuple[Tensor, Tensor]:
    """A copy of ``x`` with each sample's ``region`` (one box, the same for all samples)
    taken from its partner ``x[perm]``, a sample whose partner's box holds NaN or inf left as
    it is; and whether each sample's partner box is finite, ``(batch,)`` bool.

    Per-batch CutMix out of place, a few samples at a time (:data:`_PASTE_CHUNK_BYTES` of
    them): the samples are copied, their own boxes summed (the guard) while they are in the
    cache, and their partners' boxes gathered into them, instead of a clone of the batch, a
    guard over every box and a gather of every box, each a pass over memory. A box whose sum
    is not finite is then put back from the sample itself in each sample that took it as
    partner's box (rare). The same copies and the same guard as the batched ops, so the same
    bits. Three ops per chunk, not per sample: with memory reused the ops' fixed costs, not
    the memory, were what a sample at a time added (``benchmarks/mixing.py``).
    """
    out = empty_populated_like(x)  # keeps the memory format, as `x.clone()` does
    boxes, into = x[region], out[region]
    batch = x.shape[0]
    sums = torch.empty(batch, dtype=guard_dtype(x.dtype))
    dims = tuple(range(1, x.ndim))
    step = max(1, _PASTE_CHUNK_BYTES // max(1, math.prod(x.shape[1:]) * x.element_size()))
    for start in range(0, batch, step):
        chunk = slice(start, min(start + step, batch))
        out[chunk].copy_(x[chunk])
        # The sample's own box, in the cache after the copy: whether it can be given.
        torch.sum(into[chunk], dim=dims, dtype=sums.dtype, out=sums[chunk])
        torch.index_select(boxes, 0, perm[chunk], out=into[chunk])
    partner_finite = finite_sums(sums).index_select(0, perm)
    if not bool(partner_finite.all()):
        # Rare: the samples whose partner's box is broken get their own box back.
        for i in (~partner_finite).nonzero().flatten().tolist():
            into[i].copy_(boxes[i])
    return out, partner_finite


def blend_box_rows(
    x: Tensor,
    perm: Tensor,
    boxes: list[list[tuple[int, int]]],
    weights: Tensor,
    outside: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`blend_rows` through CutMix's mask of one box per sample (1 outside the box, 0
    inside, ``boxes[i]`` the clipped ``(low, high)`` of each trailing spatial dim), without
    the batch's mask: each sample's mask is written into one buffer of a mask row's size,
    which stays in the cache, just before its row's ``lerp``. ``outside`` (``(batch, 1, ...)``
    in ``x.dtype``) replaces the 1 outside the boxes with a ratio per sample: RandomMix's
    MixUp ratio times the CutMix mask, whose products with 1 and 0 are the ratio and 0. A
    sample whose partner holds NaN or inf is blended with itself.

    The ``lerp`` takes a weight of the batched mask's row shape and values, so its element
    loop is split where the batched one is: ``lerp``'s vectorised and scalar loops round a
    copied ``-0.0`` differently, and a ``lerp`` over the whole row with weight 1 and then
    over the box with weight 0 (same values) gave other signs of zero at the loops' ends."""
    spatial = len(boxes[0]) if boxes else 0
    mask = torch.empty(
        (1,) * (x.ndim - 1 - spatial) + tuple(x.shape[x.ndim - spatial :]), dtype=x.dtype
    )
    # Python floats of x's dtype's values: `fill_` writes them back exactly.
    ratios = [1.0] * x.shape[0] if outside is None else outside.reshape(-1).tolist()

    def mask_of(i: int) -> Tensor:
        mask.fill_(ratios[i])
        if all(high > low for low, high in boxes[i]):
            _box(mask, boxes[i]).fill_(0.0)
        return mask

    out, partner_finite = blend_mask_rows(x, perm, mask_of)
    return out, torch.where(partner_finite, weights, 1.0)


def _box(t: Tensor, box: list[tuple[int, int]]) -> Tensor:
    """``t[..., low_0:high_0, low_1:high_1, ...]`` for the ``(low, high)`` of ``box`` on the
    trailing dims, as one ``as_strided`` view (indexing with slices makes an op per dim)."""
    size, stride = list(t.shape), t.stride()
    offset = t.storage_offset()
    for dim, (low, high) in enumerate(box, start=t.ndim - len(box)):
        size[dim] = high - low
        offset += low * stride[dim]
    return t.as_strided(size, stride, offset)
