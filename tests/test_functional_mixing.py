"""The functional mixing core against independent formulas (loops, slices, numpy FFTs)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats  # type: ignore[import-untyped]

from lightning_recipes.functional import (
    blend,
    box_mask,
    cutmix,
    fmix,
    mix_targets,
    mixup,
    sample_boxes,
    sample_fmix_mask,
    sample_lam,
    sample_partners,
    soft_targets,
)
from lightning_recipes.functional.blend import _blend_finite


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_mix(x: torch.Tensor, m: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``m * x_i + (1 - m) * x_perm(i)``, written out sample by sample in float64."""
    out = torch.empty_like(x, dtype=torch.float64)
    for i in range(x.shape[0]):
        out[i] = m[i].double() * x[i].double() + (1 - m[i].double()) * x[perm[i]].double()
    return out


def _distinct_batch(batch: int, *spatial: int, channels: int = 2) -> torch.Tensor:
    """Sample ``i`` is ``i + 1`` plus small noise: every value tells which sample it is from."""
    base = torch.arange(1, batch + 1, dtype=torch.float32).view(-1, *([1] * (len(spatial) + 1)))
    return base + 0.01 * torch.rand(batch, channels, *spatial, generator=_gen(1))


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("batch", [2, 3, 5, 8, 9, 64])
def test_partners_are_a_permutation_without_fixed_points(batch: int) -> None:
    for seed in range(5):
        perm = sample_partners(batch, generator=_gen(seed))
        assert sorted(perm.tolist()) == list(range(batch))
        assert (perm != torch.arange(batch)).all()


def test_partners_of_a_single_sample() -> None:
    assert sample_partners(1, generator=_gen()).tolist() == [0]


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_sample_lam_follows_beta(alpha: float) -> None:
    lam = sample_lam(alpha, (4000,), generator=_gen(3)).double().numpy()
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).pvalue > 0.01
    assert sample_lam(alpha, generator=_gen()).shape == ()


# --------------------------------------------------------------------------- blend / mixup


def test_blend_is_exact_at_zero_and_one() -> None:
    x = torch.randn(4, 3, 5, 5, generator=_gen())
    perm = torch.tensor([1, 2, 3, 0])
    mask = (torch.rand(4, 1, 5, 5, generator=_gen(2)) > 0.5).float()
    mixed = blend(x, perm, mask)
    assert torch.equal(mixed, torch.where(mask.bool(), x, x[perm]))


def test_blend_copies_values_at_zero_and_one_but_not_the_sign_of_every_zero() -> None:
    # What the docstring says: a binary weight gives the values of `x` or `x[perm]`, but a
    # -0.0 of `x` taken with weight 1 comes out +0.0 where the partner is positive
    # (`x - (x - partner) * 0` is -0.0 - (-0.0)), and so does a -0.0 partner taken with
    # weight 0 (`partner + 0 * (x - partner)` is -0.0 + 0.0).
    x = torch.tensor([[-0.0, -0.0, 2.0], [3.0, 1.0, -0.0]])
    perm = torch.tensor([1, 0])
    mixed = blend(x, perm, torch.tensor([[1.0], [0.0]]))
    assert torch.equal(mixed, torch.stack([x[0], x[0]]))  # equal values (-0.0 == 0.0)
    assert x[0].signbit().tolist() == [True, True, False]
    assert mixed.signbit().tolist() == [[False, False, False], [False, False, False]]


@pytest.mark.parametrize("per_sample", [False, True])
def test_mixup_pixels_and_weights(per_sample: bool) -> None:
    x = torch.randn(7, 3, 6, 5, generator=_gen())
    perm = sample_partners(7, generator=_gen(1))
    lam: float | torch.Tensor = sample_lam(1.0, (7,), generator=_gen(2)) if per_sample else 0.3
    mixed, weights = mixup(x, lam, perm)
    expected_lam = lam if isinstance(lam, torch.Tensor) else torch.full((7,), 0.3)
    torch.testing.assert_close(weights, expected_lam)
    torch.testing.assert_close(mixed.double(), _reference_mix(x, expected_lam, perm))
    assert mixed.shape == x.shape and weights.dtype == torch.float32


def test_mixup_does_not_modify_its_input() -> None:
    x = torch.randn(4, 3, 2, 2, generator=_gen())
    before = x.clone()
    mixup(x, 0.5, torch.tensor([1, 0, 3, 2]))
    assert torch.equal(x, before)


# --------------------------------------------------------------------------- cutmix


def _reference_box_mask(boxes: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """The mask by slicing, sample by sample."""
    masks = torch.ones(boxes.shape[0], *size)
    for i, box in enumerate(boxes.tolist()):
        index = tuple(slice(low, high) for low, high in box)
        masks[i][index] = 0
    return masks


@pytest.mark.parametrize("size", [(16, 16), (7, 13), (11,), (5, 6, 7)])
def test_boxes_and_masks_against_slicing(size: tuple[int, ...]) -> None:
    lam = sample_lam(1.0, (50,), generator=_gen(4))
    boxes = sample_boxes(size, lam, generator=_gen(5))
    assert boxes.shape == (50, len(size), 2)
    assert torch.equal(box_mask(boxes, size), _reference_box_mask(boxes, size))
    low, high = boxes[..., 0], boxes[..., 1]
    bound = torch.tensor(size)
    assert ((low >= 0) & (low <= high) & (high <= bound)).all()
    # Boxes that were not clipped have sides floor(size * (1 - lam) ** (1 / d)).
    cut = ((1 - lam).unsqueeze(1).pow(1 / len(size)) * bound).floor().long()
    touches_border = (low == 0) | (high == bound)
    assert ((high - low == cut) | touches_border).all()
    assert (high - low <= cut).all()


@pytest.mark.parametrize("size", [(32, 32), (7, 13), (11,), (5, 6, 7)])
def test_one_box_for_a_float_lam_follows_the_same_rule(size: tuple[int, ...]) -> None:
    for seed in range(20):
        lam = float(sample_lam(1.0, generator=_gen(seed + 100)))
        one = sample_boxes(size, lam, generator=_gen(seed))
        batched = sample_boxes(size, torch.tensor([lam]), generator=_gen(seed))
        assert torch.equal(one, batched[0])


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("shape", [(9, 2, 12, 10), (5, 1, 17), (4, 2, 5, 6, 7)])
def test_cutmix_pixels_and_true_area(per_sample: bool, shape: tuple[int, ...]) -> None:
    batch, size = shape[0], shape[2:]
    x = _distinct_batch(batch, *size, channels=shape[1])
    perm = sample_partners(batch, generator=_gen(1))
    lam = sample_lam(1.0, (batch,), generator=_gen(2)) if per_sample else 0.6
    mixed, weights = cutmix(x, lam, perm, generator=_gen(3))

    boxes = sample_boxes(size, lam, generator=_gen(3))  # the same draws as inside cutmix
    boxes = boxes if per_sample else boxes.expand(batch, *boxes.shape)
    m = _reference_box_mask(boxes, size).unsqueeze(1)
    assert torch.equal(mixed.double(), _reference_mix(x, m, perm))
    # The weights are the share of each sample's values that are still its own.
    own = (mixed.round() == x.round()).flatten(1).float().mean(1)
    torch.testing.assert_close(weights, own)


def test_cutmix_clipped_box_weight_and_uncorrected_lam() -> None:
    x = _distinct_batch(64, 8, 8)
    perm = sample_partners(64, generator=_gen())
    lam = torch.full((64,), 0.5)
    _, corrected = cutmix(x, lam, perm, generator=_gen(7))
    # A box of 5x5 (floor(8 * sqrt(0.5))) clipped by the border pastes less than 25 pixels.
    assert (corrected > 1 - 25 / 64 + 1e-6).any()
    assert (corrected >= 1 - 25 / 64 - 1e-6).all()
    # Boxes are clipped at both ends (not shifted inside): sides of 5 centred on 0..7.
    boxes = sample_boxes((8, 8), lam, generator=_gen(7))
    side = boxes[..., 1] - boxes[..., 0]
    assert ((boxes[..., 0] == 0) & (side < 5)).any()
    assert ((boxes[..., 1] == 8) & (side < 5)).any()
    assert set(side.flatten().tolist()) == {3, 4, 5}
    _, uncorrected = cutmix(x, lam, perm, generator=_gen(7), correct_lam=False)
    assert torch.equal(uncorrected, lam)


# --------------------------------------------------------------------------- fmix

SAMPLERS = ["fast", "exact"]  # the default first


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("size", [(32, 32), (31, 17), (101,), (64,), (9, 10, 11)])
def test_fmix_masks_are_binary_with_exact_area(size: tuple[int, ...], sampler: str) -> None:
    # Every size here is within the fast sampler's lattice, which then ranks every element.
    lam = torch.cat([torch.tensor([0.0, 1.0, 0.5]), sample_lam(1.0, (13,), generator=_gen(6))])
    masks = sample_fmix_mask(size, lam, generator=_gen(7), mask_sampler=sampler)
    n = math.prod(size)
    assert masks.shape == (16, *size)
    assert ((masks == 0) | (masks == 1)).all()
    expected = torch.tensor([round(v * n) for v in lam.tolist()], dtype=torch.float32)
    assert torch.equal(masks.flatten(1).sum(1), expected)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("size", [(8, 8), (32, 32), (64,), (300,)])
def test_no_lam_gives_no_masks(size: tuple[int, ...], sampler: str) -> None:
    """An empty `lam` (no sample) gives masks of shape (0, *size), of the dtype asked for,
    for every kernel: the small fields' product, the FFT, the fast sampler's lattice."""
    for shape in [(0,), (2, 0)]:
        masks = sample_fmix_mask(size, torch.zeros(shape), mask_sampler=sampler, dtype=torch.half)
        assert masks.shape == (*shape, *size)
        assert masks.dtype == torch.half


def _ranker(name: str) -> Callable[..., torch.Tensor]:
    """A ranking of FMix's binarisation by name: ``top_k_mask`` chooses by size and device;
    the others are its kernels, called directly (``argsort`` runs on accelerators, so here
    only when called by name)."""
    from lightning_recipes.functional import _fmix_binarise

    return cast("Callable[..., torch.Tensor]", getattr(_fmix_binarise, name))


@pytest.mark.parametrize("copies", [1, 20])
@pytest.mark.parametrize(
    "ranker",
    ["top_k_mask", "argsort_top_k_mask", "threshold_top_k_mask", "histogram_top_k_mask"],
)
def test_top_k_selection_is_exact_with_ties(copies: int, ranker: str) -> None:
    """The binarisation takes exactly `count` values per row, never a lower one before a
    higher one, also when many values are equal (constant rows, few levels); for a small
    batch (a sort) and for one of more than SORTED_ELEMENTS values (the histogram)."""
    from lightning_recipes.functional._fmix_binarise import SORTED_ELEMENTS, top_k_mask

    values = torch.cat([torch.randint(0, 3, (6, 40), generator=_gen()).float(), torch.zeros(2, 40)])
    count = torch.tensor([0, 1, 13, 20, 39, 40, 7, 33])
    values, count = values.repeat(copies, 1), count.repeat(copies)
    assert (values.numel() <= SORTED_ELEMENTS) == (copies == 1)
    masks = [(_ranker(ranker)(values, count), count)]
    if ranker == "top_k_mask":  # one count for all rows: topk
        masks.append((top_k_mask(values[:1], 17), torch.tensor([17])))
    for mask, counts in masks:
        rows = mask.shape[0]
        assert torch.equal(mask.sum(1), counts)
        taken = torch.where(mask, values[:rows], float("inf")).amin(1)
        left = torch.where(mask, float("-inf"), values[:rows]).amax(1)
        assert (taken >= left).all()


@pytest.mark.parametrize("shape", [(1, 7), (64, 64), (3, 128), (16, 256)])
@pytest.mark.parametrize("ranker", ["top_k_mask", "argsort_top_k_mask", "threshold_top_k_mask"])
def test_small_batches_take_exactly_the_highest_values(shape: tuple[int, int], ranker: str) -> None:
    """Up to SORTED_ELEMENTS values in all (64 masks of 8x8 among them), each row keeps
    exactly its `count` highest values, as numpy's sort ranks them, counts of 0 and of the
    whole row included; in dtype."""
    from lightning_recipes.functional._fmix_binarise import SORTED_ELEMENTS

    assert math.prod(shape) <= SORTED_ELEMENTS
    values = torch.randn(shape, generator=_gen(3))
    count = torch.randint(0, shape[1] + 1, (shape[0],), generator=_gen(4))
    count[-1], count[0] = 0, shape[1]
    rank = np.argsort(np.argsort(-values.numpy(), axis=1, kind="stable"), axis=1)
    expected = torch.from_numpy(rank < count.numpy()[:, None])
    rank_by = _ranker(ranker)
    assert torch.equal(rank_by(values, count), expected)
    for dtype in (torch.float16, torch.float32):
        mask = rank_by(values, count, dtype)
        assert mask.dtype == dtype and torch.equal(mask, expected.to(dtype))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_fmix_masks_are_low_frequency(sampler: str) -> None:
    """Most of the spectral power of a mask lies below 1/8 cycles per pixel, unlike a random
    binary mask of the same area, whose power is spread over all frequencies."""
    size = (64, 64)
    lam = torch.full((32,), 0.5)
    masks = sample_fmix_mask(size, lam, generator=_gen(8), mask_sampler=sampler)
    masks = masks.double().numpy()
    white = (np.random.default_rng(0).random((32, *size)) < 0.5).astype(np.float64)

    def low_power_share(m: np.ndarray) -> float:
        power = np.abs(np.fft.fft2(m - m.mean(axis=(1, 2), keepdims=True))) ** 2
        fy, fx = np.meshgrid(np.fft.fftfreq(size[0]), np.fft.fftfreq(size[1]), indexing="ij")
        low = np.sqrt(fx**2 + fy**2) < 1 / 8
        return float(power[:, low].sum() / power.sum())

    assert low_power_share(masks) > 0.8
    assert low_power_share(white) < 0.1


@pytest.mark.parametrize("size", [(12, 9), (15,), (4, 5, 7), (8, 8), (4, 4, 4), (16, 16)])
def test_fmix_grey_image_is_the_papers_inverse_fft(size: tuple[int, ...]) -> None:
    """The image before binarisation is numpy's irfftn of the same complex Gaussian spectrum
    scaled by 1 / max(f, 1 / max(size)) ** d on the rfft frequency grid (up to 128
    elements drawn on the CPU by one matrix product, larger ones by torch's FFT)."""
    from lightning_recipes.functional.fmix import _low_frequency_noise

    grey = _low_frequency_noise(3, size, 2.5, _gen(11), torch.device("cpu"))
    rfft_shape = (*size[:-1], size[-1] // 2 + 1)
    spectrum = torch.randn((3, *rfft_shape), dtype=torch.complex64, generator=_gen(11)).numpy()
    grids = np.meshgrid(
        *[np.fft.fftfreq(s) for s in size[:-1]], np.fft.rfftfreq(size[-1]), indexing="ij"
    )
    freqs = np.sqrt(sum(g**2 for g in grids))
    scale = 1 / np.maximum(freqs, 1 / max(size)) ** 2.5
    axes = tuple(range(1, len(size) + 1))
    expected = np.fft.irfftn(spectrum * scale, s=size, axes=axes).reshape(3, -1)
    np.testing.assert_allclose(grey.numpy(), expected, rtol=1e-4, atol=1e-4 * abs(expected).max())


@pytest.mark.parametrize("size", [(8, 8), (7, 7), (12, 9), (6, 10), (16,), (4, 4, 4), (3, 5, 6)])
def test_the_inverse_matrix_is_the_scaled_inverse_real_fft(size: tuple[int, ...]) -> None:
    """The product with `_inverse_matrix` is numpy's irfftn of the scaled spectrum in float64,
    for any complex spectrum: also one whose imaginary parts at frequency 0 and at the Nyquist
    frequency of an even last axis (which irfftn ignores) are not 0; to float32's rounding."""
    from lightning_recipes.functional.fmix import _DENSE_ELEMENTS, _inverse_matrix

    assert math.prod(size) <= _DENSE_ELEMENTS
    half = (*size[:-1], size[-1] // 2 + 1)
    spectrum = torch.randn((5, *half), dtype=torch.complex64, generator=_gen(12))
    assert (spectrum.imag.flatten(1)[:, 0] != 0).all()
    grids = np.meshgrid(
        *[np.fft.fftfreq(s) for s in size[:-1]], np.fft.rfftfreq(size[-1]), indexing="ij"
    )
    scale = 1 / np.maximum(np.sqrt(sum(g**2 for g in grids)), 1 / max(size)) ** 2.0
    axes = tuple(range(1, len(size) + 1))
    expected = np.fft.irfftn(spectrum.numpy().astype(np.complex128) * scale, s=size, axes=axes)
    got = torch.view_as_real(spectrum).reshape(5, -1) @ _inverse_matrix(size, 2.0)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(
        got.double().numpy(), expected.reshape(5, -1), rtol=0, atol=1e-6 * abs(expected).max()
    )


@pytest.mark.parametrize("size", [(8, 8), (9,), (4, 4, 4), (7, 11), (6, 10)])
def test_small_fields_draw_the_complex_spectra_the_fft_path_draws(size: tuple[int, ...]) -> None:
    """On the CPU, small fields draw their spectra as real normals of variance 1/2: the bits
    of torch's complex64 `randn` from the same generator (what the FFT path and the paper
    draw), taken through the inverse matrix."""
    from lightning_recipes.functional.fmix import (
        _DENSE_ELEMENTS,
        _inverse_matrix,
        _low_frequency_noise,
    )

    assert math.prod(size) <= _DENSE_ELEMENTS
    half = (*size[:-1], size[-1] // 2 + 1)
    spectrum = torch.randn((6, *half), dtype=torch.complex64, generator=_gen(30))
    expected = torch.view_as_real(spectrum).reshape(6, -1) @ _inverse_matrix(size, 3.0)
    got = _low_frequency_noise(6, size, 3.0, _gen(30), torch.device("cpu"))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("size", [(8, 8), (9,), (4, 4, 4), (7, 11)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_small_inputs_rank_their_masks_as_torchs_argsort_does(
    size: tuple[int, ...], dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-sample masks of small CPU inputs (the fields by a product, the ranking by numpy's
    sort) are the masks the same path draws from the same generator with torch's argsort,
    bit for bit, and their weights are round(lam * N) / N in float32; lam of 0 and 1
    included."""
    from lightning_recipes.functional import _fmix_binarise
    from lightning_recipes.functional.fmix import _DENSE_ELEMENTS, _fmix_mask

    n = math.prod(size)
    batch = _fmix_binarise.SORTED_ELEMENTS // 80
    assert n <= _DENSE_ELEMENTS and batch * n <= _fmix_binarise.SORTED_ELEMENTS  # both kernels
    lam = torch.rand(batch, generator=_gen(20))
    lam[:4] = torch.tensor([0.0, 1.0, 0.4 / n, 1 - 0.4 / n])
    x = torch.zeros(batch, 2, *size, dtype=dtype)
    options: dict[str, Any] = {"decay_power": 3.0, "max_soft": 0.0, "spatial_dims": None}
    mask, weights = _fmix_mask(x, lam, generator=_gen(21), mask_sampler="exact", **options)
    monkeypatch.setattr(_fmix_binarise, "_NUMPY_DTYPES", {})  # rank by torch's argsort
    expected = sample_fmix_mask(size, lam, generator=_gen(21), dtype=dtype, mask_sampler="exact")
    assert mask.dtype == dtype and mask.shape == (batch, 1, *size)
    assert torch.equal(mask.squeeze(1), expected)
    counts = np.rint(lam.numpy() * np.float32(n)).astype(np.float32)
    assert weights.dtype == torch.float32
    assert torch.equal(weights, torch.from_numpy(counts / np.float32(n)))
    assert counts[0] == 0 and counts[1] == n and counts[2] == 0 and counts[3] == n


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_fmix_soft_masks_keep_the_area(sampler: str) -> None:
    lam = torch.tensor([0.3, 0.5, 0.9, 0.02])
    soft = {"max_soft": 0.1, "mask_sampler": sampler}
    masks = sample_fmix_mask((20, 20), lam, generator=_gen(9), **soft)
    assert ((masks >= 0) & (masks <= 1)).all()
    assert ((masks > 0) & (masks < 1)).any()
    expected = torch.tensor([120.0, 200.0, 360.0, 8.0]) / 400
    torch.testing.assert_close(masks.flatten(1).mean(1), expected)
    # fmix applies the same soft masks and weights the targets by their means.
    x = _distinct_batch(4, 20, 20)
    perm = torch.tensor([1, 2, 3, 0])
    mixed, weights = fmix(x, lam, perm, generator=_gen(9), **soft)
    torch.testing.assert_close(mixed.double(), _reference_mix(x, masks.unsqueeze(1), perm))
    torch.testing.assert_close(weights, expected)
    # One soft mask for the batch: every sample gets its mean as weight.
    mask = sample_fmix_mask((20, 20), 0.3, generator=_gen(9), **soft)
    mixed, weights = fmix(x, 0.3, perm, generator=_gen(9), **soft)
    torch.testing.assert_close(mixed.double(), _reference_mix(x, mask.expand(4, 1, 20, 20), perm))
    torch.testing.assert_close(weights, torch.full((4,), 0.3))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("shape", [(6, 3, 15, 9), (5, 2, 33), (3, 1, 5, 6, 7)])
def test_fmix_pixels_and_weights(per_sample: bool, shape: tuple[int, ...], sampler: str) -> None:
    batch, size = shape[0], shape[2:]
    x = _distinct_batch(batch, *size, channels=shape[1])
    perm = sample_partners(batch, generator=_gen(1))
    lam = sample_lam(1.0, (batch,), generator=_gen(2)) if per_sample else 0.4
    mixed, weights = fmix(x, lam, perm, generator=_gen(3), mask_sampler=sampler)
    masks = sample_fmix_mask(size, lam, generator=_gen(3), mask_sampler=sampler)
    masks = masks if per_sample else masks.expand(batch, *size)
    assert torch.equal(mixed.double(), _reference_mix(x, masks.unsqueeze(1), perm))
    own = (mixed.round() == x.round()).flatten(1).float().mean(1)
    torch.testing.assert_close(weights, own)
    n = math.prod(size)
    lam_t = lam if isinstance(lam, torch.Tensor) else torch.full((batch,), 0.4)
    torch.testing.assert_close(weights, (lam_t * n).round() / n)


# --------------------------------------------------------------------------- targets


def test_mixed_integer_targets_sum_to_one_with_the_weights() -> None:
    y = torch.tensor([0, 1, 2, 2, 4])
    perm = torch.tensor([1, 2, 3, 4, 0])
    weights = torch.tensor([0.7, 0.2, 1.0, 0.5, 0.0])
    targets = mix_targets(y, weights, perm, num_classes=5)
    expected = torch.zeros(5, 5)
    for i in range(5):
        expected[i, y[i]] += weights[i]
        expected[i, y[perm[i]]] += 1 - weights[i]
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(targets.sum(1), torch.ones(5))
    assert targets.dtype == torch.float32


def test_float_targets_are_mixed_as_they_are() -> None:
    multi_hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float16)
    targets = mix_targets(multi_hot, torch.tensor([0.25, 0.5]), torch.tensor([1, 0]))
    expected = torch.tensor([[0.25, 0.75, 0.25], [0.5, 0.5, 0.5]])
    torch.testing.assert_close(targets, expected)
    assert targets.dtype == torch.float32


def test_label_smoothing_is_off_by_default_and_follows_cross_entropy() -> None:
    y = torch.tensor([1, 0])
    assert torch.equal(soft_targets(y, 3), torch.tensor([[0.0, 1, 0], [1, 0, 0]]))
    smoothed = soft_targets(y, 3, label_smoothing=0.3)
    logits = torch.randn(2, 3, generator=_gen())
    torch.testing.assert_close(
        torch.nn.functional.cross_entropy(logits, smoothed),
        torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.3),
    )


@pytest.mark.parametrize("classes", [2, 10, 1024, 1025])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16])
def test_soft_targets_are_the_one_hot_rows_bit_for_bit(
    classes: int, label_smoothing: float, dtype: torch.dtype
) -> None:
    # Up to 1024 classes the rows come from a cached table, above from a scatter: both give
    # the values of the definition, filled and scattered in float32.
    y = torch.randint(0, classes, (37,), generator=_gen()).to(dtype)
    y[0], y[1] = 0, classes - 1
    off = label_smoothing / classes
    expected = torch.full((37, classes), off).scatter_(
        1, y.long().unsqueeze(1), 1.0 - label_smoothing + off
    )
    targets = soft_targets(y, classes, label_smoothing)
    assert torch.equal(targets, expected) and targets.dtype == torch.float32
    assert torch.equal(targets.argmax(1), y.long())
    targets.add_(1.0)  # a new tensor each time: the cached table is not written
    assert torch.equal(soft_targets(y, classes, label_smoothing), expected)


@pytest.mark.parametrize("classes", [10, 1025])
@pytest.mark.parametrize("label", [-1, 10, 1025])
def test_labels_outside_the_classes_are_refused_with_the_range(classes: int, label: int) -> None:
    y = torch.tensor([0, label])
    if 0 <= label < classes:
        assert soft_targets(y, classes).shape == (2, classes)
        return
    with pytest.raises(ValueError, match=r"\[0, " + str(classes)):
        soft_targets(y, classes)


# --------------------------------------------------------------------------- dtype, layout


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("method", ["mixup", "cutmix", "fmix"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_dtype_and_channels_last_are_kept(
    dtype: torch.dtype, method: str, per_sample: bool
) -> None:
    x = torch.randn(6, 3, 10, 10, generator=_gen()).to(dtype, memory_format=torch.channels_last)
    perm = sample_partners(6, generator=_gen(1))
    lam = sample_lam(1.0, (6,), generator=_gen(2)) if per_sample else 0.35
    if method == "mixup":
        mixed, weights = mixup(x, lam, perm)
    elif method == "cutmix":
        mixed, weights = cutmix(x, lam, perm, generator=_gen(3))
    else:
        mixed, weights = fmix(x, lam, perm, generator=_gen(3))
    assert mixed.dtype == dtype and weights.dtype == torch.float32
    assert mixed.is_contiguous(memory_format=torch.channels_last)
    if method == "mixup" and isinstance(lam, torch.Tensor):
        # The weights are the lam actually applied, i.e. rounded to the input's dtype.
        assert torch.equal(weights, lam.to(dtype).float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["mixup", "cutmix", "fmix"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_inplace_writes_the_same_values_into_the_input(
    dtype: torch.dtype, method: str, per_sample: bool
) -> None:
    fn = {"mixup": mixup, "cutmix": cutmix, "fmix": fmix}[method]
    x = _distinct_batch(7, 11, 9, channels=3).to(dtype, memory_format=torch.channels_last)
    perm = sample_partners(7, generator=_gen(1))
    lam = sample_lam(1.0, (7,), generator=_gen(2)) if per_sample else 0.35
    kwargs: dict[str, Any] = {} if method == "mixup" else {"generator": _gen(3)}
    expected, expected_weights = fn(x, lam, perm, **kwargs)
    target = x.clone()
    kwargs = {} if method == "mixup" else {"generator": _gen(3)}  # the same draws again
    mixed, weights = fn(target, lam, perm, inplace=True, **kwargs)
    assert mixed is target and mixed.dtype == dtype
    assert mixed.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(mixed, expected) and torch.equal(weights, expected_weights)
    # The input was really overwritten: the mixed samples differ from the originals.
    assert not torch.equal(target, x)


def test_inplace_box_paste_reads_every_partner_before_writing() -> None:
    # With a cycle of partners, sample i takes the box of i + 1, whose own box is pasted
    # over too: reading after writing would move pixels two steps instead of one.
    x = _distinct_batch(5, 8, 8)
    perm = torch.tensor([1, 2, 3, 4, 0])
    target = x.clone()
    mixed, weights = cutmix(target, 0.5, perm, generator=_gen(4), inplace=True)
    m = (mixed == x).all(dim=1, keepdim=True).float()
    assert 0 < m.mean() < 1
    torch.testing.assert_close(mixed.double(), _reference_mix(x, m, perm))
    torch.testing.assert_close(weights, m.flatten(1).mean(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size", [(9, 13), (17,), (3, 5, 6)])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.8, 1.0])
@pytest.mark.parametrize("channels_last", [False, True])
def test_per_batch_cutmix_pastes_the_blend_of_its_box_mask_bit_for_bit(
    dtype: torch.dtype, size: tuple[int, ...], lam: float, channels_last: bool
) -> None:
    # Out of place, one box per batch is a clone with the partners' boxes gathered into it;
    # the independent formula is the mask of the same draw blended with the partners.
    if channels_last and len(size) != 2:
        pytest.skip("channels-last is a 4-D layout")
    x = torch.randn(6, 3, *size, generator=_gen(5)).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    perm = sample_partners(6, generator=_gen(6))
    mixed, weights = cutmix(x, lam, perm, generator=_gen(7))
    boxes = sample_boxes(size, lam, generator=_gen(7))
    mask = box_mask(boxes, size, dtype=dtype)
    expected = torch.lerp(x[perm], x, mask)
    assert torch.equal(mixed, expected) and mixed.dtype == dtype
    assert mixed.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(weights, box_mask(boxes, size).mean().expand(6))
    # The same values as in place, and `x` itself untouched.
    target = x.clone()
    inplace, inplace_weights = cutmix(target, lam, perm, generator=_gen(7), inplace=True)
    assert torch.equal(inplace, mixed) and torch.equal(inplace_weights, weights)


@pytest.mark.parametrize("inplace", [False, True])
def test_per_batch_cutmix_takes_a_partner_whose_box_is_finite(inplace: bool) -> None:
    # One box per batch reads only the partners' boxes: a NaN outside a partner's box does
    # not reach the sample that takes it, which is mixed; a NaN inside it leaves it unmixed.
    clean = _distinct_batch(4, 8, 8)
    boxes = sample_boxes((8, 8), 0.5, generator=_gen(8))
    inside = box_mask(boxes, (8, 8)) == 0
    assert inside.any() and (~inside).any()
    perm = torch.tensor([1, 2, 3, 0])
    expected, expected_weights = cutmix(clean.clone(), 0.5, perm, generator=_gen(8))
    for where, mixes in ((~inside, True), (inside, False)):
        x = clean.clone()
        x[1, 0][where] = float("nan")  # sample 0 takes image 1 as its partner
        mixed, weights = cutmix(x.clone(), 0.5, perm, generator=_gen(8), inplace=inplace)
        if mixes:
            assert torch.equal(mixed[0], expected[0]) and weights[0] == expected_weights[0] < 1
        else:
            assert torch.equal(mixed[0], x[0]) and weights[0] == 1.0
        assert torch.equal(mixed[2:], expected[2:])


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    batch=st.integers(2, 9),
    size=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    method=st.sampled_from(["mixup", "cutmix", "fmix"]),
    per_sample=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_every_method_mixes_pixels_and_targets_consistently(
    batch: int, size: list[int], method: str, per_sample: bool, seed: int
) -> None:
    x = _distinct_batch(batch, *size)
    perm = sample_partners(batch, generator=_gen(seed))
    lam = sample_lam(0.7, (batch,), generator=_gen(seed + 1))
    lam_arg = lam if per_sample else float(lam[0])
    if method == "mixup":
        mixed, weights = mixup(x, lam_arg, perm)
        m = weights.view(-1, 1, *([1] * len(size)))
    else:
        fn = cutmix if method == "cutmix" else fmix
        mixed, weights = fn(x, lam_arg, perm, generator=_gen(seed + 2))
        m = (mixed.round() == x.round()).all(dim=1, keepdim=True).float()
        torch.testing.assert_close(weights, m.flatten(1).mean(1))
    torch.testing.assert_close(mixed.double(), _reference_mix(x, m, perm))
    y = torch.randint(0, 4, (batch,), generator=_gen(seed))
    targets = mix_targets(y, weights, perm, num_classes=4)
    torch.testing.assert_close(targets.sum(1), torch.ones(batch))
    assert ((weights >= 0) & (weights <= 1)).all()


# --------------------------------------------------------------------------- non-finite inputs


def _mix_with(
    method: str, x: torch.Tensor, lam: float | torch.Tensor, perm: torch.Tensor, inplace: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if method == "mixup":
        return mixup(x, lam, perm, inplace=inplace)
    if method == "blend":
        weight = lam.view(-1, 1, 1, 1) if isinstance(lam, torch.Tensor) else lam
        return blend(x, perm, weight, inplace=inplace), None
    fn = cutmix if method == "cutmix" else fmix
    return fn(x, lam, perm, generator=_gen(3), inplace=inplace)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("method", ["mixup", "cutmix", "fmix", "blend"])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_non_finite_image_does_not_spread_to_the_sample_it_partners(
    bad: float, method: str, per_sample: bool, inplace: bool, dtype: torch.dtype
) -> None:
    clean = _distinct_batch(6, 8, 8).to(dtype)
    x = clean.clone()
    x[2, 0] = bad  # one channel of image 2: any box or mask region reaches it
    perm = torch.tensor([2, 0, 1, 4, 5, 3])  # sample 0 takes image 2 as its partner
    lam = sample_lam(1.0, (6,), generator=_gen(2)) if per_sample else 0.35
    expected, expected_weights = _mix_with(method, clean.clone(), lam, perm, inplace)
    mixed, weights = _mix_with(method, x.clone(), lam, perm, inplace)
    finite = mixed.flatten(1).isfinite().all(1)
    assert finite.tolist() == [True, True, False, True, True, True]
    # Sample 0 is left as it was and keeps its own target; the others mix as without NaN.
    assert torch.equal(mixed[0], x[0])
    others = [1, 3, 4, 5]
    assert torch.equal(mixed[others], expected[others])
    if weights is not None and expected_weights is not None:
        assert weights[0] == 1.0 and expected_weights[0] < 1.0
        assert torch.equal(weights[others], expected_weights[others])
        y = torch.tensor([0, 1, 2, 3, 0, 1])
        targets = mix_targets(y, weights, perm, num_classes=4)
        assert targets[0].tolist() == [1.0, 0.0, 0.0, 0.0]
        assert targets.isfinite().all()


def _reference_guarded_lerp(
    x: torch.Tensor, perm: torch.Tensor, weight: float | torch.Tensor
) -> torch.Tensor:
    """The guard written out sample by sample (a partner with any NaN or inf is replaced by
    the sample itself), then one float32 ``lerp`` of the whole batch, rounded once to
    ``x.dtype``; the weight is first rounded to ``x.dtype``, as documented."""
    finite = [bool(torch.isfinite(x[j]).all()) for j in range(x.shape[0])]
    partners = torch.tensor([int(j) if finite[int(j)] else i for i, j in enumerate(perm)])
    if isinstance(weight, torch.Tensor):
        weight = weight.to(x.dtype).float()
    return torch.lerp(x[partners].float(), x.float(), weight).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["float", "ratio", "mask", "soft mask"])
@pytest.mark.parametrize("inplace", [False, True])
def test_the_guarded_blend_is_the_float32_lerp_rounded_once(
    dtype: torch.dtype, kind: str, inplace: bool
) -> None:
    # float32: the same bits as the guard and a float32 lerp; float16 / bfloat16: the float32
    # computation rounded once to the input's dtype.
    x = torch.randn(7, 3, 13, 9, generator=_gen(20)).mul_(3).to(dtype)
    x[4, 1, 2, 3] = float("nan")  # sample 0 takes image 4 as its partner
    perm = torch.tensor([4, 0, 1, 2, 3, 6, 5])
    weight: float | torch.Tensor = {
        "float": 0.3125,
        "ratio": torch.rand(7, 1, 1, 1, generator=_gen(21)),
        "mask": (torch.rand(7, 1, 13, 9, generator=_gen(22)) > 0.5).float(),
        "soft mask": torch.rand(1, 1, 13, 9, generator=_gen(23)),
    }[kind]
    expected = _reference_guarded_lerp(x, perm, weight)
    weights = torch.rand(7, generator=_gen(24))
    target = x.clone()
    mixed, got_weights = _blend_finite(target, perm, weight, weights, inplace)
    assert mixed.dtype == dtype and (mixed is target) == inplace
    assert torch.equal(mixed.nan_to_num(7.0), expected.nan_to_num(7.0))
    assert torch.equal(mixed[0], x[0])  # not mixed with its broken partner
    assert got_weights[0] == 1.0 and torch.equal(got_weights[1:], weights[1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_finite_half_precision_images_are_mixed(dtype: torch.dtype) -> None:
    # Every image sums to 64 * 60000, far beyond float16's largest value (65504): the
    # finiteness check must not sum in float16, or no sample would be mixed.
    x = torch.full((4, 1, 8, 8), 60000.0, dtype=dtype) * torch.tensor([1.0, -1.0, 0.5, -0.5]).to(
        dtype
    ).view(4, 1, 1, 1)
    mixed, weights = mixup(x, 0.25, torch.tensor([1, 2, 3, 0]))
    assert weights.tolist() == [0.25] * 4
    assert mixed.isfinite().all() and not torch.equal(mixed, x)


# --------------------------------------------------------------------------- errors


def _wrong(value: object) -> Any:
    """A value of the wrong type, passed on purpose."""
    return value


_X = torch.randn(4, 3, 8, 8)
_PERM = torch.tensor([1, 2, 3, 0])
_STORED = torch.randn(10, 3, 8, 8)
# Device mismatches, shown with the "meta" device (no accelerator needed).
_META = torch.empty(4, 3, 8, 8, device="meta")
_META_PERM = torch.empty(4, dtype=torch.long, device="meta")

ERROR_CASES: list[tuple[Callable[[], Any], type[Exception], str]] = [
    (lambda: sample_lam(0.0), ValueError, r"`alpha` must be > 0, got 0.0"),
    (lambda: sample_lam(-1), ValueError, r"`alpha` must be > 0, got -1.0"),
    (
        lambda: sample_lam(float("nan")),
        ValueError,
        r"`alpha` must be a finite real number, got nan",
    ),
    (lambda: sample_lam(_wrong("1")), TypeError, r"`alpha` must be a finite real number, got '1'"),
    (lambda: sample_fmix_mask((8, 8), 0.5, decay_power=0), ValueError, r"`decay_power` must be"),
    (lambda: sample_fmix_mask((8, 8), 0.5, max_soft=0.6), ValueError, r"`max_soft` must be in"),
    (lambda: fmix(_X, 0.5, _PERM, max_soft=-0.1), ValueError, r"`max_soft` must be in \[0, 0.5\]"),
    (lambda: mixup(_X, 1.5, _PERM), ValueError, r"`lam` must be in \[0, 1\], got 1.5"),
    (lambda: mixup(_X, float("inf"), _PERM), ValueError, r"`lam` must be a finite real number"),
    (lambda: mixup(_X, torch.rand(3), _PERM), ValueError, r"`lam` must be a float or a floating"),
    (lambda: mixup(_X, torch.ones(4, dtype=torch.long), _PERM), TypeError, r"`lam` must be a"),
    (lambda: mixup(_X, 0.5, _PERM[:3]), ValueError, r"`perm` must be a torch.long tensor of sha"),
    (lambda: mixup(_X, 0.5, _PERM.int()), TypeError, r"`perm` must be a torch.long tensor"),
    (
        lambda: blend(_X, _wrong([1, 2, 3, 0]), 0.5),
        TypeError,
        r"`perm` must be a torch.long .* got list",
    ),
    (lambda: mixup(_X.to(torch.uint8), 0.5, _PERM), TypeError, r"`x` must be a floating-point"),
    (
        lambda: mixup(_wrong([[1.0]]), 0.5, _PERM),
        TypeError,
        r"`x` must be a torch.Tensor, got list",
    ),
    (
        lambda: mixup(torch.zeros(0, 3), 0.5, torch.zeros(0, dtype=torch.long)),
        ValueError,
        r"`x` must have a non-empty batch dimension",
    ),
    (lambda: fmix(torch.randn(4, 10), 0.5, _PERM), ValueError, r"`x` must have shape \(batch, c"),
    (
        lambda: cutmix(torch.randn(4, 1, 2, 3, 4, 5), 0.5, _PERM),
        ValueError,
        r"`x` must have shape \(batch, channels, \*spatial\)",
    ),
    (
        lambda: fmix(torch.randn(4, 8), 0.5, _PERM, spatial_dims=2),
        ValueError,
        r"`x` must have at least 3 dims .* got shape \(4, 8\)",
    ),
    (lambda: cutmix(_X, 0.5, _PERM, spatial_dims=4), ValueError, r"`spatial_dims` must be None,"),
    (
        lambda: cutmix(_X, 0.5, _PERM, spatial_dims=_wrong(2.0)),
        TypeError,
        r"`spatial_dims` must be None",
    ),
    (lambda: sample_fmix_mask((0, 3), 0.5), ValueError, r"`spatial_size` must be 1 to 3 positive"),
    (
        lambda: sample_fmix_mask(_wrong((4.0, 3)), 0.5),
        TypeError,
        r"`spatial_size` must be 1 to 3 positi",
    ),
    (
        lambda: sample_fmix_mask((8, 8), 0.5, mask_sampler="coarse"),
        ValueError,
        r"`mask_sampler` must be one of \('exact', 'fast'\), got 'coarse'",
    ),
    (lambda: fmix(_X, 0.5, _PERM, mask_sampler=_wrong(0)), TypeError, r"`mask_sampler` must be a"),
    (
        lambda: cutmix(_X, 0.5, _PERM, generator=_wrong(3)),
        TypeError,
        r"`generator` must be a torch.Gene",
    ),
    (lambda: box_mask(torch.zeros(3, 2), (4, 4)), ValueError, r"`boxes` must have shape \(\.\.\."),
    (lambda: sample_partners(0), ValueError, r"`batch_size` must be an integer >= 1, got 0"),
    (lambda: sample_partners(_wrong(2.0)), TypeError, r"`batch_size` must be an integer, got 2.0"),
    (
        lambda: mixup(_X, 0.5, _PERM, inplace=_wrong(1)),
        TypeError,
        r"`inplace` must be a bool, got 1",
    ),
    (
        lambda: cutmix(_STORED[2:6], 0.5, _PERM, inplace=True),
        ValueError,
        r"`inplace=True` would write into `x`, a view of",
    ),
    (
        lambda: fmix(_X.clone().requires_grad_(), 0.5, _PERM, inplace=True),
        ValueError,
        r"`inplace=True` cannot write into `x`, which requires",
    ),
    (
        lambda: blend(_STORED[:4], _PERM, 0.5, inplace=True),
        ValueError,
        r"`inplace=True` would write into `x`, a view of",
    ),
    (lambda: mixup(_META, torch.rand(4), _META_PERM), ValueError, r"`lam` must be on meta, got"),
    (lambda: mixup(_META, 0.5, _PERM), ValueError, r"`perm` must be on meta, got a tensor on cpu"),
    (
        lambda: cutmix(_META, torch.rand(4, device="meta"), _META_PERM, generator=_gen()),
        ValueError,
        r"`generator` must be on the device of the data \(meta",
    ),
    # Targets.
    (
        lambda: mix_targets(torch.tensor([0, 3]), torch.ones(2), _PERM[:2], num_classes=3),
        ValueError,
        r"`y` must hold class indices in \[0, 3\), got .*\[0, 3\]",
    ),
    (
        lambda: soft_targets(torch.tensor([-1, 0]), 3),
        ValueError,
        r"`y` must hold class indices in \[0, 3\), got .*\[-1, 0\]",
    ),
    (lambda: soft_targets(torch.tensor([0, 1])), ValueError, r"`num_classes` is needed .* None"),
    (lambda: soft_targets(torch.tensor([[0], [1]]), 3), ValueError, r"`y` must be integer label"),
    (lambda: soft_targets(torch.zeros(2, 3), 4), ValueError, r"`y` must have `num_classes`=4 co"),
    (
        lambda: soft_targets(torch.zeros(2, dtype=torch.bool), 2),
        TypeError,
        r"`y` must hold integer labels \(int64\) or float",
    ),
    (lambda: soft_targets(torch.tensor([0, 1]), 2, 1.0), ValueError, r"`label_smoothing` must be"),
    (lambda: soft_targets(torch.tensor([0, 1]), 0), ValueError, r"`num_classes` must be an integ"),
    (
        lambda: soft_targets(torch.tensor([0, 1]), _wrong(2.0)),
        TypeError,
        r"`num_classes` must be None or",
    ),
    (lambda: soft_targets(_wrong([0, 1]), 2), TypeError, r"`y` must be a torch.Tensor, got list"),
    (
        lambda: mix_targets(torch.tensor([0, 1]), torch.ones(3), _PERM[:2], num_classes=2),
        ValueError,
        r"`weights` must be a tensor of shape \(2,\), got \(3,\)",
    ),
    (
        lambda: mix_targets(torch.tensor([0, 1]), _wrong([1.0, 1.0]), _PERM[:2], num_classes=2),
        TypeError,
        r"`weights` must be a tensor of shape \(2,\), got list",
    ),
]


@pytest.mark.parametrize(("call", "error", "match"), ERROR_CASES, ids=lambda v: "")
def test_errors_name_the_argument(call: Callable[[], Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()
