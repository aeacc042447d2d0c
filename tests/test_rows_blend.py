"""The guard and the blend a sample at a time on the CPU (``lightning_recipes.functional._rows``):
the batched torch ops' result bit for bit, chosen only where it is documented to be."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
import torch

from lightning_recipes.callbacks.mixing import CutMix, FMix, MixUp, RandomMix
from lightning_recipes.functional import _rows, mixup
from lightning_recipes.functional.blend import _blend, _blend_finite, _per_sample_partners


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batched(
    x: torch.Tensor, perm: torch.Tensor, weight: float | torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batched torch ops: the guard from each sample's sum, a gather, one ``lerp``."""
    partners, partner_finite = _per_sample_partners(x, perm)
    return _blend(x, partners, weight, False), torch.where(partner_finite, weights, 1.0)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bits of ``t`` (contiguous), NaN payloads folded into one value: which NaN an op
    returns differs between its vectorised and scalar loops, not whether it is NaN."""
    integer = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.nan_to_num(7.0).contiguous().view(integer)


def _with_zeros(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` with a quarter of its elements set to ``-0.0`` and a tenth to ``+0.0``, spread
    over every position: ``lerp``'s vectorised and scalar loops give a copied ``-0.0``
    different signs (``end + 0 * diff`` against ``end - diff * 0``), so a path that splits
    its loops at other elements than the batched ops shows up as other bits here."""
    draw = torch.rand(x.shape, generator=_gen(seed))
    return x.masked_fill(draw < 0.25, -0.0).masked_fill(draw > 0.9, 0.0)


def _run_hook(callback: MixUp, batch: list[torch.Tensor], classes: int) -> list[torch.Tensor]:
    """The callback's ``setup`` and ``on_train_batch_start`` on a new list of ``batch``'s
    items, with stand-ins for the trainer and the module; returns the list as mixed."""
    from types import SimpleNamespace

    trainer = SimpleNamespace(global_rank=0, current_epoch=0, global_step=0, is_global_zero=True)
    module = SimpleNamespace(num_classes=classes, hparams={}, log=lambda *a, **k: None)
    callback.setup(trainer, module, "fit")  # type: ignore[arg-type]
    mixed = list(batch)
    callback.on_train_batch_start(trainer, module, mixed, 0)  # type: ignore[arg-type]
    return mixed


KINDS = ["float", "large float", "ratio", "mask", "batch mask", "soft mask"]


def _weight(kind: str, shape: tuple[int, ...], seed: int) -> float | torch.Tensor:
    """A weight as the kernels make them for a batch ``(batch, channels, *spatial)``."""
    batch, spatial = shape[0], shape[2:]
    return {
        "float": 0.3,  # not a float16 or bfloat16 number: used in float32 by `lerp`
        "large float": 0.7,
        "ratio": torch.rand(batch, *(1,) * (len(shape) - 1), generator=_gen(seed)),
        "mask": (torch.rand(batch, 1, *spatial, generator=_gen(seed)) > 0.5).float(),
        "batch mask": (torch.rand(1, 1, *spatial, generator=_gen(seed)) > 0.5).float(),
        "soft mask": torch.rand(batch, 1, *spatial, generator=_gen(seed)),
    }[kind]


@pytest.fixture
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "shape", [(7, 3, 31, 17), (5, 3, 64, 64), (6, 2, 4, 5, 6), (4, 2, 7)], ids=str
)
def test_rows_give_the_batched_ops_bits(
    threads: int, dtype: torch.dtype, kind: str, shape: tuple[int, ...]
) -> None:
    # Odd sizes (rows not a multiple of any vector width) and several threads split the
    # element loops at other places than the batched ops do: the bits must not move.
    batch = shape[0]
    x = _with_zeros(torch.randn(shape, generator=_gen(1)).mul_(3), 21).to(dtype)
    x.view(-1)[:4] = torch.tensor([-0.0, 0.0, 1e-30, -1e-30]).to(dtype)
    x[1].view(-1)[5] = float("nan")
    x[2].view(-1)[3] = float("inf")
    perm = torch.randperm(batch, generator=_gen(2))
    weight = _weight(kind, shape, 3)
    if isinstance(weight, torch.Tensor):
        weight = weight.to(dtype)
    weights = torch.rand(batch, generator=_gen(4))
    expected, expected_weights = _batched(x, perm, weight, weights)
    mixed, got_weights = _rows.blend_rows(x, perm, weight, weights)
    assert mixed.dtype == dtype and mixed.shape == x.shape and mixed.stride() == x.stride()
    assert torch.equal(mixed.isnan(), expected.isnan())
    assert torch.equal(_bits(mixed), _bits(expected))
    assert torch.equal(got_weights, expected_weights)
    # The scenario happened: samples 1 and 2 are broken, so whoever took them is unmixed.
    broken_partner = (perm == 1) | (perm == 2)
    assert broken_partner.sum() == 2
    assert torch.equal(got_weights[broken_partner], torch.ones(2))
    for i in broken_partner.nonzero().flatten().tolist():
        own = isinstance(weight, torch.Tensor) and len(weight) > 1
        alone = weight[i : i + 1] if own else weight  # type: ignore[index]
        itself = _blend(x[i : i + 1], torch.tensor([0]), alone, False)[0]
        assert torch.equal(_bits(mixed[i]), _bits(itself))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rows_keep_channels_last(dtype: torch.dtype) -> None:
    x = torch.randn(5, 3, 12, 10, generator=_gen(5)).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    perm = torch.randperm(5, generator=_gen(6))
    for weight in (0.25, torch.rand(5, 1, 12, 10, generator=_gen(7)).to(dtype)):
        expected, _ = _batched(x, perm, weight, torch.ones(5))
        mixed, _ = _rows.blend_rows(x, perm, weight, torch.ones(5))
        assert mixed.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(_bits(mixed), _bits(expected))


def test_a_finite_sample_whose_sum_overflows_is_left_unmixed_as_by_the_batched_guard() -> None:
    # Every value is finite, but sample 1 sums beyond float32's range: the batched guard
    # leaves whoever takes it as partner unmixed, and so must the rows.
    x = torch.ones(3, 2, 8, 8)
    x[1] = 3e37
    perm = torch.tensor([1, 2, 0])
    expected, expected_weights = _batched(x, perm, 0.5, torch.full((3,), 0.5))
    mixed, weights = _rows.blend_rows(x, perm, 0.5, torch.full((3,), 0.5))
    assert weights.tolist() == expected_weights.tolist() == [1.0, 0.5, 0.5]
    assert torch.equal(mixed, expected) and torch.equal(mixed[0], x[0])


@pytest.fixture
def small_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of a few hundred bytes count as large, so that small batches take the rows."""
    monkeypatch.setattr(_rows, "_ROW_BYTES", 64)
    monkeypatch.setattr(_rows, "_ROW_ELEMENTS_PER_THREAD", 1)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Records the shape of every batch :func:`blend_rows` mixes (``blend`` imports it)."""
    # The module, not the function `blend` that the package re-exports under its name.
    blend_module = importlib.import_module("lightning_recipes.functional.blend")
    calls: list[tuple[int, ...]] = []
    real = _rows.blend_rows

    def spy(x: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(tuple(x.shape))
        return real(x, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(blend_module, "blend_rows", spy)
    return calls


@pytest.mark.usefixtures("small_rows")
@pytest.mark.parametrize(
    "callback",
    [
        MixUp(seed=0),
        MixUp(seed=0, per_sample=True),
        CutMix(seed=0, per_sample=True),
        FMix(seed=0),
        FMix(seed=0, per_sample=True, mask_sampler="fast"),
        RandomMix({"mixup": 0.25, "cutmix": 0.25, "fmix": 0.5}, seed=0, per_sample=True),
    ],
    ids=["mixup", "mixup-sample", "cutmix-sample", "fmix", "fmix-fast-sample", "randommix"],
)
def test_every_callback_mixes_large_samples_a_row_at_a_time_with_the_same_bits(
    monkeypatch: pytest.MonkeyPatch, callback: MixUp
) -> None:
    x = _with_zeros(torch.randn(6, 3, 16, 17, generator=_gen(8)), 25)
    y = torch.arange(6) % 4

    def run() -> list[torch.Tensor]:
        callback._batches = 0  # the same draws again
        return _run_hook(callback, [x, y], 4)

    calls = _spy(monkeypatch)
    box_calls = _spy_module(monkeypatch, "lightning_recipes.functional.cutmix", "blend_box_rows")
    rows = run()
    # The rows mixed this batch (per-sample CutMix: the rows through its boxes, no mask).
    assert calls + box_calls == [tuple(x.shape) if calls else x.shape[0]]
    monkeypatch.setattr(_rows, "_ROW_BYTES", 1 << 40)  # now nothing counts as large
    batched = run()
    assert len(calls + box_calls) == 1
    assert not torch.equal(rows[0], x)  # it did mix
    assert torch.equal(_bits(rows[0]), _bits(batched[0])) and torch.equal(rows[1], batched[1])


def _large(batch: int = 2, side: int = 160) -> torch.Tensor:
    return torch.zeros(batch, 3, side, side)  # 300 KiB a sample


@pytest.mark.parametrize("threads", [1], indirect=True)
@pytest.mark.parametrize(
    ("case", "chosen"),
    [
        ("large samples", True),
        ("in place", False),
        ("small samples", False),
        ("needs grad", False),
        ("1-D batch", False),
        ("weight of other dims", False),
        ("weight of another batch size", False),
        ("weight that needs grad", False),
    ],
)
def test_rows_are_chosen_only_where_documented(threads: int, case: str, chosen: bool) -> None:
    x, weight, inplace = _large(), torch.rand(2, 1, 1, 1), False
    if case == "in place":
        inplace = True
    elif case == "small samples":
        x = _large(side=32)
    elif case == "needs grad":
        x.requires_grad_(True)
    elif case == "1-D batch":
        x = torch.zeros(1 << 20)
        weight = torch.rand(1 << 20)
    elif case == "weight of other dims":
        weight = torch.rand(1, 1, 1)
    elif case == "weight of another batch size":
        weight = torch.rand(3, 1, 1, 1)
    elif case == "weight that needs grad":
        weight.requires_grad_(True)
    assert _rows.rows_pay(x, weight, inplace) is chosen


@pytest.mark.parametrize("threads", [1, 2, 4], indirect=True)
def test_rows_want_enough_elements_for_every_thread(threads: int) -> None:
    # 3x160x160 = 76800 elements: enough for one thread (65536), not for two.
    assert _rows.rows_pay(_large(), 0.5, False) is (threads == 1)
    # 3x224x224 = 150528: enough for two, not for four.
    assert _rows.rows_pay(_large(side=224), 0.5, False) is (threads <= 2)


@pytest.mark.parametrize("threads", [1], indirect=True)
def test_the_public_functions_take_the_rows_for_large_samples_and_not_in_place(
    monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    calls = _spy(monkeypatch)
    x = torch.randn(3, 3, 160, 160, generator=_gen(9))
    perm = torch.tensor([2, 0, 1])
    mixed, weights = mixup(x, 0.25, perm)
    assert calls == [tuple(x.shape)]
    assert weights.tolist() == [0.25] * 3
    assert torch.equal(mixed, _batched(x, perm, 0.25, weights)[0])
    in_place, _ = _blend_finite(x.clone(), perm, 0.25, weights, inplace=True)
    assert len(calls) == 1  # in place, the partners are gathered first
    assert torch.equal(in_place, mixed)


def _batched_paste(
    x: torch.Tensor, region: tuple[slice, ...], perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-batch CutMix's batched ops: the guard over every box, a clone, a gather of boxes."""
    boxes = x[region]
    partners, partner_finite = _per_sample_partners(boxes, perm)
    mixed = x.clone()
    torch.index_select(boxes, 0, partners, out=mixed[region])
    return mixed, partner_finite


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 7], ids=lambda n: f"{n}-per-chunk")
def test_pasting_a_few_rows_at_a_time_gives_the_batched_bits(
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
    dtype: torch.dtype,
    channels_last: bool,
    chunk: int,
) -> None:
    # Samples per chunk: 1, 3 (chunks of 3, 3 and 1, the partners across chunks) or the batch.
    row_bytes = 3 * 31 * 17 * torch.tensor([], dtype=dtype).element_size()
    monkeypatch.setattr(_rows, "_PASTE_CHUNK_BYTES", chunk * row_bytes + row_bytes // 2)
    x = _with_zeros(torch.randn(7, 3, 31, 17, generator=_gen(10)), 22).to(dtype)
    x[0, 0, 0, 0] = -0.0
    x[1, 2, 10, 5] = float("nan")  # inside the box: whoever takes sample 1 keeps its own box
    x[2, 0, 0, 0] = float("inf")  # outside the box: sample 2's box is finite, so it is given
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    region = (slice(None), slice(None), slice(4, 21), slice(2, 11))
    perm = torch.tensor([1, 2, 3, 4, 5, 6, 0])
    expected, expected_finite = _batched_paste(x, region, perm)
    mixed, partner_finite = _rows.paste_rows(x, region, perm)
    assert mixed.stride() == x.stride()
    assert torch.equal(_bits(mixed), _bits(expected)) and torch.equal(
        mixed.isnan(), expected.isnan()
    )
    assert partner_finite.tolist() == expected_finite.tolist()
    assert partner_finite.tolist() == [False] + [True] * 6  # the scenario happened
    assert torch.equal(_bits(mixed[0]), _bits(x[0]))  # unmixed, its -0.0 kept
    assert torch.equal(_bits(mixed[1][region[1:]]), _bits(x[2][region[1:]]))


@pytest.mark.parametrize("threads", [1], indirect=True)
@pytest.mark.parametrize("inplace", [False, True])
def test_per_batch_cutmix_pastes_large_samples_a_row_at_a_time_out_of_place(
    monkeypatch: pytest.MonkeyPatch, threads: int, inplace: bool
) -> None:
    from lightning_recipes.functional import cutmix

    # The module, not the function `cutmix` that the package re-exports under its name.
    cutmix_module = importlib.import_module("lightning_recipes.functional.cutmix")
    calls: list[int] = []
    real = _rows.paste_rows

    def spy(x: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(x.shape[0])
        return real(x, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(cutmix_module, "paste_rows", spy)
    x = torch.randn(4, 3, 160, 160, generator=_gen(11))
    perm = torch.tensor([3, 0, 1, 2])
    mixed, weights = cutmix(x.clone(), 0.6, perm, generator=_gen(12), inplace=inplace)
    assert calls == ([] if inplace else [4])
    monkeypatch.setattr(_rows, "_ROW_BYTES", 1 << 40)
    batched, batched_weights = cutmix(x.clone(), 0.6, perm, generator=_gen(12))
    assert len(calls) == (0 if inplace else 1)
    assert torch.equal(mixed, batched) and torch.equal(weights, batched_weights)
    assert not torch.equal(mixed, x) and weights.lt(1).all()


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("correct_lam", [True, False])
@pytest.mark.parametrize("shape", [(8, 3, 31, 17), (6, 2, 40), (5, 2, 6, 7, 5)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "view"])
def test_per_sample_cutmix_a_row_at_a_time_gives_the_mask_blend_bits(
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
    dtype: torch.dtype,
    correct_lam: bool,
    shape: tuple[int, ...],
    layout: str,
) -> None:
    from lightning_recipes.functional import cutmix

    x = _with_zeros(torch.randn(shape, generator=_gen(13)), 23).to(dtype)
    x[1].view(-1)[0] = float("nan")
    x = _laid_out(x, layout)
    lam = torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0, 0.05, 0.95, 0.6][: shape[0]])
    perm = torch.roll(torch.arange(shape[0]), 1)
    calls = _spy_module(monkeypatch, "lightning_recipes.functional.cutmix", "blend_box_rows")
    monkeypatch.setattr(_rows, "_ROW_BYTES", 1 << 40)  # the mask's blend
    expected, expected_weights = cutmix(x, lam, perm, generator=_gen(14), correct_lam=correct_lam)
    assert calls == []
    monkeypatch.setattr(_rows, "_ROW_BYTES", 64)  # a row at a time
    monkeypatch.setattr(_rows, "_ROW_ELEMENTS_PER_THREAD", 1)
    mixed, weights = cutmix(x, lam, perm, generator=_gen(14), correct_lam=correct_lam)
    assert calls == [shape[0]]
    assert torch.equal(_bits(mixed), _bits(expected))
    assert torch.equal(weights, expected_weights)
    assert weights[2] == 1.0  # sample 2 takes sample 1, which holds a NaN: left unmixed
    assert torch.equal(_bits(mixed[2]), _bits(expected[2]))
    assert torch.equal(mixed[4], x[4]) and weights[4] == 1.0  # lam 1: no box


def _laid_out(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` (same values) channels-last, or as a view of a larger tensor (strides that are
    not dense, a storage offset, so that ``empty_like`` makes the result contiguous)."""
    if layout == "channels_last":
        formats = {4: torch.channels_last, 5: torch.channels_last_3d}
        return x.contiguous(memory_format=formats.get(x.ndim, torch.contiguous_format))
    if layout == "view":
        larger = torch.full((*x.shape[:-1], x.shape[-1] + 3), float("nan"), dtype=x.dtype)
        view = larger[..., 2:-1]
        view.copy_(x)
        assert not view.is_contiguous() and view.storage_offset() == 2
        return view
    return x


def _spy_module(monkeypatch: pytest.MonkeyPatch, module: str, name: str) -> list[int]:
    """Records the batch size of every call of ``module.name``."""
    target = importlib.import_module(module)
    real = getattr(target, name)
    calls: list[int] = []

    def spy(x: torch.Tensor, *args: object) -> object:
        calls.append(x.shape[0])
        return real(x, *args)

    monkeypatch.setattr(target, name, spy)
    return calls


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "probs",
    [None, {"cutmix": 1.0}, {"mixup": 0.3, "cutmix": 0.7}, {"cutmix": 0.5, "fmix": 0.5}],
    ids=["default", "cutmix-only", "mixup-cutmix", "with-fmix"],
)
def test_randommix_per_sample_through_boxes_gives_the_product_of_maps_bits(
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
    dtype: torch.dtype,
    probs: dict[str, float] | None,
) -> None:
    x = _with_zeros(torch.randn(12, 3, 20, 25, generator=_gen(15)), 24).to(dtype)
    x[3, 1, 5, 5] = float("inf")
    y = torch.arange(12) % 5

    def run() -> list[torch.Tensor]:
        callback = RandomMix(probs, seed=3, per_sample=True, correct_lam=probs is None)
        return _run_hook(callback, [x, y], 5)

    calls = _spy_module(monkeypatch, "lightning_recipes.callbacks.mixing._draw", "blend_box_rows")
    monkeypatch.setattr(_rows, "_ROW_BYTES", 64)
    monkeypatch.setattr(_rows, "_ROW_ELEMENTS_PER_THREAD", 1)
    rows = run()
    assert calls == ([] if probs and "fmix" in probs else [12])  # FMix needs its mask
    monkeypatch.setattr(_rows, "_ROW_BYTES", 1 << 40)  # the product of the maps
    maps = run()
    assert torch.equal(_bits(rows[0]), _bits(maps[0])) and torch.equal(rows[1], maps[1])
    assert not torch.equal(rows[0], x)  # it mixed
    assert rows[0].isfinite().sum() < x.numel()  # the broken image stays broken
