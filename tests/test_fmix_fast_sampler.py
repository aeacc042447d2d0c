"""FMix's ``mask_sampler="fast"`` against the paper's algorithm: the same distribution of masks
within sampling error, at 32x32 and 224x224, in 1-D and in 3-D.

The reference is the paper's ``fmix.py`` (Harris et al. 2020, github.com/ecs-vlc/FMix:
``fftfreqnd``, ``get_spectrum``, ``make_low_freq_image``, ``binarise_mask``) written again in
numpy with its own random stream. Each comparison is a seeded two-sample Kolmogorov-Smirnov
test of a per-mask statistic: the mask's area, the weight of the sample itself it yields (the
paper weights the targets with the sampled lam, ``"fast"`` with the mask's mean) and the
spatial autocorrelation of masks of half area, i.e. the share of elements equal to the one
``lag`` further along each axis, at a short, a middle and a long lag. The power of the same
test is checked on masks that differ only in ``decay_power`` (2 against 3): it must see
that difference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats  # type: ignore[import-untyped]

from lightning_recipes.functional import fmix, sample_fmix_mask
from lightning_recipes.functional._fmix_noise import (
    ENERGY_TOLERANCE,
    _interpolation,
    draws_the_exact_masks,
    spectrum_cutoff,
    sub_lattice,
    threshold_mask,
)

# The significance of each test: with the seeds fixed, a failure is a real difference (or a
# 1-in-1000 draw, which moving the seed would show).
_ALPHA = 1e-3


def _paper_masks(
    size: tuple[int, ...], lam: np.ndarray, decay_power: float, seed: int
) -> np.ndarray:
    """The paper's ``sample_mask`` per element of ``lam``: ``(len(lam), *size)`` binary masks."""
    rng = np.random.default_rng(seed)
    axes = [np.fft.fftfreq(s) for s in size[:-1]] + [np.fft.rfftfreq(size[-1])]
    grids = np.meshgrid(*axes, indexing="ij")
    freqs = np.sqrt(sum(g * g for g in grids))
    scale = 1.0 / np.maximum(freqs, 1.0 / max(size)) ** decay_power
    masks = np.empty((len(lam), *size), dtype=np.float32)
    for i, value in enumerate(lam):
        param = rng.standard_normal((*freqs.shape, 2))
        spectrum = scale * (param[..., 0] + 1j * param[..., 1])
        grey = np.real(np.fft.irfftn(spectrum, size, axes=tuple(range(len(size)))))
        order = grey.reshape(-1).argsort()[::-1]
        count = (
            math.ceil(value * grey.size) if rng.random() > 0.5 else math.floor(value * grey.size)
        )
        flat = np.zeros(grey.size, dtype=np.float32)
        flat[order[:count]] = 1.0
        masks[i] = flat.reshape(size)
    return masks


def _fast_masks(
    size: tuple[int, ...], lam: np.ndarray, decay_power: float, seed: int
) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    lam_tensor = torch.from_numpy(lam).float()
    masks = sample_fmix_mask(
        size, lam_tensor, decay_power=decay_power, generator=generator, mask_sampler="fast"
    )
    return masks.numpy()


def _agreement(masks: np.ndarray, lag: int) -> np.ndarray:
    """Per mask, the share of elements equal to the element ``lag`` further along each axis
    (periodically: both algorithms' fields are periodic), averaged over the axes."""
    axes = range(1, masks.ndim)
    return np.mean([(masks == np.roll(masks, lag, axis=a)).mean(axis=tuple(axes)) for a in axes], 0)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.ks_2samp(a, b).pvalue)


# size, masks per side: fewer where masks are large; enough for a power check to pass.
_CASES = [((32, 32), 400), ((224, 224), 200), ((2048,), 400), ((24, 24, 24), 200)]


@pytest.mark.parametrize(
    ("size", "n"), _CASES, ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple) else None
)
def test_fast_masks_have_the_papers_area_lam_and_autocorrelation(
    size: tuple[int, ...], n: int
) -> None:
    rng = np.random.default_rng(0)
    lam = rng.beta(1.0, 1.0, n)
    paper, fast = _paper_masks(size, lam, 3.0, seed=1), _fast_masks(size, lam, 3.0, seed=2)
    area_paper = paper.reshape(n, -1).mean(1)
    area_fast = fast.reshape(n, -1).mean(1)
    assert _ks(area_paper, area_fast) > _ALPHA
    # The lam each yields for the targets: the sampled one in the paper, the mask's mean here.
    _, weights = fmix(
        torch.zeros(n, 1, *size),
        torch.from_numpy(lam).float(),
        torch.arange(n).roll(1),
        generator=torch.Generator().manual_seed(2),
        mask_sampler="fast",
    )
    assert torch.equal(weights, torch.from_numpy(area_fast))
    assert _ks(lam, weights.numpy()) > _ALPHA
    # Spatial autocorrelation, at half area so that the area does not enter.
    half = np.full(n, 0.5)
    paper, fast = _paper_masks(size, half, 3.0, seed=3), _fast_masks(size, half, 3.0, seed=4)
    other = _fast_masks(size, half, 2.0, seed=5)
    for lag in (1, max(size) // 8, max(size) // 4):
        a_paper, a_fast = _agreement(paper, lag), _agreement(fast, lag)
        assert _ks(a_paper, a_fast) > _ALPHA, lag
    # Power: the same statistic tells decay 2 from 3 on as many masks.
    lag = max(size) // 8
    assert _ks(_agreement(paper, lag), _agreement(other, lag)) < _ALPHA


@pytest.mark.parametrize("size", [(224, 224), (2048,), (24, 24, 24), (32, 32), (9, 7)])
def test_fast_masks_keep_about_lam_and_are_binary(size: tuple[int, ...]) -> None:
    lam = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    masks = sample_fmix_mask(
        size, lam, generator=torch.Generator().manual_seed(0), mask_sampler="fast"
    )
    assert masks.shape == (5, *size)
    assert ((masks == 0) | (masks == 1)).all()
    area = masks.flatten(1).mean(1)
    assert area[0] == 0 and area[-1] == 1
    torch.testing.assert_close(area, lam, atol=0.02, rtol=0)
    # A float lam draws one mask.
    one = sample_fmix_mask(
        size, 0.3, generator=torch.Generator().manual_seed(0), mask_sampler="fast"
    )
    assert one.shape == size and abs(float(one.mean()) - 0.3) <= 0.02


def test_fast_masks_are_exact_in_count_where_every_element_is_ranked() -> None:
    # 32x32 holds no more than the sub-lattice's 1024 points: every element is ranked.
    lam = torch.tensor([0.13, 0.5, 0.77])
    masks = sample_fmix_mask(
        (32, 32), lam, generator=torch.Generator().manual_seed(0), mask_sampler="fast"
    )
    assert masks.flatten(1).sum(1).tolist() == (lam * 1024).round().tolist()


@pytest.mark.parametrize("size", [(224, 224), (32, 32), (4096,), (32, 32, 32)])
def test_the_cutoff_keeps_all_but_the_tolerance_of_the_energy(size: tuple[int, ...]) -> None:
    # Independent count: the paper's scale on the full grid of integer frequencies.
    axes = [np.fft.fftfreq(s, 1 / s) for s in size[:-1]] + [np.fft.rfftfreq(size[-1], 1 / size[-1])]
    ks = np.stack(np.meshgrid(*axes, indexing="ij"))
    freqs = np.sqrt(sum((k / s) ** 2 for k, s in zip(ks, size, strict=True)))
    energy = (1.0 / np.maximum(freqs, 1.0 / max(size)) ** 3.0) ** 2
    last = ks[-1]
    energy = energy * np.where((last == 0) | (2 * last == size[-1]), 1.0, 2.0)
    energy[(0,) * len(size)] = 0.0
    reach = np.abs(ks).max(axis=0)
    cutoff = spectrum_cutoff(size, 3.0)
    share = lambda k: energy[reach > k].sum() / energy.sum()  # noqa: E731
    assert share(cutoff) <= ENERGY_TOLERANCE < share(cutoff - 1)


@pytest.mark.parametrize(("size", "points"), [(224, 13), (32, 13), (50, 7)])
def test_trigonometric_interpolation_is_exact_within_the_band(size: int, points: int) -> None:
    # A periodic signal of frequencies up to (points - 1) / 2, sampled at `points` positions,
    # is reproduced at every one of `size` positions.
    rng = np.random.default_rng(0)
    band = (points - 1) // 2
    coeff = rng.standard_normal((band + 1, 2))

    def signal(t: np.ndarray) -> np.ndarray:
        k = np.arange(band + 1).reshape(-1, 1)
        return (
            coeff[:, :1] * np.cos(2 * np.pi * k * t) + coeff[:, 1:] * np.sin(2 * np.pi * k * t)
        ).sum(0)

    samples = signal(np.arange(points) / points)
    fine = _interpolation(size, points, torch.device("cpu")).double().numpy() @ samples
    np.testing.assert_allclose(fine, signal(np.arange(size) / size), atol=1e-5)


def test_the_threshold_lies_between_the_kept_and_the_dropped_lattice_points() -> None:
    field = torch.randn(4, 64, 64, generator=torch.Generator().manual_seed(0))
    points = sub_lattice(field)
    assert torch.equal(points, field[:, ::2, ::2].reshape(4, -1))  # 64 // 32: every 2nd
    kept = points > torch.tensor([[math.inf], [0.5], [-0.5], [-math.inf]])
    assert kept[0].sum() == 0 and kept[-1].all()
    mask = threshold_mask(field.clone(), points, kept).bool()
    # The mask on the lattice is the kept points, and no point beyond them flips order.
    assert torch.equal(mask[:, ::2, ::2].reshape(4, -1), kept)
    assert not mask[0].any() and mask[-1].all()
    for row in (1, 2):
        low, high = points[row][kept[row]].min(), points[row][~kept[row]].max()
        assert (field[row][mask[row]] > high).all() and (field[row][~mask[row]] < low).all()


def test_fast_masks_with_a_soft_edge_keep_their_mean() -> None:
    lam = torch.tensor([0.2, 0.6])
    masks = sample_fmix_mask(
        (224, 224),
        lam,
        max_soft=0.1,
        generator=torch.Generator().manual_seed(0),
        mask_sampler="fast",
    )
    assert ((masks > 0) & (masks < 1)).any()
    torch.testing.assert_close(masks.flatten(1).mean(1), (lam * 224 * 224).round() / 224**2)


@pytest.mark.parametrize("size", [(8, 8), (11, 11), (5, 7), (9,), (6, 6, 6)], ids=str)
@pytest.mark.parametrize("max_soft", [0.0, 0.1])
@pytest.mark.parametrize("per_sample", [True, False])
def test_the_fast_sampler_is_the_exact_one_where_it_would_cut_nothing(
    size: tuple[int, ...], max_soft: float, per_sample: bool
) -> None:
    # The digits' 8x8 images among them: switching the default to "fast" left their masks,
    # and so the main job's and the accuracy study's fits, as they were.
    assert draws_the_exact_masks(size, 3.0, max_soft)
    assert spectrum_cutoff(size, 3.0) >= max(size) // 2
    lam: float | torch.Tensor = torch.rand(16, generator=torch.Generator().manual_seed(1))
    if not per_sample:
        lam = 0.37
    x = torch.randn(16, 2, *size, generator=torch.Generator().manual_seed(2))
    perm = torch.roll(torch.arange(16), 1)
    results = {}
    for sampler in ("fast", "exact"):
        g = torch.Generator().manual_seed(3)
        masks = sample_fmix_mask(size, lam, max_soft=max_soft, generator=g, mask_sampler=sampler)
        mixed, weights = fmix(x, lam, perm, max_soft=max_soft, generator=g, mask_sampler=sampler)
        results[sampler] = (masks, mixed, weights, torch.rand(3, generator=g))
    for fast, exact in zip(results["fast"], results["exact"], strict=True):
        assert torch.equal(fast, exact)  # the generator is left where the exact one leaves it


@pytest.mark.parametrize("size", [(12, 12), (10,), (18, 18, 18), (32, 32)], ids=str)
def test_the_fast_sampler_cuts_the_spectrum_from_twelve_by_twelve(size: tuple[int, ...]) -> None:
    assert not draws_the_exact_masks(size, 3.0, 0.0)
    assert spectrum_cutoff(size, 3.0) < max(size) // 2
    lam = torch.full((64,), 0.5)
    masks = {
        sampler: sample_fmix_mask(
            size, lam, generator=torch.Generator().manual_seed(4), mask_sampler=sampler
        )
        for sampler in ("fast", "exact")
    }
    assert not torch.equal(masks["fast"], masks["exact"])  # other draws, same area
    assert torch.equal(masks["fast"].flatten(1).sum(1), masks["exact"].flatten(1).sum(1))


def test_every_entry_point_defaults_to_the_fast_sampler() -> None:
    import inspect

    from lightning_recipes import FMix, RandomMix
    from lightning_recipes.callbacks.mixing._kernels import FMixKernel

    for function in (fmix, sample_fmix_mask, FMix, RandomMix):
        assert inspect.signature(function).parameters["mask_sampler"].default == "fast"
    assert FMix().mask_sampler == RandomMix({"fmix": 1.0}).mask_sampler == "fast"
    assert FMixKernel(None, 3.0, 0.0).mask_sampler == "fast"
