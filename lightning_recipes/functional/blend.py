"""The one operation all mixing methods apply: ``m * x_i + (1 - m) * x_perm(i)``.

MixUp's ``m`` is a ratio per sample (or per batch); CutMix's and FMix's are masks. Applying
them through the same kernel keeps dtype, memory format and exactness the same for all three.

A sample whose partner holds NaN or inf is not mixed (it is paired with itself, which leaves it
exactly as it was), so one broken image never spreads into a second one; the broken image
itself stays non-finite, for a check that raises (``TrainingSanityChecks(finite_inputs=...)``).
Finding such partners costs one reduction over the batch and no host-device synchronisation.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from lightning_recipes._validation import check_inplace, check_input, check_perm
from lightning_recipes.functional._fused import fused_blend_finite
from lightning_recipes.functional._rows import blend_rows, finite_sums, guard_dtype, rows_pay

__all__ = ["blend"]


def blend(x: Tensor, perm: Tensor, weight: float | Tensor, *, inplace: bool = False) -> Tensor:
    """Returns ``weight * x + (1 - weight) * x[perm]``, as a new tensor or written into ``x``.

    The result has the dtype and memory format of ``x`` (channels-last stays channels-last,
    fp16/bf16 stay fp16/bf16). Where ``weight`` is exactly 1 the result equals ``x``, and
    where it is 0 it equals ``x[perm]``, so binary masks copy pixel values; the sign of a zero
    may not survive (``lerp`` computes ``x - (x - x[perm]) * 0``, which turns a ``-0.0`` into
    ``+0.0`` where ``x[perm]`` is positive). A sample whose partner holds NaN or inf is
    returned unchanged (see the module docstring).

    It costs one reduction (which samples are finite), one gather and one ``lerp`` pass and
    allocates a single new tensor (the gathered partners), with or without ``inplace``
    (timings against ``x.clone()``: ``benchmarks/RESULTS.md``). The mixing functions and
    callbacks use the same ops, in fewer passes over memory where the backend allows it.

    Args:
        x: Floating-point batch of shape ``(batch, ...)``.
        perm: Partner index of each sample, ``torch.long`` of shape ``(batch,)``.
        weight: Weight of ``x`` itself: a Python float, or a tensor broadcastable to ``x``
            (cast to ``x.dtype``, so a weight that fp16 cannot hold is rounded).
        inplace: Write the result into ``x`` and return it (as timm's ``Mixup`` does) instead
            of returning a new tensor; refused for a view of another tensor.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
        >>> blend(x, torch.tensor([1, 0]), torch.tensor([[0.25], [1.0]]))
        tensor([[0.7500, 0.7500],
                [1.0000, 1.0000]])
    """
    check_input(x)
    check_perm(perm, x.shape[0], x.device)
    check_inplace(x, inplace)
    return _blend(x, _finite_partners(x, perm)[0], weight, inplace)


def _blend_finite(
    x: Tensor, perm: Tensor, weight: float | Tensor, weights: Tensor, inplace: bool
) -> tuple[Tensor, Tensor]:
    """:func:`_blend`, with the samples whose partner is non-finite left unmixed and their
    ``weights`` (float32, ``(batch,)``) set to 1, so that their targets stay their own.

    Out of place, the guard and the blend run compiled on a device with a compiler (CUDA,
    :mod:`lightning_recipes.functional._fused`), and a sample at a time on the CPU where its
    samples are large (:mod:`lightning_recipes.functional._rows`): both give the result of
    the batched torch ops below bit for bit, in fewer passes over memory.
    """
    if isinstance(weight, Tensor):
        weight = weight.to(x.dtype)

    def eager() -> tuple[Tensor, Tensor]:
        partners, partner_finite = _finite_partners(x, perm)
        mixed = _blend(x, partners, weight, inplace)
        return mixed, _guarded_weights(weights, partner_finite)

    if inplace:
        return eager()
    if rows_pay(x, weight, inplace):
        return blend_rows(x, perm, weight, weights)
    return fused_blend_finite(x, perm, weight, weights, eager)


def _guarded_blend(
    x: Tensor, perm: Tensor, weight: Tensor, weights: Tensor
) -> tuple[Tensor, Tensor]:
    """The eager path's guard and ``lerp``, out of place, as one function of tensors: what
    :mod:`~lightning_recipes.functional._fused` compiles."""
    partners, partner_finite = _finite_partners(x, perm)
    mixed = torch.lerp(x.index_select(0, partners), x, weight)
    return mixed, _guarded_weights(weights, partner_finite)


def _finite_partners(x: Tensor, perm: Tensor) -> tuple[Tensor, Tensor | None]:
    """``perm`` with every sample whose partner holds NaN or inf paired with itself, and
    whether each sample's partner is finite, ``(batch,)`` bool, or None where all are; on
    the device, no sync.

    A NaN or inf anywhere in a sample makes its sum NaN or inf: one reduction pass, no
    temporary of the input's size. The sum runs in a dtype with float32's range at least: the
    input's own for float32, float64 and bfloat16 (whose range is float32's; summing it in
    float32 would convert every element on the way), float32 for float16 (whose sums of
    finite images overflow). So a finite sample counts as non-finite only if its sum
    overflows float32's range (values near 1e38), and is then left unmixed, never mixed
    wrongly.

    On the CPU, where reading a number back costs no device sync, the batch is summed whole
    first: a NaN or inf anywhere makes that sum non-finite too, and a finite sum (all but
    broken batches) proves every partner finite in two ops, where the per-sample flags and
    the ``where`` on the partners and on the weights take six (on small batches each op's
    fixed cost counts, ``benchmarks/RESULTS.md``). The per-sample path runs when the whole
    sum is not finite, so the results are the per-sample path's for every batch but one
    whose finite values near float32's limit overflow a sample's sum and cancel in the
    whole sum (values near 1e38 of both signs): its samples, all finite, are mixed then.
    """
    if (
        x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and math.isfinite(x.sum(dtype=guard_dtype(x.dtype)).item())
    ):
        return perm, None
    return _per_sample_partners(x, perm)


def _per_sample_partners(x: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_finite_partners` from the sum of each sample, whatever the device."""
    if x.ndim == 1:
        finite = x.isfinite()
    else:
        finite = finite_sums(x.sum(dim=tuple(range(1, x.ndim)), dtype=guard_dtype(x.dtype)))
    partner_finite = finite.index_select(0, perm)
    # The cached index saves an op per batch in eager mode; a compiled program makes its own
    # (the compiler traces through a cache and warns that it does).
    batch, device = perm.shape[0], perm.device
    own = (
        torch.arange(batch, device=device) if torch.compiler.is_compiling() else _own(batch, device)
    )
    return torch.where(partner_finite, perm, own), partner_finite


def _guarded_weights(weights: Tensor, partner_finite: Tensor | None) -> Tensor:
    """``weights`` with 1 for each sample whose partner is not finite (left unmixed)."""
    return weights if partner_finite is None else torch.where(partner_finite, weights, 1.0)


@functools.lru_cache(maxsize=16)
def _own(batch_size: int, device: torch.device) -> Tensor:
    """``arange(batch_size)``, each sample its own partner (cached: only read)."""
    return torch.arange(batch_size, device=device)


def _blend(x: Tensor, perm: Tensor, weight: float | Tensor, inplace: bool) -> Tensor:
    """:func:`blend` on checked arguments."""
    if isinstance(weight, Tensor):
        weight = weight.to(x.dtype)
    if x.is_contiguous():
        partners = x.index_select(0, perm)
    else:  # `empty_like` keeps the memory format (channels-last), `index_select` would not
        partners = torch.empty_like(x)
        torch.index_select(x, 0, perm, out=partners)
    # lerp(start=partner, end=x, weight) = weight * x + (1 - weight) * partner, exact at 0 and
    # 1. Each element is read before it is written, so `out` may be `x` itself.
    return torch.lerp(partners, x, weight, out=x if inplace else partners)
