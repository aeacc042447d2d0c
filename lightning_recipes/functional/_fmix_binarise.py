"""FMix's binarisation: the ``count`` highest values of each row of grey images set to 1 (the
paper's ``binarise_mask``), hard or with its soft edge."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SORTED_ELEMENTS",
    "argsort_top_k_mask",
    "histogram_top_k_mask",
    "soft_top_k_mask",
    "sorted_top_k_mask",
    "threshold_ranks",
    "threshold_top_k_mask",
    "top_k_mask",
]

# A batch of rows with a count each is ranked by a sort up to this many values in all, above
# by the histogram, whose some 25 small ops cost about the same at any size up to a few
# thousand values, where torch's sort grows with them. On the CPU numpy's sort stays the
# cheaper well beyond (``benchmarks/fmix_small.py``), but a higher limit would change the
# masks drawn at those sizes (the histogram chooses otherwise among near-equal values).
SORTED_ELEMENTS = 4096

# The dtypes whose CPU tensors numpy shares without a copy (bfloat16 has no numpy dtype).
_NUMPY_DTYPES = {
    torch.bool: np.bool_,
    torch.float16: np.float16,
    torch.float32: np.float32,
    torch.float64: np.float64,
}


def top_k_mask(values: Tensor, count: int | Tensor, dtype: torch.dtype = torch.bool) -> Tensor:
    """Per row, 1 (True) at exactly ``count`` positions: those of the highest values.

    One count for all rows (a Python int, from a per-batch lam) is an exact ``topk``. A count
    per row (a tensor) cannot use ``topk``: batches of up to :data:`SORTED_ELEMENTS` values
    are sorted (:func:`sorted_top_k_mask`, exactly the highest values), larger ones go
    through a histogram (:func:`histogram_top_k_mask`, exactly ``count`` values, which may
    differ from a sort's choice among near-equal values at the cut).
    """
    if isinstance(count, int):
        top = values.topk(count, dim=1, sorted=False).indices
        return torch.zeros_like(values, dtype=dtype).scatter_(1, top, 1)
    if values.numel() <= SORTED_ELEMENTS:
        return sorted_top_k_mask(values, count, dtype)
    return histogram_top_k_mask(values, count, dtype)


def sorted_top_k_mask(values: Tensor, count: Tensor, dtype: torch.dtype = torch.bool) -> Tensor:
    """:func:`top_k_mask` with a count per row, by a sort of every row: on the CPU
    :func:`threshold_top_k_mask`, elsewhere :func:`argsort_top_k_mask`."""
    if _numpy_ranks(values, dtype):
        return threshold_top_k_mask(values, count, dtype)
    return argsort_top_k_mask(values, count, dtype)


def threshold_ranks(values: Tensor, dtype: torch.dtype) -> bool:
    """Whether :func:`top_k_mask` with a count per row ranks ``values`` into a mask of
    ``dtype`` by :func:`threshold_top_k_mask`."""
    return values.numel() <= SORTED_ELEMENTS and _numpy_ranks(values, dtype)


def _numpy_ranks(values: Tensor, dtype: torch.dtype) -> bool:
    """Whether numpy can rank ``values`` (CPU, no grad, dtypes it shares)."""
    on_host = values.device.type == "cpu" and not values.requires_grad
    return on_host and values.dtype in _NUMPY_DTYPES and dtype in _NUMPY_DTYPES


def argsort_top_k_mask(values: Tensor, count: Tensor, dtype: torch.dtype = torch.bool) -> Tensor:
    """:func:`top_k_mask` with a count per row, by one ``argsort`` of every row."""
    batch, n = values.shape
    order = values.argsort(dim=1, descending=True)
    taken = torch.arange(n, device=values.device) < count.view(batch, 1)
    # Each row of `order` is a permutation: the scatter writes every element, so no zeros.
    return torch.empty_like(values, dtype=dtype).scatter_(1, order, taken.to(dtype))


def threshold_top_k_mask(values: Tensor, count: Tensor, dtype: torch.dtype = torch.bool) -> Tensor:
    """:func:`top_k_mask` with a count per row of finite CPU values, by numpy: each row's
    ``count``-th highest value is read from its sorted copy, and the values at or above it
    are taken; where a row holds ties at that value, as many of them as it still needs, in
    index order.

    numpy, not torch, because torch's CPU sort of short rows is slow (mostly branches it
    mispredicts on fresh values) where numpy's sort is vectorised: for 64 rows of 64 values
    the whole function takes a fraction of one ``argsort``'s time
    (``benchmarks/fmix_small.py``). The tensors share their memory with the arrays: no copy.
    """
    v, k = values.numpy(), count.numpy()
    batch, n = v.shape
    # A sentinel of +inf after each row's values makes a count of 0 select nothing, with
    # no special case: the row's threshold is then +inf, above every finite value.
    ranked = np.empty((batch, n + 1), dtype=v.dtype)
    ranked[:, n] = np.inf
    ranked[:, :n] = v
    ranked[:, :n].sort(axis=1)
    cut = ranked[_rows(batch), n - k].reshape(batch, 1)
    mask = v >= cut
    if np.count_nonzero(mask) != k.sum():  # ties at some row's cut (rare, bar tests)
        above, at = v > cut, v == cut
        need = k.reshape(batch, 1) - above.sum(axis=1, keepdims=True)
        mask = above | (at & (np.cumsum(at, axis=1) <= need))
    return torch.from_numpy(mask.astype(_NUMPY_DTYPES[dtype], copy=False))


@functools.lru_cache(maxsize=16)
def _rows(batch: int) -> np.ndarray:
    """``arange(batch)``, the row index of a numpy gather (cached: only read)."""
    return np.arange(batch)


def histogram_top_k_mask(values: Tensor, count: Tensor, dtype: torch.dtype = torch.bool) -> Tensor:
    """:func:`top_k_mask` with a count per row, without a sort (on long rows by far the
    slowest step of FMix on the CPU: torch sorts many rows slowly).

    Every value goes to one of ``N / 4`` equal-width bins of its row, the bin holding the
    ``count``-th highest value is located from the cumulative counts, values in higher bins
    are taken, and from that boundary bin (a few values within ``range / (N / 4)`` of the
    cut, all on the mask's contour) exactly the number still needed, in index order. The
    area is exact; only the choice among near-equal values at the contour differs from a
    sort.
    """
    batch, n = values.shape
    bins = max(1, n // 4)
    low, high = values.amin(dim=1, keepdim=True), values.amax(dim=1, keepdim=True)
    # Values mapped to [0, bins - 0.5] (values - low is exact and >= 0), so truncation gives
    # bins 0 .. bins - 1 without a clamp. int32 halves the memory traffic of the passes
    # below; the counts come from one flat `index_add_` over row * bins + bin.
    scale = (bins - 0.5) / (high - low).clamp_min(1e-30)
    index = (values - low).mul_(scale).int()
    first = torch.arange(0, batch * bins, bins, dtype=torch.int32, device=values.device)
    ones = torch.ones((), dtype=torch.int32, device=values.device).expand(batch * n)
    counts = torch.zeros(batch * bins, dtype=torch.int32, device=values.device)
    counts.index_add_(0, (index + first.unsqueeze(1)).view(-1), ones)
    at_or_below = counts.view(batch, bins).cumsum(1, dtype=torch.int32)
    count = count.view(batch, 1)
    # Bin j holds the cut while the values above it (n - at_or_below[j - 1]) are < count.
    boundary = (at_or_below[:, :-1] <= n - count).sum(dim=1, keepdim=True)
    need = count - (n - at_or_below.gather(1, boundary))  # to take from the boundary bin
    boundary = boundary.int()
    in_boundary = index == boundary
    take = in_boundary & (in_boundary.cumsum(1, dtype=torch.int32) <= need)
    return take.logical_or_(index > boundary).to(dtype)


def soft_top_k_mask(values: Tensor, count: Tensor, soft: Tensor) -> Tensor:
    """The paper's soft binarisation: rank ``r`` (0 = highest) gets 1 for ``r < count - soft``,
    0 for ``r >= count + soft`` and ``linspace(1, 0, 2 * soft)`` in between, so the row mean
    stays ``count / N``. Needs exact ranks, hence a sort."""
    batch, n = values.shape
    order = values.argsort(dim=1, descending=True)
    positions = torch.arange(n, device=values.device).expand(batch, n)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    count, soft = count.view(batch, 1), soft.view(batch, 1)
    ramp = 1.0 - (rank - (count - soft)) / (2 * soft - 1).clamp_min(1)
    return torch.where(soft > 0, ramp.clamp_(0.0, 1.0), (rank < count).float())
