"""FMix on small inputs: the two choices the exact sampler makes by size, timed both ways.

Run: ``python benchmarks/fmix_small.py`` (about a minute on one CPU thread). On small inputs
(the embedded digits are 8x8) a per-sample FMix hook is a few dozen small ops, whose fixed
costs are most of its time, so the sampler picks its kernels by size:

1. **The field.** ``irfftn`` of the scaled spectrum, or, on the CPU up to
   ``fmix._DENSE_ELEMENTS`` elements, one matrix product of the spectrum's real and
   imaginary parts with a cached matrix (the same linear map). The table times both, the
   spectrum's draw included, per field size and batch.
2. **The ranking** of each mask's values for its own count: ``histogram_top_k_mask`` (some
   25 ops) or, up to ``_fmix_binarise.SORTED_ELEMENTS`` values in the batch,
   ``sorted_top_k_mask`` (on the CPU numpy's sort of a copy, elsewhere one ``argsort`` and
   a scatter). A sort's time depends on the data (its branches), so every call ranks new
   values (a cycle of 101 batches): ranking the same values again and again times the branch
   predictor's memory, not the sort.

Both in a loop, where the caches are warm; in a training step the ops' fixed costs are
larger, which favours the fewer ops (``compare_code.py digits-hook``).
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_recipes.functional._fmix_binarise import (
    SORTED_ELEMENTS,
    histogram_top_k_mask,
    sorted_top_k_mask,
)
from lightning_recipes.functional.fmix import (
    _DENSE_ELEMENTS,
    _inverse_matrix,
    _spectrum_scale,
)

FIELD_SIZES = [(8, 8), (10, 10), (12, 12), (16, 16), (64,), (4, 4, 4)]
RANK_SIZES = [36, 64, 100, 144]
BATCHES = [16, 64, 256]


def median_us(fn: Callable[[Any], Any], inputs: list[Any], calls: int = 100) -> float:
    """Median over 7 rounds of the mean time of ``calls`` calls, cycling through ``inputs``."""
    cycle = itertools.cycle(inputs)
    for _ in range(10):
        fn(next(cycle))
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(calls):
            fn(next(cycle))
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds) * 1e6


def _fft_field(_: Any, batch: int, size: tuple[int, ...], scale: torch.Tensor) -> torch.Tensor:
    spectrum = torch.randn((batch, *scale.shape), dtype=torch.complex64)
    field: torch.Tensor = torch.fft.irfftn(
        spectrum.mul_(scale), s=size, dim=tuple(range(1, len(size) + 1))
    )
    return field


def _product_field(_: Any, batch: int, scale: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    spectrum = torch.randn((batch, *scale.shape), dtype=torch.complex64)
    return torch.view_as_real(spectrum).view(batch, -1) @ matrix


def field_rows() -> list[str]:
    rows = []
    for size, batch in itertools.product(FIELD_SIZES, BATCHES):
        scale = _spectrum_scale(size, 3.0, torch.device("cpu"))
        matrix = _inverse_matrix(size, 3.0)
        fft = median_us(functools.partial(_fft_field, batch=batch, size=size, scale=scale), [0])
        product = median_us(
            functools.partial(_product_field, batch=batch, scale=scale, matrix=matrix), [0]
        )
        used = "product" if math.prod(size) <= _DENSE_ELEMENTS else "FFT"
        name = "x".join(map(str, size))
        rows.append(
            f"| {name} | {batch} | {fft:.1f} | {product:.1f} | {product / fft:.2f} | {used} |"
        )
    return rows


def rank_rows() -> list[str]:
    rows = []
    for n, batch in itertools.product(RANK_SIZES, BATCHES):
        generator = torch.Generator().manual_seed(0)
        values = [torch.randn(batch, n, generator=generator) for _ in range(101)]
        count = torch.randint(0, n + 1, (batch,), generator=generator)
        hist = median_us(functools.partial(histogram_top_k_mask, count=count), values)
        srt = median_us(functools.partial(sorted_top_k_mask, count=count), values)
        used = "sort" if batch * n <= SORTED_ELEMENTS else "histogram"
        rows.append(f"| {n} | {batch} | {hist:.1f} | {srt:.1f} | {srt / hist:.2f} | {used} |")
    return rows


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; median of 7 rounds of 100 calls\n")
    print("| field | batch | draw + `irfftn` us | draw + product us | product / FFT | used |")
    print("|---|---|---|---|---|---|")
    print("\n".join(field_rows()))
    print()
    print("| values per row | rows | histogram us | sort us | sort / histogram | used |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rank_rows()))


if __name__ == "__main__":
    main()
