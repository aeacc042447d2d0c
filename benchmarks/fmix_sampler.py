"""FMix's fast mask sampler against the exact one: its cutoff and its error, per input size.

Run: ``python benchmarks/fmix_sampler.py`` (about a minute on one CPU thread). For each size it
prints the cutoff ``K`` and the share of the spectrum's energy beyond it, then, on the same
spectra, how the fast sampler's masks differ from the exact algorithm's: the share of elements
that differ (the exact mask ranks every element of the full field; the fast one thresholds the
cut field at the value found on its sub-lattice) and the error of the area against
``round(lam * N) / N``. The distribution tests are ``tests/test_fmix_fast_sampler.py``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_recipes.functional._fmix_binarise import top_k_mask
from lightning_recipes.functional._fmix_noise import (
    ENERGY_TOLERANCE,
    _kept_frequencies,
    spectrum_cutoff,
    sub_lattice,
    threshold_mask,
)
from lightning_recipes.functional.fmix import _count, _spectrum_scale

SIZES = [(32, 32), (64, 64), (224, 224), (2048,), (224,), (24, 24, 24), (64, 64, 64)]


def compare(size: tuple[int, ...], masks: int, seed: int = 0) -> list[str]:
    """One row: cutoff, energy beyond it, element and area errors of ``masks`` masks."""
    generator = torch.Generator().manual_seed(seed)
    device = torch.device("cpu")
    scale = _spectrum_scale(size, 3.0, device)
    cutoff = spectrum_cutoff(size, 3.0)
    spectrum = torch.randn((masks, *scale.shape), dtype=torch.complex64, generator=generator)
    spectrum.mul_(scale)
    dims = tuple(range(1, len(size) + 1))
    exact_field = torch.fft.irfftn(spectrum, s=size, dim=dims).reshape(masks, -1)
    # The cut spectrum on the full grid: its inverse FFT is the fast sampler's field (the
    # trigonometric interpolation is exact within the band; tested).
    index, _, _ = _kept_frequencies(size, size, 3.0, cutoff, device)
    keep = torch.zeros(math.prod(scale.shape), dtype=torch.bool)
    keep[index] = True
    cut = spectrum * keep.view(scale.shape)
    cut_field = torch.fft.irfftn(cut, s=size, dim=dims)
    lam = torch.rand(masks, generator=generator)
    n = math.prod(size)
    count = (lam * n).round().long()
    exact = top_k_mask(exact_field, count, torch.float32)
    points = sub_lattice(cut_field)
    kept = top_k_mask(points, _count(lam, points.shape[1]))
    lattice = points.shape[1]
    if lattice == n:
        fast = kept.float()
    else:
        fast = threshold_mask(cut_field.clone(), points, kept).reshape(masks, -1)
    differ = (exact != fast).float().mean(1)
    area = (fast.mean(1) - count / n).abs()
    energy = spectrum_energy_share(size, cutoff)
    return [
        "x".join(map(str, size)),
        str(cutoff),
        str(index.numel()),
        str(math.prod(scale.shape)),
        f"{energy:.1e}",
        str(lattice),
        f"{differ.mean():.2%}",
        f"{differ.quantile(0.99):.2%}",
        f"{area.mean():.2%}",
        f"{area.max():.2%}",
    ]


def spectrum_energy_share(size: tuple[int, ...], cutoff: int) -> float:
    """The share of the energy beyond ``cutoff``, from one ``spectrum_cutoff``-style count."""
    scale = _spectrum_scale(size, 3.0, torch.device("cpu")).double()
    axes = [torch.fft.fftfreq(s, 1 / s, dtype=torch.float64) for s in size[:-1]]
    axes.append(torch.fft.rfftfreq(size[-1], 1 / size[-1], dtype=torch.float64))
    ks = torch.stack(torch.meshgrid(*axes, indexing="ij")).round()
    last = ks[-1]
    energy = scale.square() * torch.where((last == 0) | (2 * last == size[-1]), 1.0, 2.0)
    energy[(0,) * len(size)] = 0.0
    return float(energy[ks.abs().amax(0) > cutoff].sum() / energy.sum())


def main() -> None:
    torch.set_num_threads(1)
    print(
        f"decay_power 3, energy tolerance {ENERGY_TOLERANCE:g}; lam ~ U(0, 1); 256 masks per"
        f" size (64 for 64x64x64); torch {torch.__version__}\n"
    )
    header = [
        "size",
        "cutoff K",
        "Gaussians drawn",
        "of the exact",
        "energy beyond K",
        "ranked points",
        "elements differing, mean",
        "99th pct",
        "area error, mean",
        "max",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for size in SIZES:
        row = compare(size, 64 if math.prod(size) > 100_000 else 256)
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
