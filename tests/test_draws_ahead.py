"""The mixes of small CPU batches drawn several batches ahead
(``lightning_recipes.callbacks.mixing._ahead``): the same bits as each batch drawing its own,
whatever the batches' shapes, resumes and schedule; and the CPU guard's whole-batch sum."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lightning_recipes.callbacks.mixing import CutMix, FMix, MixUp, RandomMix, _ahead
from lightning_recipes.callbacks.mixing._base import MixingCallback
from lightning_recipes.functional.blend import _finite_partners, _per_sample_partners

CLASSES = 5

CALLBACKS: dict[str, Callable[[], MixingCallback]] = {
    "MixUp": lambda: MixUp(seed=1),
    "MixUp per sample p=0.7": lambda: MixUp(seed=1, per_sample=True, p=0.7),
    "CutMix": lambda: CutMix(seed=1),
    "CutMix per sample": lambda: CutMix(seed=1, per_sample=True),
    "CutMix per sample uncorrected": lambda: CutMix(seed=1, per_sample=True, correct_lam=False),
    "FMix": lambda: FMix(seed=1),
    "FMix per sample": lambda: FMix(seed=1, per_sample=True),
    "FMix per sample soft": lambda: FMix(seed=1, per_sample=True, max_soft=0.1),
    "RandomMix p=0.6": lambda: RandomMix({"mixup": 0.3, "cutmix": 0.3, "fmix": 0.4}, seed=1, p=0.6),
    "RandomMix per sample": lambda: RandomMix(
        {"mixup": 0.3, "cutmix": 0.3, "fmix": 0.4}, seed=1, per_sample=True
    ),
    "RandomMix per sample by default": lambda: RandomMix(seed=1, per_sample=True),
}


def _trainer(step: int = 0) -> Any:
    return SimpleNamespace(
        global_rank=0, current_epoch=0, global_step=step, is_global_zero=True, max_steps=-1
    )


def _module() -> Any:
    return SimpleNamespace(num_classes=CLASSES, hparams={}, log=lambda *a, **k: None)


def _batches(shapes: list[tuple[int, ...]]) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        [torch.randn(shape, generator=generator), torch.randint(0, CLASSES, shape[:1])]
        for shape in shapes
    ]


def _mix_all(
    callback: MixingCallback, batches: list[list[torch.Tensor]], start: int = 0, setup: bool = True
) -> list[list[Any]]:
    """The batches as the callback mixes them, from batch index ``start`` on."""
    trainer, module = _trainer(), _module()
    if setup:
        callback.setup(trainer, module, "fit")
    out = []
    for index, batch in enumerate(batches, start=start):
        mixed = list(batch)
        callback.on_train_batch_start(trainer, module, mixed, index)
        out.append(mixed)
    return out


def _assert_same(got: list[list[Any]], expected: list[list[Any]]) -> None:
    assert len(got) == len(expected)
    for (x, y), (x_expected, y_expected) in zip(got, expected, strict=True):
        assert torch.equal(x, x_expected)
        assert torch.equal(y, y_expected)


def _drawn_at_each_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ahead, "AHEAD_BYTES", 0)


# Full batches, a smaller last batch of an epoch, then the next epoch; another image size;
# 1-D and 3-D inputs (whose CutMix boxes are made a batch at a time); a batch of one (not
# mixed).
SHAPES = [(6, 2, 7, 9)] * 3 + [(4, 2, 7, 9)] + [(6, 2, 7, 9)] * 9 + [(6, 3, 5, 5)] * 2
SHAPES += [(5, 2, 11)] * 2 + [(4, 1, 3, 4, 5)] * 3 + [(1, 2, 7, 9)] + [(6, 2, 7, 9)] * 2


@pytest.mark.parametrize("name", list(CALLBACKS))
def test_mixes_drawn_ahead_are_the_bits_each_batch_draws_itself(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    batches = _batches(SHAPES)
    ahead = CALLBACKS[name]()
    got = _mix_all(ahead, batches)
    assert ahead._ahead._mixes  # the scenario: mixes of coming batches are held
    with monkeypatch.context() as patch:
        _drawn_at_each_batch(patch)
        expected = _mix_all(CALLBACKS[name](), batches)
    _assert_same(got, expected)
    assert not torch.equal(got[0][0], batches[0][0])  # it mixed


@pytest.mark.parametrize(
    ("shape", "dtype", "sampler"),
    [
        ((70, 1, 8, 8), torch.float32, "fast"),  # 4480 values: ranked by the histogram
        ((6, 2, 7, 9), torch.bfloat16, "fast"),  # no numpy dtype: ranked by torch's argsort
        ((6, 2, 7, 9), torch.float16, "fast"),
        ((6, 1, 16, 16), torch.float32, "exact"),  # fields by the inverse FFT
        ((6, 1, 16, 16), torch.float32, "fast"),  # the fast sampler: drawn whole
    ],
)
def test_per_sample_fmix_masks_finished_together_are_the_bits_drawn_alone(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], dtype: torch.dtype, sampler: str
) -> None:
    # `FMixKernel.finish` ranks the fields of a block's batches at once where numpy ranks
    # them, else one batch at a time: the same masks either way.
    batches = [[x.to(dtype), y] for x, y in _batches([shape] * 5)]
    got = _mix_all(FMix(seed=2, per_sample=True, mask_sampler=sampler), batches)
    with monkeypatch.context() as patch:
        _drawn_at_each_batch(patch)
        expected = _mix_all(FMix(seed=2, per_sample=True, mask_sampler=sampler), batches)
    _assert_same(got, expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda: MixUp(seed=1, inplace=True),
        lambda: CutMix(seed=1, inplace=True),  # the paste drawn ahead, written into x
        lambda: FMix(seed=1, per_sample=True, inplace=True),
        lambda: RandomMix(seed=1, per_sample=True, inplace=True),
    ],
)
def test_mixes_drawn_ahead_write_into_the_batch_as_drawn_alone(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[], MixingCallback]
) -> None:
    batches = _batches([(6, 2, 7, 9)] * 4 + [(4, 2, 7, 9)] + [(6, 2, 7, 9)] * 3)
    copies = [[x.clone(), y] for x, y in batches]
    got = _mix_all(make(), copies)
    with monkeypatch.context() as patch:
        _drawn_at_each_batch(patch)
        expected = _mix_all(make(), [[x.clone(), y] for x, y in batches])
    _assert_same(got, expected)
    assert all(mixed[0] is copy[0] for mixed, copy in zip(got, copies, strict=True))
    assert not torch.equal(copies[0][0], batches[0][0])  # written into


@pytest.mark.parametrize("name", ["FMix per sample", "RandomMix p=0.6"])
def test_a_resume_inside_a_block_draws_what_the_uninterrupted_run_drew(name: str) -> None:
    batches = _batches([(6, 2, 7, 9)] * 12)
    expected = _mix_all(CALLBACKS[name](), batches)
    first = CALLBACKS[name]()
    _mix_all(first, batches[:5])  # stops 5 batches into a block
    state = pickle.loads(pickle.dumps(first.state_dict()))
    resumed = CALLBACKS[name]()
    resumed.setup(_trainer(), _module(), "fit")
    resumed._ahead.take(0, batches[0][0], lambda counts: [None] * len(counts))  # stale ones
    resumed.load_state_dict(state)
    assert not resumed._ahead._mixes
    _assert_same(_mix_all(resumed, batches[5:], start=5, setup=False), expected[5:])


def test_blocks_are_drawn_once_per_block_of_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ahead, "AHEAD_BATCHES", 8)
    callback = FMix(seed=1, per_sample=True)
    counts: list[int] = []
    draw_ahead = callback._draw_ahead

    def counting(x: torch.Tensor, drawn: Any) -> Any:
        counts.extend(drawn)
        return draw_ahead(x, drawn)

    monkeypatch.setattr(callback, "_draw_ahead", counting)
    _mix_all(callback, _batches([(6, 2, 7, 9)] * 10 + [(4, 2, 7, 9)] + [(6, 2, 7, 9)] * 2))
    block = _ahead.AHEAD_BATCHES
    # Batches 0-7 in the first hook, 8-15 at batch 8; the smaller batch 10 draws its own
    # alone; batches 11 and 12 find theirs drawn at batch 8.
    assert counts == [*range(block), *range(8, 8 + block), 10]


def test_large_or_accelerator_batches_draw_at_their_own_batch() -> None:
    x = torch.zeros(64, 3, 32, 32)  # 768 KiB
    assert not _ahead.DrawsAhead.pays(x)
    assert _ahead.DrawsAhead.pays(torch.zeros(64, 1, 8, 8))
    assert not _ahead.DrawsAhead.pays(torch.zeros(64, 1, 8, 8, requires_grad=True))
    callback = MixUp(seed=1, per_sample=True)
    _mix_all(callback, [[x, torch.zeros(64, dtype=torch.long)]])
    assert not callback._ahead._mixes


def test_mixes_drawn_ahead_are_forgotten_when_mixing_stops() -> None:
    callback = MixUp(seed=1, stop_epoch=1)
    trainer, module = _trainer(), _module()
    callback.setup(trainer, module, "fit")
    callback.on_train_start(trainer, module)
    batch = _batches([(6, 2, 7, 9)])[0]
    callback.on_train_batch_start(trainer, module, list(batch), 0)
    assert len(callback._ahead._mixes) == _ahead.AHEAD_BATCHES - 1
    trainer.current_epoch = 1
    unmixed = list(batch)
    callback.on_train_batch_start(trainer, module, unmixed, 1)
    assert not callback._ahead._mixes
    assert unmixed[0] is batch[0]


def test_a_callback_holding_mixes_drawn_ahead_pickles_without_them() -> None:
    # `strategy="ddp_spawn"` pickles the callbacks; the drawn mixes are closures.
    callback = FMix(seed=1, per_sample=True)
    batches = _batches([(6, 2, 7, 9)] * 6)
    expected = _mix_all(FMix(seed=1, per_sample=True), batches)
    _mix_all(callback, batches[:3])
    copy = pickle.loads(pickle.dumps(callback))
    assert not copy._ahead._mixes and callback._ahead._mixes
    _assert_same(_mix_all(copy, batches[3:], start=3, setup=False), expected[3:])


# --------------------------------------------------------------------------- the CPU guard


def _independent_flags(x: torch.Tensor, perm: torch.Tensor) -> list[bool]:
    """Whether each sample's partner holds only finite values, element by element."""
    return [bool(x[int(j)].isfinite().all()) for j in perm]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("broken", [[], [2], [0, 5]])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_the_cpu_guard_sums_the_batch_whole_and_flags_partners_only_when_broken(
    dtype: torch.dtype, broken: list[int], value: float
) -> None:
    generator = torch.Generator().manual_seed(len(broken))
    x = torch.randn(6, 3, 4, 5, generator=generator).to(dtype)
    for i in broken:
        x[i, 1, 2, 3] = value
    perm = torch.tensor([1, 2, 3, 4, 5, 0])
    partners, flags = _finite_partners(x, perm)
    expected_partners, expected_flags = _per_sample_partners(x, perm)
    assert torch.equal(partners, expected_partners)
    if not broken:
        assert flags is None  # two ops: the sum and its read
        assert torch.equal(partners, perm)
    else:
        assert flags is not None
        assert flags.tolist() == expected_flags.tolist() == _independent_flags(x, perm)
        own = [i for i in range(6) if not flags[i]]
        assert partners[own].tolist() == own  # paired with themselves: unmixed


def test_the_cpu_guard_leaves_samples_whose_sums_overflow_to_the_per_sample_sums() -> None:
    # Finite values whose sums overflow float32 overflow the batch's sum too: the per-sample
    # path then decides, and leaves those samples unmixed, as it always did.
    x = torch.tensor([[3e38, 3e38], [3e38, 3e38], [1.0, 2.0]])
    perm = torch.tensor([1, 2, 0])
    partners, flags = _finite_partners(x, perm)
    assert flags is not None and flags.tolist() == [False, True, False]
    assert partners.tolist() == [0, 2, 2]


@pytest.mark.parametrize(
    "make",
    [
        lambda: MixUp(seed=1, per_sample=True),  # the weights: a column of the Beta pairs
        lambda: RandomMix(seed=1, per_sample=True),
        CALLBACKS["FMix per sample"],
    ],
)
def test_the_logged_lam_is_the_mean_of_the_weights_in_a_contiguous_sum(
    make: Callable[[], MixingCallback],
) -> None:
    # Per-sample lam is a column (a strided view) of the Beta sampler's pairs, and a mean
    # sums a view in another order than a contiguous tensor: the logged lam keeps the bits
    # of the weights' contiguous mean, whichever path made the weights.
    x, y = _batches([(64, 2, 7, 9)])[0]
    logged: list[torch.Tensor] = []
    module = SimpleNamespace(
        num_classes=CLASSES, hparams={}, log=lambda key, value, **kw: logged.append(value)
    )
    callback = make()
    trainer = _trainer()
    trainer._logger_connector = SimpleNamespace(should_update_logs=True)
    callback.setup(trainer, module, "fit")
    mixed = callback._mix(x, 0)
    assert mixed is not None
    callback.on_train_batch_start(trainer, module, [x, y], 0)
    expected = torch.tensor(mixed.weights.tolist(), dtype=torch.float32).mean()
    assert len(logged) == 1 and torch.equal(logged[0], expected)
