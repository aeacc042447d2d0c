"""Speed of the mixing callbacks against timm, torchvision, the FMix paper's numpy code and
``x.clone()``, as ratios measured in one run on the same batches.

Run: ``python benchmarks/mixing.py`` (about 10 minutes on 2 CPU cores; ``--quick`` for a
smoke run). It prints a markdown table per target of the issue and whether each is met.

What is timed for this package against timm and torchvision is the callback's whole per-batch
work (``on_train_batch_start`` on a list batch: checks, seeding, drawing lam, partners and
masks, mixing the images and building float32 soft targets), by default and with
``inplace=True`` (timm's ``Mixup`` mixes in place, torchvision's transforms do not). timm's
``Mixup`` and torchvision's ``MixUp``/``CutMix`` are called on ``(x, y)`` with integer labels
and also return mixed soft targets; timm gets ``label_smoothing=0`` for parity. Against
``x.clone()`` both the mix alone (seeding, drawing lam, partners and masks, mixing the images)
and the whole hook are given. Floors measured in the same rounds show which targets no
implementation can go below on this machine: one read and one write of the batch
(``torch.add(x, 0)``, ``copy_`` into existing memory, a clone into memory whose fresh pages
one ``madvise`` call populated), two batches read and one written (the
traffic of any out-of-place blend, a fused kernel's included), the non-finite guard (a
per-sample sum), a gather of the partners and one ``lerp`` (the batched torch ops), the guard
and ``lerp`` a sample at a time (what the hooks run for large samples on the CPU), per-batch
CutMix's clone-and-paste kernel without its guard, the Gaussian spectra the exact FMix
sampler draws per mask, and the fewest torch ops a per-sample MixUp step can be (a lam per
sample, partners, the blend, one-hot targets and their blend: the fixed cost of any hook where
the batch sits in the cache). The hooks against ``x.clone()`` are timed under three memory
settings, each in a fresh process (see ``CACHING_MALLOC``): memory reused, where the ratios show
the memory traffic; fresh pages (glibc's defaults), where every batch-sized tensor, the
clone's and the hook's, is page-faulted in; and fresh huge pages (``HUGE_PAGES``: PyTorch's
``THP_MEM_ALLOC_ENABLE=1``), where it is faulted in 2 MB at a time.
Beside timm, its call followed by this package's guard (a per-sample sum over the box) shows
what timm's ops plus the guard cost as separate torch ops.
Every contender of a row is timed in the same interleaved rounds and the median is kept.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_recipes.callbacks.mixing import CutMix, FMix, MixUp, RandomMix
from lightning_recipes.functional._fmix_binarise import threshold_top_k_mask
from lightning_recipes.functional._pages import empty_populated_like
from lightning_recipes.functional._rows import blend_rows
from lightning_recipes.functional.fmix import _low_frequency_noise

NUM_CLASSES = 10
# Two settings of glibc's malloc. By default glibc hands every freed allocation of 32 MiB or
# more (a 64x3x224x224 float32 batch is 38.5 MB) back to the OS and page-faults a new one in
# on first touch, which costs more than copying it, unless the request is served from a hole
# that earlier frees left in the heap; smaller allocations reuse the heap once its dynamic
# threshold has grown (to at most 32 MiB, with a trim threshold of twice that). So whether a
# batch-sized tensor is fresh depends on the process's allocation history, and so does every
# ratio against `x.clone()`. Two settings make it independent of that history: CACHING_MALLOC
# always reuses freed memory (as a long-running process mostly does, and PyTorch's caching
# allocator on a GPU); FRESH_MALLOC fixes glibc's thresholds at those grown values, so that
# every batch-sized tensor, the clone's and the hook's, is mapped anew and page-faulted in
# (as in a new process) while smaller tensors reuse the heap. The tables against the peers run
# with CACHING_MALLOC (`--system-malloc` keeps glibc's defaults); the hooks against a clone
# run under both, each in a new process.
CACHING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "17179869184"}
FRESH_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "67108864"}
# PyTorch's own switch (read once, at start-up): CPU tensors of 2 MB or more are aligned to
# 2 MB and advised to the kernel as huge pages (where transparent huge pages are "always" or
# "madvise"), so that a fresh batch is faulted in 2 MB at a time instead of 4 KB.
HUGE_PAGES = {**FRESH_MALLOC, "THP_MEM_ALLOC_ENABLE": "1"}
SHAPES = {"256x3x32x32": (256, 3, 32, 32), "64x3x224x224": (64, 3, 224, 224)}


# --------------------------------------------------------------------------- timing


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def median_times(
    fns: dict[str, Callable[[], Any]], rounds: int, budget_s: float
) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved rounds."""
    for fn in fns.values():  # warm-up (allocator, FFT plans, lazy imports)
        fn()
    numbers = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        numbers[name] = max(1, int(budget_s / rounds / max(once, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    order = random.Random(0)
    for _ in range(rounds):
        # A new order every round, so that no contender always follows the same one (what ran
        # before moves the caches and, with glibc's defaults, the cost of page faults).
        order.shuffle(names)
        for name in names:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(numbers[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / numbers[name])
    return {name: statistics.median(values) for name, values in samples.items()}


# --------------------------------------------------------------------------- contenders


def _set_up(callback: Any) -> tuple[SimpleNamespace, SimpleNamespace]:
    """Stand-ins for the trainer and module of a fit, and the callback set up with them."""
    trainer = SimpleNamespace(global_rank=0, current_epoch=0, global_step=0, is_global_zero=True)
    module = SimpleNamespace(num_classes=NUM_CLASSES, hparams={}, log=lambda *a, **k: None)
    callback.setup(trainer, module, "fit")
    return trainer, module


def _gather_lerp(x: torch.Tensor, perm: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    partners = torch.index_select(x, 0, perm)
    return torch.lerp(partners, x, weight, out=partners)


def _populated_clone(x: torch.Tensor) -> torch.Tensor:
    return empty_populated_like(x).copy_(x)


def _two_batches(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return torch.add(x, other)


def _clone_and_paste(x: torch.Tensor, perm: torch.Tensor, box: tuple[slice, ...]) -> torch.Tensor:
    mixed = x.clone()
    torch.index_select(x[box], 0, perm, out=mixed[box])
    return mixed


def _fewest_ops_step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-sample MixUp step with nothing a hook could leave out: a lam per sample
    (``Beta(1, 1)`` is uniform), partners, the blend and the soft targets; the ops' fixed
    costs are the floor of any hook where the batch is small (it sits in the cache)."""
    lam = torch.rand(x.shape[0])
    perm = torch.randperm(x.shape[0])
    mixed = torch.lerp(x.index_select(0, perm), x, lam.view(-1, *([1] * (x.ndim - 1))))
    targets = torch.nn.functional.one_hot(y, NUM_CLASSES).float()
    return mixed, torch.lerp(targets.index_select(0, perm), targets, lam.unsqueeze(1))


class FewestOpsMixUp(pl.Callback):
    """:func:`_fewest_ops_step` as a callback for the digits fits: the floor of a per-sample
    MixUp hook."""

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        batch[0], batch[1] = _fewest_ops_step(batch[0], batch[1])


class Nothing(pl.Callback):
    """A hook that does nothing: in the per-step table, the ratio of two sets of unmixed
    steps, which shows the measurement's own spread."""

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        return None


class FewestOpsFMix(pl.Callback):
    """A per-sample FMix step with nothing a hook could leave out, as a callback for the
    digits fits: a lam per sample (``Beta(1, 1)`` is uniform), partners, the paper's masks by
    the fastest kernels here (the fields by one matrix product of the spectra in
    ``_low_frequency_noise``, exactly ``round(lam * N)`` ones per mask by numpy's sort in
    ``threshold_top_k_mask``), the blend and the
    soft targets weighted by the masks' means. No checks, no guard, no seeding, all drawn at
    the step: the floor of a per-sample FMix hook that draws its own batch's mix, to set
    beside the callback's time in the same fits (the callback draws 32 batches' mixes ahead
    on such small batches, which this reference does not)."""

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        x, y = batch
        size = tuple(x.shape[2:])
        lam = torch.rand(x.shape[0])
        perm = torch.randperm(x.shape[0])
        n = math.prod(size)
        field = _low_frequency_noise(x.shape[0], size, 3.0, None, torch.device("cpu"))
        rounded = lam.mul_(n).round_()
        mask = threshold_top_k_mask(field, rounded.long(), x.dtype)
        weights = rounded.div_(n)
        batch[0] = torch.lerp(x.index_select(0, perm), x, mask.view(-1, 1, *size))
        targets = torch.nn.functional.one_hot(y, NUM_CLASSES).float()
        batch[1] = torch.lerp(targets.index_select(0, perm), targets, weights.unsqueeze(1))


def callback_step(callback: Any, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Any]:
    """The callback's per-batch work on a fresh list batch ``[x, y]``."""
    trainer, module = _set_up(callback)

    def step() -> Any:
        batch = [x, y]
        callback.on_train_batch_start(trainer, module, batch, 0)
        return batch

    return step


def callback_mix(callback: Any, x: torch.Tensor) -> Callable[[], Any]:
    """Only the mix of the callback's per-batch work: seeding its generators, drawing lam,
    partners and boxes or masks, and mixing the images (no batch checks, no targets)."""
    _set_up(callback)
    return lambda: callback._mix(x, callback._batches)


def inplace_step(callback: Any, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Any]:
    """:func:`callback_step` with ``inplace=True``: it mixes one buffer again and again, as
    timm's ``Mixup`` does below (the values stay bounded)."""
    return callback_step(callback, x.clone(), y)


def timm_mixup(x: torch.Tensor, y: torch.Tensor, method: str, mode: str) -> Callable[[], Any]:
    from timm.data.mixup import Mixup

    mix = Mixup(  # type: ignore[no-untyped-call]
        mixup_alpha=1.0 if method == "mixup" else 0.0,
        cutmix_alpha=1.0 if method == "cutmix" else 0.0,
        mode=mode,
        label_smoothing=0.0,
        num_classes=NUM_CLASSES,
    )
    # timm mixes in place; mixing the same buffer again and again stays bounded.
    buffer = x.clone()
    return lambda: mix(buffer, y)


def with_guard(step: Callable[[], Any], x: torch.Tensor, area: float) -> Callable[[], Any]:
    """``step`` and then the non-finite guard's per-sample sum over a centred box of ``area``
    of each sample (1: the whole sample, as MixUp's guard reads it; 0.5: CutMix's box for
    the mean lam of ``Beta(1, 1)``): a peer's ops plus this package's guard, as the separate
    torch ops the CPU path runs."""
    region: list[slice] = [slice(None), slice(None)]
    for size in x.shape[2:]:
        side = round(size * area ** (1 / (x.ndim - 2)))
        region.append(slice((size - side) // 2, (size - side) // 2 + side))
    box = x[tuple(region)]
    dims = tuple(range(1, x.ndim))

    def run() -> Any:
        return step(), box.sum(dim=dims)

    return run


def torchvision_mix(x: torch.Tensor, y: torch.Tensor, method: str) -> Callable[[], Any]:
    from torchvision.transforms import v2  # type: ignore[import-untyped]

    cls = v2.MixUp if method == "mixup" else v2.CutMix
    mix = cls(alpha=1.0, num_classes=NUM_CLASSES)
    return lambda: mix(x, y)


def paper_fmix_numpy_per_sample(
    x: torch.Tensor, alpha: float = 1.0, decay_power: float = 3.0
) -> Callable[[], Any]:
    """The FMix paper's algorithm (Harris et al. 2020, Sec. 3 and its reference code), in
    numpy, run once per sample to get a mask per sample, then applied with torch.

    Per sample: lam ~ Beta(alpha, alpha); a complex Gaussian spectrum on the rfft grid scaled
    by 1 / max(f, 1 / max(size)) ** decay_power; its inverse real FFT, normalised to [0, 1];
    the top ceil or floor(lam * N) pixels (by a full argsort) set to 1, the rest to 0.
    """
    batch, size = x.shape[0], tuple(x.shape[2:])
    rng = np.random.default_rng(0)

    def low_freq_image() -> np.ndarray:
        fy = np.fft.fftfreq(size[0])[:, None]
        fx = np.fft.rfftfreq(size[1])[None, :]
        freqs = np.sqrt(fx * fx + fy * fy)
        scale = 1.0 / np.maximum(freqs, 1.0 / max(size)) ** decay_power
        spectrum = scale[..., None] * rng.standard_normal((*freqs.shape, 2))
        grey = np.fft.irfftn(spectrum[..., 0] + 1j * spectrum[..., 1], size, axes=(0, 1))
        grey = grey - grey.min()
        normalised: np.ndarray = grey / grey.max()
        return normalised

    def binarise(grey: np.ndarray, lam: float) -> np.ndarray:
        order = grey.reshape(-1).argsort()[::-1]
        mask = np.zeros(grey.size, dtype=np.float32)
        count = math.ceil(lam * grey.size) if rng.random() > 0.5 else math.floor(lam * grey.size)
        mask[order[:count]] = 1.0
        return mask.reshape(size)

    def step() -> Any:
        masks = np.stack([binarise(low_freq_image(), rng.beta(alpha, alpha)) for _ in range(batch)])
        m = torch.from_numpy(masks).unsqueeze(1)
        perm = torch.from_numpy(rng.permutation(batch))
        return x * m + x[perm] * (1 - m)

    return step


# --------------------------------------------------------------------------- tables


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def bench_batches(rounds: int, budget: float, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The tables against timm, torchvision and the FMix paper's numpy code."""
    out = []
    vs_libs, vs_elem, vs_numpy = [], [], []
    for shape_name, shape in shapes.items():
        torch.manual_seed(0)
        x = torch.randn(shape)
        y = torch.randint(0, NUM_CLASSES, (shape[0],))
        buffer = torch.empty_like(x)
        fns: dict[str, Callable[[], Any]] = {
            # One read and one write of the batch into memory that exists: the least a
            # vectorised per-sample mix does (it touches every element at least once).
            "copy floor": functools.partial(buffer.copy_, x),
            "MixUp batch": callback_step(MixUp(seed=0), x, y),
            "CutMix batch": callback_step(CutMix(seed=0), x, y),
            "MixUp batch inplace": inplace_step(MixUp(seed=0, inplace=True), x, y),
            "CutMix batch inplace": inplace_step(CutMix(seed=0, inplace=True), x, y),
            "MixUp sample": callback_step(MixUp(seed=0, per_sample=True), x, y),
            "CutMix sample": callback_step(CutMix(seed=0, per_sample=True), x, y),
            "timm mixup batch": timm_mixup(x, y, "mixup", "batch"),
            "timm cutmix batch": timm_mixup(x, y, "cutmix", "batch"),
            "timm mixup batch + guard": with_guard(timm_mixup(x, y, "mixup", "batch"), x, 1.0),
            "timm cutmix batch + guard": with_guard(timm_mixup(x, y, "cutmix", "batch"), x, 0.5),
            "timm mixup elem": timm_mixup(x, y, "mixup", "elem"),
            "timm cutmix elem": timm_mixup(x, y, "cutmix", "elem"),
            "tv MixUp": torchvision_mix(x, y, "mixup"),
            "tv CutMix": torchvision_mix(x, y, "cutmix"),
        }
        t = median_times(fns, rounds, budget)
        numpy_t = median_times(
            {
                "FMix sample exact": callback_step(
                    FMix(seed=0, per_sample=True, mask_sampler="exact"), x, y
                ),
                "FMix sample": callback_step(FMix(seed=0, per_sample=True), x, y),
                "numpy": paper_fmix_numpy_per_sample(x),
            },
            rounds,
            budget,
        )
        for method, name in (("mixup", "MixUp"), ("cutmix", "CutMix")):
            timm_t, tv_t = t[f"timm {method} batch"], t[f"tv {name}"]
            # The targets: MixUp within 1.2x the faster peer, CutMix (default, a new
            # tensor) at most timm's time (timm pastes into its input).
            base, target = (min(timm_t, tv_t), 1.2) if method == "mixup" else (timm_t, 1.0)
            ratio = t[f"{name} batch"] / base
            ratio_inplace = t[f"{name} batch inplace"] / base
            guarded = t[f"timm {method} batch + guard"]
            vs_libs.append(
                [
                    shape_name,
                    method,
                    ms(t[f"{name} batch"]),
                    ms(t[f"{name} batch inplace"]),
                    ms(timm_t),
                    ms(tv_t),
                    "faster of both" if method == "mixup" else "timm",
                    f"{ratio:.2f}",
                    f"{ratio_inplace:.2f}",
                    ms(guarded),
                    f"{guarded / timm_t:.2f}",
                    f"{t[f'{name} batch'] / guarded:.2f}",
                    f"<= {target}",
                    verdict(ratio <= target) + " / " + verdict(ratio_inplace <= target),
                ]
            )
            elem = t[f"timm {method} elem"]
            speedup = elem / t[f"{name} sample"]
            vs_elem.append(
                [
                    shape_name,
                    method,
                    ms(t[f"{name} sample"]),
                    ms(elem),
                    f"{speedup:.1f}x",
                    ms(t["copy floor"]),
                    f"{elem / t['copy floor']:.1f}x",
                    verdict(speedup >= 5),
                ]
            )
        vs_numpy.append(
            [
                shape_name,
                ms(numpy_t["FMix sample"]),
                ms(numpy_t["FMix sample exact"]),
                ms(numpy_t["numpy"]),
                f"{numpy_t['FMix sample'] / numpy_t['numpy']:.2f}",
                f"{numpy_t['FMix sample exact'] / numpy_t['numpy']:.2f}",
                verdict(numpy_t["FMix sample"] <= numpy_t["numpy"])
                + " / "
                + verdict(numpy_t["FMix sample exact"] <= numpy_t["numpy"]),
            ]
        )
    out.append(
        table(
            "Per-batch lam: ours / timm `Mixup` and torchvision v2 (targets: MixUp <= 1.2 of the"
            " faster, CutMix by default <= 1.0 of timm)",
            [
                "batch",
                "method",
                "ours ms",
                "ours `inplace=True` ms",
                "timm ms",
                "torchvision ms",
                "against",
                "ratio",
                "ratio `inplace=True`",
                "floor: timm + the guard's sum, ms",
                "floor / timm",
                "ours (default) / floor",
                "target",
                "met (default / inplace)",
            ],
            vs_libs,
        )
    )
    out.append(
        table(
            'Per-sample lam: speed-up over timm `Mixup(mode="elem")` (target >= 5x)',
            [
                "batch",
                "method",
                "ours ms",
                "timm elem ms",
                "speed-up",
                "copy floor ms",
                "timm elem / copy floor",
                "met",
            ],
            vs_elem,
        )
    )
    out.append(
        table(
            "FMix, a mask per sample: ours / the paper's numpy algorithm per sample (target <= 1)",
            [
                "batch",
                "default (fast) ms",
                "exact ms",
                "numpy ms",
                "default / numpy",
                "exact / numpy",
                "met (default / exact)",
            ],
            vs_numpy,
        )
    )
    return out


# The hooks against `x.clone()`: (name, callback) pairs, and their targets.
HOOKS: tuple[tuple[str, Callable[[], Any]], ...] = (
    ("MixUp batch", lambda: MixUp(seed=0)),
    ("MixUp sample", lambda: MixUp(seed=0, per_sample=True)),
    ("CutMix batch", lambda: CutMix(seed=0)),
    ("CutMix sample", lambda: CutMix(seed=0, per_sample=True)),
    ("FMix batch", lambda: FMix(seed=0)),
    ("FMix sample", lambda: FMix(seed=0, per_sample=True)),
    ("FMix sample exact", lambda: FMix(seed=0, per_sample=True, mask_sampler="exact")),
    ("RandomMix batch", lambda: RandomMix(seed=0)),
    ("RandomMix sample", lambda: RandomMix(seed=0, per_sample=True)),
)
FLOORS = (
    ("add floor", "floor: `torch.add(x, 0)` (read x, write a new tensor)"),
    ("copy floor", "floor: `copy_` into existing memory"),
    (
        "populated clone floor",
        "floor: a clone into memory whose fresh pages one `madvise` call faulted in"
        " (`_pages.empty_populated_like`, what the sample-at-a-time hooks write into)",
    ),
    (
        "fused traffic floor",
        "floor: `torch.add(x, other)` (two batches read, one written: what any out-of-place"
        " blend moves, a fused kernel's included)",
    ),
    ("guard floor", "floor: the guard, a per-sample sum"),
    (
        "mask lerp floor",
        "floor: `lerp` through a binary mask `(1, 1, *spatial)`, the partners given (no gather,"
        " no guard): the kernel whose bits the mask blends keep",
    ),
    ("gather+lerp floor", "floor: gather the partners + `lerp` (batched torch ops)"),
    ("rows floor", "guard + `lerp` a sample at a time (`_rows.blend_rows`, what the hooks run)"),
    ("paste floor", "floor: clone + half-image box gathered in, no guard"),
    (
        "fewest ops floor",
        "floor: the fewest torch ops of a per-sample MixUp step (uniform lam, `randperm`,"
        " gather + `lerp`, one-hot targets and their `lerp`; no checks, no guard)",
    ),
    ("spectrum draw", "floor: exact FMix spectra, one per sample (`torch.randn`)"),
    (
        "exact field floor",
        "floor: the exact FMix sampler's fields, one per sample (spectra + inverse real FFT)",
    ),
)


def hook_target(name: str) -> float:
    return 1.6 if name.startswith(("FMix sample", "RandomMix sample")) else 1.3


def bench_hooks(
    rounds: int, budget: float, shape: tuple[int, ...], only: list[str] | None = None
) -> dict[str, float]:
    """Median seconds of ``x.clone()``, the floors and each hook (whole, and its mix alone),
    or of ``x.clone()`` and the contenders named in ``only``."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    y = torch.randint(0, NUM_CLASSES, (shape[0],))
    spectrum_shape = (shape[0], *shape[2:-1], shape[-1] // 2 + 1)
    buffer = torch.empty_like(x)
    perm = torch.randperm(shape[0])
    ratio = torch.rand(shape[0], *([1] * (len(shape) - 1)))
    side = round(shape[-1] * 0.5**0.5)
    half_box = (slice(None), slice(None), slice(0, side), slice(0, side))
    partners = x.index_select(0, perm)
    mask = (torch.rand(1, 1, *shape[2:]) < 0.5).float()
    fns: dict[str, Callable[[], Any]] = {
        "clone": x.clone,
        "spectrum draw": functools.partial(torch.randn, spectrum_shape, dtype=torch.complex64),
        "exact field floor": functools.partial(
            _low_frequency_noise, shape[0], tuple(shape[2:]), 3.0, None, torch.device("cpu")
        ),
        "copy floor": functools.partial(buffer.copy_, x),
        "populated clone floor": functools.partial(_populated_clone, x),
        "add floor": functools.partial(torch.add, x, 0),
        "fused traffic floor": functools.partial(_two_batches, x, buffer),
        "gather+lerp floor": functools.partial(_gather_lerp, x, perm, ratio),
        "guard floor": functools.partial(torch.sum, x, dim=tuple(range(1, x.ndim))),
        "mask lerp floor": functools.partial(torch.lerp, partners, x, mask),
        "rows floor": functools.partial(blend_rows, x, perm, ratio, torch.ones(shape[0])),
        "paste floor": functools.partial(_clone_and_paste, x, perm, half_box),
        "fewest ops floor": functools.partial(_fewest_ops_step, x, y),
    }
    for name, make in HOOKS:
        fns[name] = callback_step(make(), x, y)
        fns[f"{name} mix"] = callback_mix(make(), x)
    if only is not None:
        fns = {name: fn for name, fn in fns.items() if name == "clone" or name in only}
    return median_times(fns, rounds, budget)


def _system_malloc_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CACHING_MALLOC}


def _hook_medians(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """The medians (seconds) a ``--part hooks`` subprocess prints, by contender."""
    result = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    medians: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return medians


def hook_table(rounds: int, budget: float, quick: bool) -> str:
    """The hooks against ``x.clone()`` per shape, each shape timed in three new processes:
    with CACHING_MALLOC (memory reused), FRESH_MALLOC (fresh pages) and HUGE_PAGES (fresh huge
    pages); the targets are judged in the first two."""
    rows = []
    for shape_name in SHAPES:
        command = [sys.executable, __file__, "--part", "hooks", "--shape", shape_name]
        command += [f"--threads={torch.get_num_threads()}", *(["--quick"] if quick else [])]
        environment = _system_malloc_env()
        environment.pop("THP_MEM_ALLOC_ENABLE", None)
        reused = _hook_medians(command, {**environment, **CACHING_MALLOC})
        fresh = _hook_medians(command, {**environment, **FRESH_MALLOC})
        huge = _hook_medians(command, {**environment, **HUGE_PAGES})
        contenders: list[tuple[str, str, float | None]]
        contenders = [(name, name, hook_target(name)) for name, _ in HOOKS]
        contenders += [(key, label, None) for key, label in FLOORS]
        for key, label, target in contenders:
            ratios = [m[key] / m["clone"] for m in (reused, fresh, huge)]
            row = [shape_name, label, ms(reused[f"{key} mix"]) if target else "-"]
            for m, ratio in zip((reused, fresh, huge), ratios, strict=True):
                row += [ms(m[key]), ms(m["clone"]), f"{ratio:.2f}"]
            if target is None:
                row += ["-", "-"]
            else:
                row += [f"<= {target}", " / ".join(verdict(r <= target) for r in ratios[:2])]
            rows.append(row)
    return table(
        "Whole hook / `x.clone()` (targets: <= 1.3; FMix and RandomMix per sample <= 1.6), with"
        " the floors measured in the same rounds; memory reused (CACHING_MALLOC), fresh"
        " pages (FRESH_MALLOC) and fresh huge pages (HUGE_PAGES: PyTorch's"
        " THP_MEM_ALLOC_ENABLE=1), each in a new process",
        [
            "batch",
            "callback, lam",
            "mix ms (reused)",
            "whole hook ms (reused)",
            "clone ms (reused)",
            "hook / clone (reused)",
            "whole hook ms (fresh)",
            "clone ms (fresh)",
            "hook / clone (fresh)",
            "whole hook ms (huge pages)",
            "clone ms (huge pages)",
            "hook / clone (huge pages)",
            "target",
            "met (reused / fresh)",
        ],
        rows,
    )


# The callbacks of the digits fits: each callback by default (per batch), the per-sample ones
# and the floor of a per-sample FMix step.
FIT_CALLBACKS: dict[str, Callable[[], Any]] = {
    "MixUp": MixUp,
    "CutMix": CutMix,
    "FMix": FMix,
    "RandomMix": RandomMix,
    "MixUp per sample": lambda: MixUp(per_sample=True),
    "FMix per sample": lambda: FMix(per_sample=True),
    "RandomMix per sample": lambda: RandomMix(per_sample=True),
    "reference: the fewest ops of a per-sample FMix step": FewestOpsFMix,
}


def _digits_trainer(epochs: int, batches: int, callbacks: list[pl.Callback]) -> pl.Trainer:
    """The Trainer of the digits fits: one CPU process, training steps only, nothing written."""
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=batches,
        limit_val_batches=0,
        callbacks=callbacks,
    )


class _StepClock(pl.Callback):
    """Records the CPU time at the start of every training step, with its global step."""

    def __init__(self) -> None:
        self.marks: list[tuple[int, float]] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.marks.append((trainer.global_step, time.process_time()))


def bench_steps(repeats: int, epochs: int, batches: int) -> str:
    """The cost of each callback per training step, in fits where it mixes every other step:
    the mean CPU time of the steps it mixed over that of the steps it did not, both taken
    from one fit, so that the machine's load, which moves the whole-fit ratios by several
    hundredths from one fit to the next, is the same for both. The mean, not the median:
    on these small batches the callbacks draw the mixes of 32 batches in one hook
    (``callbacks/mixing/_ahead.py``), so one mixed step in 32 costs more than the others,
    which a median would leave out. A step's time runs from its start to the next step's
    (the hook, forward, backward, optimizer and the loop), within an epoch. Per step there
    is no fixed cost of the fit (setup, epoch ends) to dilute the ratio, so it is at least
    the whole fit's."""
    import logging
    import warnings

    from lightning_recipes import DigitsDataModule, ImageClassifier

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    def one_fit(factory: Callable[[], Any]) -> float:
        pl.seed_everything(0, verbose=False)
        callback, clock = factory(), _StepClock()
        hook = callback.on_train_batch_start

        def every_other_step(trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step % 2 == 0:
                hook(trainer, *args)

        callback.on_train_batch_start = every_other_step
        trainer = _digits_trainer(epochs, batches, [clock, callback])
        model = ImageClassifier(num_classes=10, in_channels=1, max_lr=0.1)
        trainer.fit(model, DigitsDataModule(batch_size=64))
        times: tuple[list[float], list[float]] = ([], [])  # mixed, plain
        for (step, start), (following, end) in itertools.pairwise(clock.marks):
            if following == step + 1 and step % batches != batches - 1:
                times[step % 2].append(end - start)
        return statistics.fmean(times[0]) / statistics.fmean(times[1])

    contenders: dict[str, Callable[[], Any]] = {
        **FIT_CALLBACKS,
        "reference: the fewest ops of a per-sample MixUp step": FewestOpsMixUp,
        "a hook that does nothing (the measurement's spread)": Nothing,
    }
    ratios: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, factory in contenders.items():
            ratios[name].append(one_fit(factory))
    rows = [
        [
            name,
            f"{statistics.median(values):.3f}",
            f"{min(values):.3f}-{max(values):.3f}",
            verdict(statistics.median(values) <= 1.03),
        ]
        for name, values in ratios.items()
    ]
    return table(
        f"Digits fit per step, `ImageClassifier`, the callback mixing every other step of"
        f" {epochs} epochs of {batches} batches of 64 ({repeats} fits each): mean CPU time of a"
        " mixed step / of an unmixed one (target <= 1.03)",
        ["callback", "ratio (median of the fits)", "range", "met"],
        rows,
    )


def bench_fit(repeats: int, epochs: int, batches: int) -> str:
    """End-to-end fits with and without each callback, plus the time spent inside the
    callback's hook in the same fits: the fit ratio is what the issue asks for, the hook share
    is the part of it that the callback itself costs (immune to run-to-run noise)."""
    import logging
    import warnings

    from lightning_recipes import DigitsDataModule, ImageClassifier

    def fit(name: str) -> tuple[float, float, float]:
        return one_fit(contenders[name])

    def one_fit(callback_factory: Callable[[], Any] | None) -> tuple[float, float, float]:
        pl.seed_everything(0, verbose=False)
        model = ImageClassifier(num_classes=10, in_channels=1, max_lr=0.1)
        data = DigitsDataModule(batch_size=64)
        callbacks = []
        in_hook = [0.0]
        if callback_factory is not None:
            callback = callback_factory()
            hook = callback.on_train_batch_start

            def timed_hook(*args: Any, **kwargs: Any) -> None:
                start = time.perf_counter()
                hook(*args, **kwargs)
                in_hook[0] += time.perf_counter() - start

            callback.on_train_batch_start = timed_hook
            callbacks.append(callback)
        trainer = _digits_trainer(epochs, batches, callbacks)
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.fit(model, data)
        return time.perf_counter() - start, time.process_time() - cpu_start, in_hook[0]

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    contenders: dict[str, Callable[[], Any] | None] = {"none": None, **FIT_CALLBACKS}
    fit("none")  # warm-up
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(repeats):
        # Rotate the order every round so that no contender always runs first or last.
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            samples[name].append(fit(name))
    base = statistics.median(wall for wall, _, _ in samples["none"])
    base_cpu = statistics.median(cpu for _, cpu, _ in samples["none"])
    rows = []
    for name in names[1:]:
        wall = statistics.median(w for w, _, _ in samples[name])
        cpu = statistics.median(c for _, c, _ in samples[name])
        share = statistics.median(hook / w for w, _, hook in samples[name])
        rows.append(
            [
                name,
                f"{wall:.2f}",
                f"{base:.2f}",
                f"{wall / base:.3f}",
                f"{cpu / base_cpu:.3f}",
                f"{share:.1%}",
                verdict(cpu / base_cpu <= 1.03),
            ]
        )
    return table(
        f"Digits fit, `ImageClassifier`, {epochs} epochs of {batches} batches of 64 ({repeats}"
        " interleaved fits each): with / without the callback (target <= 1.03, CPU time)",
        [
            "callback",
            "with s (median wall)",
            "without s (median wall)",
            "ratio, wall",
            "ratio, CPU time",
            "time in the callback's hook",
            "met (CPU time)",
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budgets, for a smoke run")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for every contender (default 1: on a shared machine, ops with"
        " more threads than idle cores wait on descheduled OpenMP threads, which swamps the"
        " ratios)",
    )
    parser.add_argument(
        "--part",
        choices=("all", "batches", "peers", "fit", "hooks"),
        default="all",
        help="`batches`: the tables against the peers here and the hooks against a clone in"
        " fresh subprocesses; `peers`: only the tables against the peers; `fit`: the digits"
        " fits; `all`: `batches` and `fit`, the fits in a fresh subprocess (each part leaves"
        " the process, e.g. its allocator, in a state that skews the other); `hooks`: one"
        " shape's hook medians as JSON (what `batches` runs)",
    )
    parser.add_argument("--shape", choices=tuple(SHAPES), help="the shape of `--part hooks`")
    parser.add_argument(
        "--only", action="append", help="with `--part hooks`: time this contender (and a clone)"
    )
    malloc = parser.add_mutually_exclusive_group()
    malloc.add_argument(
        "--system-malloc",
        action="store_true",
        help="time the tables against the peers with glibc's default malloc instead of"
        " CACHING_MALLOC (the hooks against a clone are timed under each setting)",
    )
    malloc.add_argument(
        "--fresh-malloc",
        action="store_true",
        help="time the tables against the peers with FRESH_MALLOC (glibc's thresholds fixed"
        " at their grown values: a 64x3x224x224 batch is fresh memory, as with glibc's"
        " defaults, whatever ran before) instead of CACHING_MALLOC",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds, budget = (3, 0.3) if args.quick else (21, 2.0)
    if args.part == "hooks":  # in the malloc setting the caller chose
        print(json.dumps(bench_hooks(rounds, budget, SHAPES[args.shape], args.only)))
        return
    # The digits fits run as a user's training does, with glibc's defaults.
    settings, setting_name = (
        (FRESH_MALLOC, "fresh pages (FRESH_MALLOC)")
        if args.fresh_malloc
        else (CACHING_MALLOC, "caching (CACHING_MALLOC)")
    )
    fixed = not args.system_malloc and args.part != "fit"
    if fixed and any(os.environ.get(k) != v for k, v in settings.items()):
        # Settings are read when the process starts: run this script again with them.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **settings})
    if args.part == "fit":
        print(bench_fit(repeats=1 if args.quick else 11, epochs=6, batches=4 if args.quick else 19))
        print(
            bench_steps(repeats=1 if args.quick else 5, epochs=2 if args.quick else 12, batches=20)
        )
        return
    print(
        f"torch {torch.__version__}, timm {_version('timm')}, torchvision"
        f" {_version('torchvision')}, numpy {np.__version__}; CPU float32,"
        f" {torch.get_num_threads()} thread(s); median of {rounds} interleaved rounds per row;"
        f" malloc for the tables against the peers: "
        f"{setting_name if fixed else 'glibc defaults'}\n"
    )
    for block in bench_batches(rounds, budget, SHAPES):
        print(block, flush=True)
    if args.part == "peers":
        return
    print(hook_table(rounds, budget, args.quick), flush=True)
    if args.part == "all":
        command = [sys.executable, __file__, "--part", "fit", "--threads", str(args.threads)]
        env = {k: v for k, v in os.environ.items() if k not in CACHING_MALLOC}
        subprocess.run([*command, *(["--quick"] if args.quick else [])], check=True, env=env)


if __name__ == "__main__":
    main()
