"""Argument checks: the one place where the package validates what a user passes in.

Policy: a value of the wrong type raises ``TypeError``, a value of the right type that is out
of range or inconsistent raises ``ValueError``. Messages are one to three lines and name the
argument, what was expected, what came and, where it is not obvious, the fix. Each check
returns the value (converted where that helps, e.g. an int to a float), so a caller writes
``self.alpha = check_positive(alpha, "alpha")``.

Every check reads only metadata (shape, dtype, device) unless its name says otherwise, so it is
free to run on every training batch: no host-device synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from numbers import Real
from typing import Any, TypeVar

import torch
from torch import Tensor

from lightning_recipes._compat import is_view, view_base

_T = TypeVar("_T")

SPATIAL_DIMS = (1, 2, 3)


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {value!r}")
    return value


def check_int(value: Any, name: str, *, minimum: int | None = None, optional: bool = False) -> Any:
    """An ``int`` (not a bool) >= ``minimum``; ``None`` too when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        expected = "None or an integer" if optional else "an integer"
        raise TypeError(f"`{name}` must be {expected}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return value


def check_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a str, got {value!r}")
    return value


def check_choice(value: Any, name: str, choices: Collection[_T]) -> _T:
    if value not in choices or isinstance(value, bool):
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")
    return value  # type: ignore[no-any-return]


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """A finite real number > 0 (>= 0 with ``allow_zero``)."""
    value = check_real(value, name)
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"`{name}` must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def check_real(value: Any, name: str) -> float:
    """A finite real number (not a bool), as a float: NaN and inf are bad values of the right
    type (``ValueError``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a finite real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"`{name}` must be a finite real number, got {value!r}")
    return number


def check_range(
    value: Any,
    name: str,
    low: float,
    high: float,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """A finite real number in ``[low, high]``; ``open_low``/``open_high`` leave out that end."""
    number = check_real(value, name)
    if not low <= number <= high or (open_low and number == low) or (open_high and number == high):
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"`{name}` must be in {interval}, got {number}")
    return number


def check_type(value: Any, name: str, expected: Any, what: str) -> Any:
    """``value`` an instance of ``expected`` (``collections.abc`` classes work); ``what`` is
    how the message names it, e.g. ``"a string or a callable"``."""
    if not isinstance(value, expected):
        raise TypeError(f"`{name}` must be {what}, got {type(value).__name__}")
    return value


def check_alpha(alpha: object, name: str = "alpha") -> float:
    alpha = check_real(alpha, name)
    if alpha <= 0:
        raise ValueError(f"`{name}` must be > 0, got {alpha}")
    return alpha


def check_probability(p: object, name: str = "p") -> float:
    p = check_real(p, name)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1], got {p}")
    return p


def check_decay_power(decay_power: object) -> float:
    decay_power = check_real(decay_power, "decay_power")
    if decay_power <= 0:
        raise ValueError(f"`decay_power` must be > 0, got {decay_power}")
    return decay_power


def check_max_soft(max_soft: object) -> float:
    max_soft = check_real(max_soft, "max_soft")
    if not 0.0 <= max_soft <= 0.5:
        raise ValueError(f"`max_soft` must be in [0, 0.5], got {max_soft}")
    return max_soft


def check_mask_sampler(mask_sampler: object) -> str:
    return check_choice(check_str(mask_sampler, "mask_sampler"), "mask_sampler", ("exact", "fast"))


def check_label_smoothing(label_smoothing: object) -> float:
    label_smoothing = check_real(label_smoothing, "label_smoothing")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}")
    return label_smoothing


def check_num_classes(num_classes: Any, name: str = "num_classes") -> int | None:
    return check_int(num_classes, name, minimum=1, optional=True)  # type: ignore[no-any-return]


def check_spatial_dims(spatial_dims: Any) -> int | None:
    check_int(spatial_dims, "spatial_dims", optional=True)
    if spatial_dims is not None and spatial_dims not in SPATIAL_DIMS:
        raise ValueError(f"`spatial_dims` must be None, 1, 2 or 3, got {spatial_dims!r}")
    return spatial_dims  # type: ignore[no-any-return]


def check_spatial_size(spatial_size: Any) -> tuple[int, ...]:
    size = tuple(spatial_size)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise TypeError(f"`spatial_size` must be 1 to 3 positive integers, got {size!r}")
    if not 1 <= len(size) <= 3 or min(size) < 1:
        raise ValueError(f"`spatial_size` must be 1 to 3 positive integers, got {size!r}")
    return size


def check_input(x: Any, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"`{name}` must be a floating-point tensor (mixing integer images would truncate"
            f" them), got dtype {x.dtype}; convert first, e.g. with"
            " `torchvision.transforms.v2.ToDtype(torch.float32, scale=True)`"
        )
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"`{name}` must have a non-empty batch dimension, got shape {_shape(x)}")
    return x


def resolve_spatial_dims(x: Tensor, spatial_dims: int | None, method: str, name: str = "x") -> int:
    """The number of trailing spatial dims of ``x`` for a mask-based method."""
    if spatial_dims is None:
        if x.ndim - 2 not in SPATIAL_DIMS:
            raise ValueError(
                f"`{name}` must have shape (batch, channels, *spatial) with 1 to 3 spatial dims"
                f" for {method}, got shape {_shape(x)}; pass `spatial_dims` for other layouts"
            )
        return x.ndim - 2
    check_spatial_dims(spatial_dims)
    if x.ndim < spatial_dims + 1:
        raise ValueError(
            f"`{name}` must have at least {spatial_dims + 1} dims (batch, ..., {spatial_dims}"
            f" spatial) for {spatial_dims}-D {method}, got shape {_shape(x)}"
        )
    return spatial_dims


def check_lam(lam: Any, batch_size: int, device: torch.device, name: str = "lam") -> float | Tensor:
    """A Python lam must lie in [0, 1]; a tensor lam must be float of shape ``(batch,)``.

    The values of a tensor are not checked: that would synchronise with the device.
    """
    if isinstance(lam, Tensor):
        if not lam.is_floating_point() or lam.shape != (batch_size,):
            error = ValueError if lam.is_floating_point() else TypeError
            raise error(
                f"`{name}` must be a float or a floating-point tensor of shape ({batch_size},),"
                f" got a {lam.dtype} tensor of shape {_shape(lam)}"
            )
        if lam.device != device:
            raise ValueError(f"`{name}` must be on {device}, got a tensor on {lam.device}")
        return lam
    return check_lam_value(lam, name)


def check_lam_value(lam: object, name: str = "lam") -> float:
    lam = check_real(lam, name)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1], got {lam}")
    return lam


def check_perm(perm: Any, batch_size: int, device: torch.device, name: str = "perm") -> Tensor:
    if not isinstance(perm, Tensor) or perm.dtype != torch.long or perm.shape != (batch_size,):
        got = (
            f"a {perm.dtype} tensor of shape {_shape(perm)}"
            if isinstance(perm, Tensor)
            else type(perm).__name__
        )
        wrong_type = not isinstance(perm, Tensor) or perm.dtype != torch.long
        raise (TypeError if wrong_type else ValueError)(
            f"`{name}` must be a torch.long tensor of shape ({batch_size},), got {got}"
        )
    if perm.device != device:
        raise ValueError(f"`{name}` must be on {device}, got a tensor on {perm.device}")
    return perm


def check_generator(generator: Any, device: torch.device) -> torch.Generator | None:
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(
            f"`generator` must be on the device of the data ({device.type}), got a generator"
            f" on {generator.device.type}"
        )
    return generator


def check_targets(y: Any, batch_size: int | None, num_classes: int | None, name: str = "y") -> int:
    """Checks shape and dtype of integer labels ``(batch,)`` or float targets ``(batch, C)``.

    Returns the number of classes (from the targets when they are float). The range of
    integer labels is checked by :func:`check_label_range`, which synchronises.
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(y).__name__}")
    if batch_size is None:
        batch_size = y.shape[0] if y.ndim else -1
    if y.is_floating_point():
        if y.ndim != 2 or y.shape[0] != batch_size:
            raise ValueError(
                f"`{name}` must be float targets of shape (batch={batch_size}, num_classes)"
                f" or integer labels of shape ({batch_size},), got float shape {_shape(y)}"
            )
        if num_classes is not None and y.shape[1] != num_classes:
            raise ValueError(
                f"`{name}` must have `num_classes`={num_classes} columns, got shape {_shape(y)}"
            )
        return y.shape[1]
    if y.dtype in (torch.bool, torch.uint8) or y.is_complex():
        raise TypeError(
            f"`{name}` must hold integer labels (int64) or float targets, got dtype {y.dtype}"
        )
    if y.ndim != 1 or y.shape[0] != batch_size:
        raise ValueError(
            f"`{name}` must be integer labels of shape ({batch_size},) (one per sample) or"
            f" float targets of shape ({batch_size}, num_classes), got shape {_shape(y)}"
        )
    if num_classes is None:
        raise ValueError(
            f"`num_classes` is needed to turn the integer labels `{name}` into soft targets,"
            " got None"
        )
    return num_classes


def check_inplace(x: Tensor, inplace: Any, name: str = "x") -> bool:
    """``inplace`` must be a bool; with ``True``, ``x`` must be a tensor of its own."""
    if not isinstance(inplace, bool):
        raise TypeError(f"`inplace` must be a bool, got {inplace!r}")
    if inplace and is_view(x):
        raise ValueError(
            f"`inplace=True` would write into `{name}`, a view of another tensor (shape"
            f" {_shape(view_base(x))}), and so change that tensor too, e.g. the images a Dataset"
            " stores; pass `inplace=False`, or give the batch a tensor of its own (torch's"
            " default collate_fn does)"
        )
    if inplace and x.requires_grad:
        raise ValueError(
            f"`inplace=True` cannot write into `{name}`, which requires grad; pass `inplace=False`"
        )
    return inplace


def check_label_range(y: Tensor, num_classes: int, name: str = "y") -> None:
    """Raises if integer labels fall outside ``[0, num_classes)``. Synchronises on accelerators."""
    if y.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(y))
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"`{name}` must hold class indices in [0, {num_classes}), got values in [{low}, {high}]"
        )


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)
