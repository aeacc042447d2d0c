"""The non-finite guard and the blend as one compiled program, where the backend has a compiler.

In torch ops the guard and the blend of :mod:`~lightning_recipes.functional.blend` are four
passes over the batch: a per-sample sum (which samples are finite), a gather of the partners
into a new tensor, and a ``lerp`` that reads both and writes the result. Compiled
(``torch.compile``, Inductor's Triton kernels on CUDA), the gather and the ``lerp`` become one
kernel that reads ``x`` and the partners once and writes the result once, after one reduction
kernel for the finiteness flags, which must be known before a partner's pixels are used.

It is only chosen where it pays and is exact:

* on the devices of :data:`_DEVICES` (CUDA). On the CPU, compiling costs seconds per kind of
  weight map at the first batch, which a short fit never earns back, and Inductor's C++
  ``lerp`` differs from eager's in the last bit for fractional weights
  (``benchmarks/RESULTS.md``);
* once per kind of call (device, dtype, layout of the weight), the first result is compared
  with the eager path's bit for bit (one host-device synchronisation, once); a kind whose
  compiled result differs, or that fails to compile, uses the eager path from then on;
* the batch dimension is dynamic, so the smaller last batch of an epoch does not recompile.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["fused_blend_finite"]

# Device types the compiled path is tried on.
_DEVICES: tuple[str, ...] = ("cuda",)
_Key = tuple[str, torch.dtype, int, tuple[bool, ...] | None]
_checked: set[_Key] = set()
_rejected: set[_Key] = set()


@functools.cache
def _compiled() -> Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    # Imported here: `blend` imports this module, and the function it compiles lives there,
    # beside the eager path whose guard it calls.
    from lightning_recipes.functional.blend import _guarded_blend

    return torch.compile(_guarded_blend, dynamic=True)


def fused_blend_finite(
    x: Tensor,
    perm: Tensor,
    weight: float | Tensor,
    weights: Tensor,
    eager: Callable[[], tuple[Tensor, Tensor]],
) -> tuple[Tensor, Tensor]:
    """The compiled guard and blend where chosen (see the module docstring), else ``eager()``.

    ``weight`` is a Python float or a tensor broadcastable to ``x``, already in ``x.dtype``.
    """
    if x.device.type not in _DEVICES or x.requires_grad:
        return eager()
    key: _Key = (
        x.device.type,
        x.dtype,
        x.ndim,
        tuple(s == 1 for s in weight.shape) if isinstance(weight, Tensor) else None,
    )
    if key in _rejected:
        return eager()
    if not isinstance(weight, Tensor):  # a fill kernel: no host-to-device copy, no sync
        weight = torch.full((), weight, dtype=x.dtype, device=x.device)
    try:
        result = _compiled()(x, perm, weight, weights)
    except Exception as error:  # any compiler failure falls back to torch ops
        _rejected.add(key)
        warnings.warn(
            f"mixing: the compiled blend failed ({type(error).__name__}); using torch ops",
            RuntimeWarning,
            stacklevel=3,
        )
        return eager()
    if key not in _checked:
        expected = eager()
        if not (_same(result[0], expected[0]) and _same(result[1], expected[1])):
            _rejected.add(key)
            return expected
        _checked.add(key)
    return result


def _same(a: Tensor, b: Tensor) -> bool:
    """Equal bit for bit, NaN where the other has NaN (a non-finite image stays so)."""
    return bool(((a == b) | (a.isnan() & b.isnan())).all())
