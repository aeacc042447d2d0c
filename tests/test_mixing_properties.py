"""Property-based tests of the functional mixing core over shapes, dtypes, batch sizes and lams.

Each property is checked against an independent formula: a mixed pixel is
``m * x_i + (1 - m) * x_perm(i)`` (in float64, within the dtype's rounding), weights lie in
[0, 1] and are the share of each sample that stayed its own, target rows are distributions, and
shape, dtype and memory format are kept. ``test_functional_mixing.py`` holds the example-based
tests; these add what examples do not reach: batches of one, lam at exactly 0 and 1, every
dtype, channels-last, in place.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_recipes.functional import (
    blend,
    cutmix,
    fmix,
    mix_targets,
    mixup,
    sample_lam,
    sample_partners,
    soft_targets,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# Absolute tolerance of one mixed pixel of values in [1, 10): the rounding of the result.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}
LAMS = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))

# Few examples each: every one is a handful of tiny tensor ops, and the file runs in seconds.
FAST = settings(max_examples=60, deadline=None, derandomize=True)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(batch: int, channels: int, size: list[int], dtype: torch.dtype, seed: int) -> Any:
    """Sample ``i`` holds ``i + 1`` plus noise below 0.01: rounding tells whose a pixel is."""
    base = torch.arange(1, batch + 1, dtype=torch.float64).view(-1, *([1] * (len(size) + 1)))
    noise = torch.rand(batch, channels, *size, generator=_gen(seed), dtype=torch.float64)
    return (base + 0.01 * noise).to(dtype)


def _reference(x: torch.Tensor, m: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``m * x_i + (1 - m) * x_perm(i)`` in float64, ``m`` broadcastable to ``x``."""
    x64, m64 = x.double(), m.double()
    return m64 * x64 + (1 - m64) * x64[perm]


def _exact(lam: float) -> torch.Tensor:
    return torch.tensor(lam, dtype=torch.float64)


@FAST
@given(
    data=st.data(),
    batch=st.integers(1, 6),
    channels=st.integers(1, 3),
    size=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    dtype=st.sampled_from(DTYPES),
    method=st.sampled_from(["mixup", "cutmix", "fmix", "blend"]),
    per_sample=st.booleans(),
    channels_last=st.booleans(),
    inplace=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_mixed_pixels_weights_and_layout(
    data: st.DataObject,
    batch: int,
    channels: int,
    size: list[int],
    dtype: torch.dtype,
    method: str,
    per_sample: bool,
    channels_last: bool,
    inplace: bool,
    seed: int,
) -> None:
    x = _batch(batch, channels, size, dtype, seed)
    layout = torch.channels_last if channels_last and x.ndim == 4 else torch.contiguous_format
    x = x.contiguous(memory_format=layout)
    original = x.clone()
    perm = sample_partners(batch, generator=_gen(seed + 1))
    if per_sample:
        lam: float | torch.Tensor = torch.tensor(
            data.draw(st.lists(LAMS, min_size=batch, max_size=batch)), dtype=torch.float32
        )
    else:
        lam = data.draw(LAMS)

    if method == "blend":
        weight = lam.view(-1, *([1] * (x.ndim - 1))) if isinstance(lam, torch.Tensor) else lam
        mixed = blend(x, perm, weight, inplace=inplace)
        applied = weight.to(dtype) if isinstance(weight, torch.Tensor) else _exact(weight)
        weights = None
    elif method == "mixup":
        mixed, weights = mixup(x, lam, perm, inplace=inplace)
        # A Python lam is applied as it is; a tensor lam in x.dtype, as the weights say.
        per_sample_weights = weights.view(-1, *([1] * (x.ndim - 1)))
        applied = _exact(lam) if isinstance(lam, float) else per_sample_weights
    else:
        fn = cutmix if method == "cutmix" else fmix
        mixed, weights = fn(x, lam, perm, generator=_gen(seed + 2), inplace=inplace)
        # Binary masks: each pixel is its own sample's or its partner's, shared by channels.
        applied = (mixed.round() == original.round()).all(dim=1, keepdim=True).to(torch.float64)

    assert mixed.shape == x.shape and mixed.dtype == dtype
    assert mixed.is_contiguous(memory_format=layout)
    assert (mixed is x) == inplace
    expected = _reference(original, applied, perm)
    torch.testing.assert_close(mixed.double(), expected, rtol=0, atol=TOLERANCE[dtype])
    if weights is None:
        return
    assert weights.shape == (batch,) and weights.dtype == torch.float32
    assert ((weights >= 0) & (weights <= 1)).all()
    if batch > 1 and method != "mixup":
        # The weight of a sample is the share of its pixels that stayed its own.
        torch.testing.assert_close(weights.double(), applied.flatten(1).mean(1))
    if batch == 1 or (not per_sample and lam == 1.0):
        assert torch.equal(mixed, original)  # a sample alone, or lam 1: nothing changes
    if method == "mixup" and not per_sample and lam == 0.0:
        assert torch.equal(mixed, original[perm])  # lerp is exact at 0


@FAST
@given(
    data=st.data(),
    batch=st.integers(1, 8),
    num_classes=st.integers(1, 12),
    label_smoothing=st.sampled_from([0.0, 0.1, 0.5, 0.99]),
    soft=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_mixed_targets_are_distributions(
    data: st.DataObject,
    batch: int,
    num_classes: int,
    label_smoothing: float,
    soft: bool,
    seed: int,
) -> None:
    g = _gen(seed)
    if soft:
        y = torch.rand(batch, num_classes, generator=g, dtype=torch.float64).softmax(1)
        y = y.to(torch.float32)
        t = y.double()
    else:
        y = torch.randint(0, num_classes, (batch,), generator=g)
        t = torch.nn.functional.one_hot(y, num_classes).double()
    t = t * (1 - label_smoothing) + label_smoothing / num_classes
    weights = torch.tensor(data.draw(st.lists(LAMS, min_size=batch, max_size=batch)))
    perm = torch.randperm(batch, generator=g)  # any permutation, fixed points included
    targets = mix_targets(
        y, weights, perm, num_classes=num_classes, label_smoothing=label_smoothing
    )
    assert targets.shape == (batch, num_classes) and targets.dtype == torch.float32
    w = weights.double().unsqueeze(1)
    torch.testing.assert_close(targets.double(), w * t + (1 - w) * t[perm], rtol=0, atol=1e-6)
    torch.testing.assert_close(targets.sum(1), torch.ones(batch), rtol=0, atol=1e-5)
    assert ((targets >= 0) & (targets <= 1 + 1e-6)).all()
    smoothed = soft_targets(y, num_classes, label_smoothing)
    torch.testing.assert_close(smoothed.double(), t, rtol=0, atol=1e-6)


@FAST
@given(
    alpha=st.floats(0.01, 100.0),
    batch=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_sampled_lams_lie_in_the_unit_interval(alpha: float, batch: int, seed: int) -> None:
    lam = sample_lam(alpha, (batch,), generator=_gen(seed))
    assert lam.shape == (batch,) and lam.dtype == torch.float32
    assert lam.isfinite().all() and ((lam >= 0) & (lam <= 1)).all()
