"""Per-sample FMix with the fast sampler, a sample at a time on the CPU
(``fmix._mix_fmix_rows``): each mask is finished, thresholded and counted in a buffer of one
mask's size, and the result is the batched masks' blend bit for bit, from the same draws."""

from __future__ import annotations

import importlib

import pytest
import torch
from test_rows_blend import (
    _bits,
    _gen,
    _laid_out,
    _run_hook,
    _spy_module,
    _with_zeros,
    threads,
)

from lightning_recipes.callbacks.mixing import FMix
from lightning_recipes.functional import _rows
from lightning_recipes.functional._fmix_noise import (
    field_parts,
    lattice_points,
    sub_lattice,
    upsample_first,
)

fmix_module = importlib.import_module("lightning_recipes.functional.fmix")

__all__ = ["threads"]  # the fixture, imported for the tests below


def _rows_for(monkeypatch: pytest.MonkeyPatch, rows: bool) -> None:
    """Every sample counts as large (``rows``), or none does."""
    monkeypatch.setattr(_rows, "_ROW_BYTES", 64 if rows else 1 << 40)
    monkeypatch.setattr(_rows, "_ROW_ELEMENTS_PER_THREAD", 1)


def _mix(x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor, **options: object) -> tuple:
    generator = _gen(31)
    mixed, weights = fmix_module.fmix(x, lam, perm, generator=generator, **options)
    return mixed, weights, generator.get_state()


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((6, 3, 64, 64), torch.float32),
        ((5, 2, 65, 97), torch.float32),
        ((5, 2, 64, 70), torch.float64),
        ((4, 3, 64, 64), torch.bfloat16),
        ((4, 3, 96, 64), torch.float16),
        ((3, 2, 40, 64, 66), torch.float32),
    ],
    ids=str,
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "view"])
def test_per_sample_fmix_a_row_at_a_time_gives_the_batched_masks_bits(
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    layout: str,
) -> None:
    x = _with_zeros(torch.randn(shape, generator=_gen(30)), 32).to(dtype)
    x[1].view(-1)[7] = float("nan")
    x = _laid_out(x, layout)
    lam = torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0, 0.05][: shape[0]])
    perm = torch.roll(torch.arange(shape[0]), 1)
    calls = _spy_module(monkeypatch, "lightning_recipes.functional.fmix", "blend_mask_rows")
    _rows_for(monkeypatch, rows=False)
    expected, expected_weights, expected_state = _mix(x, lam, perm)
    assert calls == []
    _rows_for(monkeypatch, rows=True)
    mixed, weights, state = _mix(x, lam, perm)
    assert calls == [shape[0]]
    assert torch.equal(_bits(mixed), _bits(expected))
    assert mixed.stride() == expected.stride()  # the memory format of the batched path
    assert torch.equal(weights, expected_weights)
    assert torch.equal(state, expected_state)  # the same draws, no more, no fewer
    # Sample 2 takes sample 1, which holds a NaN: left as it is (its values; `lerp` with
    # itself may turn a -0.0 into +0.0), with weight 1.
    assert weights[2] == 1.0 and torch.equal(mixed[2], x[2])
    assert weights[0] == 0.0 and weights[4 % shape[0]] >= 0.0
    assert not torch.equal(_bits(mixed), _bits(x))  # it mixed


def test_the_weights_are_each_masks_mean_and_the_masks_follow_lam(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Constant samples 0 and 1 swapped: each mixed sample's share of its own value is its
    # mask's mean, which the weights must be; and the mean follows lam as closely as the
    # fast sampler's does (the FMix card: under 1% at 224x224).
    x = torch.stack([torch.zeros(3, 128, 96), torch.ones(3, 128, 96)])
    lam = torch.tensor([0.3, 0.8])
    _rows_for(monkeypatch, rows=True)
    mixed, weights, _ = _mix(x, lam, torch.tensor([1, 0]))
    own = torch.stack([(mixed[0] == 0).float().mean(), (mixed[1] == 1).float().mean()])
    assert torch.equal(weights, own)
    torch.testing.assert_close(weights, lam, atol=0.02, rtol=0)


@pytest.mark.parametrize(
    ("case", "chosen"),
    [
        ("per-sample large", True),
        ("one lam for the batch", False),
        ("soft edge", False),
        ("exact sampler", False),
        ("in place", False),
        ("small samples", False),
        ("1-D", False),
        ("lattice is the whole input", False),
        ("first dim not upsampled", False),
    ],
)
def test_the_rows_are_chosen_only_where_documented(
    monkeypatch: pytest.MonkeyPatch, case: str, chosen: bool
) -> None:
    monkeypatch.setattr(_rows, "_ROW_ELEMENTS_PER_THREAD", 1)
    shapes = {
        "small samples": (2, 3, 64, 64),
        "1-D": (2, 2, 70000),
        "first dim not upsampled": (2, 40, 9, 256),
        "lattice is the whole input": (2, 80, 40, 40),
    }
    x = torch.zeros(shapes.get(case, (2, 3, 160, 160)))
    lam: float | torch.Tensor = 0.5 if case == "one lam for the batch" else torch.full((2,), 0.5)
    arguments = {
        "decay_power": 3.0,
        "max_soft": 0.1 if case == "soft edge" else 0.0,
        "spatial_dims": None,
        "inplace": case == "in place",
        "mask_sampler": "exact" if case == "exact sampler" else "fast",
    }
    assert fmix_module._fmix_rows_pay(x, lam, **arguments) is chosen
    calls = _spy_module(monkeypatch, "lightning_recipes.functional.fmix", "blend_mask_rows")
    options = {k: v for k, v in arguments.items() if k != "decay_power"}
    fmix_module.fmix(x, lam, torch.tensor([1, 0]), generator=_gen(0), **options)
    assert calls == ([2] if chosen else [])


def test_the_lattice_points_are_the_whole_fields_points() -> None:
    # Found from the partial fields (the rows of the lattice times its columns), they are
    # the points of the finished field up to float rounding: the threshold's input.
    for size in [(224, 224), (65, 97), (40, 64, 66)]:
        field, matrix = field_parts(8, size, 3.0, _gen(5), torch.device("cpu"))
        assert matrix is not None
        whole = sub_lattice(upsample_first(field, matrix))
        # Float rounding of the field's largest values (up to 3e5 at 224x224), a few ulps.
        spread = float(whole.abs().max())
        torch.testing.assert_close(lattice_points(field, matrix), whole, rtol=0, atol=1e-6 * spread)


def test_the_callback_mixes_large_samples_per_sample_a_row_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = _with_zeros(torch.randn(6, 3, 64, 80, generator=_gen(33)), 34)
    y = torch.arange(6) % 4

    def run() -> list[torch.Tensor]:
        return _run_hook(FMix(seed=2, per_sample=True), [x, y], 4)

    calls = _spy_module(monkeypatch, "lightning_recipes.functional.fmix", "blend_mask_rows")
    _rows_for(monkeypatch, rows=True)
    rows = run()
    assert calls == [6]
    _rows_for(monkeypatch, rows=False)
    batched = run()
    assert calls == [6]
    assert not torch.equal(rows[0], x)
    assert torch.equal(_bits(rows[0]), _bits(batched[0])) and torch.equal(rows[1], batched[1])
