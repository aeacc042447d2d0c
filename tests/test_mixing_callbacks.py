"""The mixing callbacks in real (tiny, seeded, CPU) Trainer runs."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from scipy import stats  # type: ignore[import-untyped]
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_recipes.callbacks.mixing import CutMix, FMix, MixUp, RandomMix
from lightning_recipes.callbacks.mixing._base import MixingCallback

CALLBACKS: dict[str, Callable[..., MixingCallback]] = {
    "MixUp": lambda **kw: MixUp(**kw),
    "CutMix": lambda **kw: CutMix(**kw),
    "FMix": lambda **kw: FMix(**kw),
    "FMix-exact": lambda **kw: FMix(mask_sampler="exact", **kw),
    "RandomMix": lambda **kw: RandomMix({"mixup": 0.3, "cutmix": 0.3, "fmix": 0.4}, **kw),
}


@pytest.fixture(autouse=True)
def _seeded() -> None:
    pl.seed_everything(0, verbose=False)


class Recorder(pl.LightningModule):
    """A linear classifier on flattened inputs that records every batch it is given."""

    def __init__(self, features: int, num_classes: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.layer = torch.nn.Linear(features, num_classes)
        self.train_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.val_batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = (batch["image"], batch["target"]) if isinstance(batch, dict) else batch
        self.train_batches.append((x.detach().clone(), y.detach().clone()))
        return F.cross_entropy(self.layer(x.float().flatten(1)), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.val_batches.append((batch[0].clone(), batch[1].clone()))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(tmp_path: Path, callbacks: list[Callback], **kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **defaults)


def _identity_data(n: int, num_classes: int = 4, seed: int = 0) -> TensorDataset:
    """Sample ``i`` is the one-hot vector ``e_i``: a mixed row shows lam and the partner."""
    labels = torch.randint(0, num_classes, (n,), generator=torch.Generator().manual_seed(seed))
    return TensorDataset(torch.eye(n), labels)


def _constant_images(n: int, size: int = 8, seed: int = 0) -> TensorDataset:
    """Image ``i`` is the constant ``i + 1``: each mixed pixel shows which sample it is from."""
    labels = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(seed))
    images = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, size, size)
    return TensorDataset(images.contiguous(), labels)


def _loader(dataset: Dataset[Any], batch_size: int, **kwargs: Any) -> DataLoader[Any]:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)


def _one_hot(y: torch.Tensor, n: int = 4) -> torch.Tensor:
    return F.one_hot(y, n).float()


# --------------------------------------------------------------------------- correctness


def test_mixup_per_sample_lam_is_beta_and_targets_follow_the_pixels(tmp_path: Path) -> None:
    pl.seed_everything(0)
    data = _identity_data(600)
    module = Recorder(600)
    callback = MixUp(alpha=0.5, per_sample=True)
    _trainer(tmp_path, [callback]).fit(module, _loader(data, 100))

    lams = []
    for step, (x, targets) in enumerate(module.train_batches):
        own = torch.arange(step * 100, (step + 1) * 100)
        lam = x[torch.arange(100), own]
        rest = x.clone()
        rest[torch.arange(100), own] = 0
        partner = rest.argmax(1)
        assert (partner != own).all()  # nobody is paired with itself
        torch.testing.assert_close(rest.max(1).values, 1 - lam)
        labels = data.tensors[1]
        expected = lam[:, None] * _one_hot(labels[own]) + (1 - lam[:, None]) * _one_hot(
            labels[partner]
        )
        torch.testing.assert_close(targets, expected)
        lams.append(lam)
    lam_values = torch.cat(lams).double().numpy()
    assert stats.kstest(lam_values, stats.beta(0.5, 0.5).cdf).pvalue > 0.01


@pytest.mark.parametrize("name", ["CutMix", "FMix", "RandomMix"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_mask_targets_are_weighted_by_the_true_area(
    tmp_path: Path, name: str, per_sample: bool
) -> None:
    pl.seed_everything(1)
    data = _constant_images(21, size=9)
    module = Recorder(81)
    callback: MixingCallback
    if name == "RandomMix":  # the mask methods only: pixels must come whole from one sample
        callback = RandomMix({"cutmix": 0.5, "fmix": 0.5}, per_sample=per_sample)
    else:
        callback = CALLBACKS[name](per_sample=per_sample)
    _trainer(tmp_path, [callback]).fit(module, _loader(data, 7))  # odd batch size
    labels = data.tensors[1]
    for step, (x, targets) in enumerate(module.train_batches):
        own = torch.arange(step * 7, (step + 1) * 7)
        source = x.round().long().flatten(1) - 1  # the sample each pixel comes from
        weight = (source == own[:, None]).float().mean(1)
        others = torch.where(source == own[:, None], -1, source)
        partner = others.max(1).values
        mixed = partner >= 0
        # Every pixel is from the sample itself or from one partner.
        assert ((source == own[:, None]) | (source == partner[:, None])).all()
        expected = weight[:, None] * _one_hot(labels[own])
        expected[mixed] += (1 - weight[mixed, None]) * _one_hot(labels[partner[mixed]])
        torch.testing.assert_close(targets, expected)
        torch.testing.assert_close(targets.sum(1), torch.ones(7))
        assert targets.dtype == torch.float32


@pytest.mark.parametrize("alpha", [0.4, 2.0])
def test_mixup_per_batch_lam_is_beta(tmp_path: Path, alpha: float) -> None:
    # Two samples of classes 0 and 1, each the other's partner: the first target row is
    # (lam, 1 - lam). Each batch reseeds the callback's generators from its batch count.
    data = TensorDataset(torch.zeros(600, 1, 3, 3), torch.tensor([0, 1] * 300))
    module = Recorder(9, num_classes=2)
    _trainer(tmp_path, [MixUp(alpha=alpha, seed=5)]).fit(module, _loader(data, 2))
    lams = [float(y[0, 0]) for _, y in module.train_batches]
    assert len(lams) == 300
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


@pytest.mark.parametrize("name", list(CALLBACKS))
def test_dtype_and_memory_format_are_kept(tmp_path: Path, name: str) -> None:
    images = torch.randn(16, 3, 10, 10).to(torch.bfloat16)
    images = images.contiguous(memory_format=torch.channels_last)
    data = TensorDataset(images, torch.randint(0, 4, (16,)))

    def collate(samples: list[Any]) -> list[torch.Tensor]:
        x = torch.stack([s[0] for s in samples]).contiguous(memory_format=torch.channels_last)
        return [x, torch.stack([s[1] for s in samples])]

    module = Recorder(300)
    _trainer(tmp_path, [CALLBACKS[name](per_sample=True)]).fit(
        module, _loader(data, 8, collate_fn=collate)
    )
    for x, _ in module.train_batches:
        assert x.dtype == torch.bfloat16
        assert x.is_contiguous(memory_format=torch.channels_last)


def test_dict_batches_and_untouched_evaluation(tmp_path: Path) -> None:
    class DictData(Dataset[dict[str, Any]]):
        def __len__(self) -> int:
            return 12

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"image": torch.full((1, 4, 4), float(i)), "target": i % 4, "id": i}

    module = Recorder(16)
    _trainer(tmp_path, [CutMix()], limit_val_batches=1).fit(
        module, _loader(DictData(), 6), _loader(_constant_images(6, size=4), 6)
    )
    x, y = module.train_batches[0]
    assert y.shape == (6, 4) and y.dtype == torch.float32
    assert not torch.equal(x, torch.arange(6.0).view(6, 1, 1, 1).expand(6, 1, 4, 4))
    # Validation batches reach the module as the loader made them.
    x_val, y_val = module.val_batches[0]
    assert torch.equal(x_val, _constant_images(6, size=4).tensors[0])
    assert y_val.dtype == torch.int64


def test_batch_of_one_is_unmixed_and_p_zero_never_mixes(tmp_path: Path) -> None:
    data = _identity_data(6)
    module = Recorder(6)
    _trainer(tmp_path, [MixUp(per_sample=True)], max_steps=2).fit(module, _loader(data, 1))
    for step, (x, y) in enumerate(module.train_batches):
        assert torch.equal(x, data.tensors[0][step : step + 1])
        assert torch.equal(y, _one_hot(data.tensors[1][step : step + 1]))

    module = Recorder(64)
    _trainer(tmp_path, [FMix(p=0.0)]).fit(module, _loader(_constant_images(6), 3))
    for x, y in module.train_batches:
        assert (x.flatten(1) == x.flatten(1)[:, :1]).all()  # every image still constant
        assert (y.max(1).values == 1).all()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # 3 epochs of 2 steps: epoch 0 only, or the first half of the 6 optimizer steps.
        ({"stop_epoch": 1}, [True, True, False, False, False, False]),
        ({"stop_fraction": 0.5}, [True, True, True, False, False, False]),
    ],
)
def test_mixing_stops_at_the_end_point(
    tmp_path: Path, kwargs: dict[str, Any], expected: list[bool]
) -> None:
    data = _identity_data(8)
    module = Recorder(8)
    _trainer(tmp_path, [MixUp(**kwargs)], max_epochs=3).fit(module, _loader(data, 4))
    clean = [data.tensors[0][:4], data.tensors[0][4:]] * 3
    is_mixed = [
        not torch.equal(x, c) for (x, _), c in zip(module.train_batches, clean, strict=True)
    ]
    assert is_mixed == expected


def test_lam_is_logged_and_a_grid_is_saved_each_epoch(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="run")
    data = _constant_images(8)
    _trainer(
        tmp_path,
        [FMix(save_grid=True, grid_samples=4)],
        max_epochs=2,
        logger=logger,
        log_every_n_steps=1,
    ).fit(Recorder(64), _loader(data, 4))
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    lams = [float(r["lam-FMix"]) for r in rows if r.get("lam-FMix")]
    assert len(lams) == 4 and all(0 <= v <= 1 for v in lams)
    grids = sorted(p.name for p in (Path(logger.log_dir) / "mix_grids").iterdir())
    assert grids == ["FMix-epoch=000.png", "FMix-epoch=001.png"]


def test_num_classes_comes_from_the_module_hparams(tmp_path: Path) -> None:
    class HparamsModule(Recorder):
        def __init__(self) -> None:
            super().__init__(8, num_classes=5)
            del self.num_classes
            self.save_hyperparameters({"num_classes": 5})

    module = HparamsModule()
    _trainer(tmp_path, [MixUp()], max_steps=1).fit(module, _loader(_identity_data(8), 4))
    assert module.train_batches[0][1].shape == (4, 5)


# --------------------------------------------------------------------------- randomness


def _fit_and_record(
    tmp_path: Path,
    seed: int,
    max_epochs: int,
    ckpt_path: str | None = None,
    per_sample: bool = True,
    **kwargs: Any,
) -> list[torch.Tensor]:
    pl.seed_everything(seed)
    module = Recorder(12)
    callbacks: list[Callback] = [
        RandomMix({"mixup": 0.5, "fmix": 0.5}, per_sample=per_sample, p=0.8, spatial_dims=1)
    ]
    callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True))
    trainer = _trainer(
        tmp_path, callbacks, max_epochs=max_epochs, enable_checkpointing=True, **kwargs
    )
    trainer.fit(module, _loader(_identity_data(12), 4), ckpt_path=ckpt_path)
    return [x for x, _ in module.train_batches]


@pytest.mark.parametrize("per_sample", [False, True])
def test_resume_repeats_the_mixing_exactly(tmp_path: Path, per_sample: bool) -> None:
    uninterrupted = _fit_and_record(tmp_path / "a", seed=3, max_epochs=2, per_sample=per_sample)
    first = _fit_and_record(tmp_path / "b", seed=3, max_epochs=1, per_sample=per_sample)
    assert all(torch.equal(a, b) for a, b in zip(first, uninterrupted[:3], strict=True))
    # A different seed in the resumed run: the mixing state comes from the checkpoint.
    resumed = _fit_and_record(
        tmp_path / "b",
        seed=99,
        max_epochs=2,
        ckpt_path=str(tmp_path / "b" / "ckpt" / "last.ckpt"),
        per_sample=per_sample,
    )
    assert len(resumed) == 3
    assert all(torch.equal(a, b) for a, b in zip(resumed, uninterrupted[3:], strict=True))
    assert not torch.equal(uninterrupted[0], uninterrupted[3])


def test_the_seed_is_used_outside_a_fit_too(tmp_path: Path) -> None:
    # A hook called by hand (no `setup`) draws from `seed`, as the fit with that seed does.
    x, y = torch.randn(6, 1, 5, 5), torch.tensor([0, 1, 2, 2, 0, 1])
    expected = _fit_batch(tmp_path, MixUp(seed=7), [x, y])
    callback = MixUp(seed=7, num_classes=3)
    trainer, module = pl.Trainer(logger=False, log_every_n_steps=50), BatchRecorder()
    batch = [x, y]
    callback.on_train_batch_start(trainer, module, batch, 0)
    assert not torch.equal(batch[0], x)  # it mixed
    assert torch.equal(batch[0], expected[0]) and torch.equal(batch[1], expected[1])


class _RankRecorder(Recorder):
    def __init__(self, out: str) -> None:
        super().__init__(16)
        self.out = out

    def on_train_end(self) -> None:
        torch.save(self.train_batches, f"{self.out}/rank{self.global_rank}.pt")


@pytest.mark.parametrize("per_sample", [False, True])
def test_ddp_ranks_mix_differently(tmp_path: Path, per_sample: bool) -> None:
    trainer = _trainer(
        tmp_path,
        [MixUp(per_sample=per_sample)],
        devices=2,
        strategy="ddp_fork",
        max_steps=2,
        use_distributed_sampler=False,  # both ranks see the same batches: only mixing differs
    )
    data = TensorDataset(torch.eye(16), torch.zeros(16, dtype=torch.long))
    trainer.fit(_RankRecorder(str(tmp_path)), _loader(data, 8))
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    lam0 = torch.stack([x.max(1).values for x, _ in rank0])
    lam1 = torch.stack([x.max(1).values for x, _ in rank1])
    assert lam0.shape == lam1.shape == (2, 8)
    assert not torch.allclose(lam0, lam1)


# --------------------------------------------------------------------------- one batch


class BatchRecorder(pl.LightningModule):
    """Records the batch ``training_step`` receives, whatever its structure."""

    def __init__(self, num_classes: int | None = 3) -> None:
        super().__init__()
        if num_classes is not None:
            self.num_classes = num_classes
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.batches: list[Any] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.batches.append(batch)
        return self.weight * 0.0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit_batch(tmp_path: Path, callback: Any, batch: Any, num_classes: int | None = 3) -> Any:
    """Fits one step on ``batch`` (given as the loader's only batch) and returns what
    ``training_step`` received."""
    module = BatchRecorder(num_classes)
    one_batch = cast("Dataset[Any]", [batch])
    loader = DataLoader(one_batch, batch_size=None, collate_fn=lambda item: item)
    _trainer(tmp_path, [callback], max_steps=1).fit(module, loader)
    assert len(module.batches) == 1  # the step ran
    return module.batches[0]


# --------------------------------------------------------------------------- errors


def _wrong(value: object) -> Any:
    """A value of the wrong type, passed on purpose."""
    return value


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: MixUp(alpha=0), ValueError, r"^MixUp: `alpha` must be > 0, got 0.0$"),
        (lambda: CutMix(alpha=-1), ValueError, r"^CutMix: `alpha` must be > 0, got -1.0$"),
        (lambda: MixUp(alpha=float("nan")), ValueError, r"^MixUp: `alpha` must be a finite real"),
        (lambda: MixUp(p=float("inf")), ValueError, r"^MixUp: `p` must be a finite real number"),
        (
            lambda: MixUp(alpha=_wrong("1")),
            TypeError,
            r"^MixUp: `alpha` must be a finite real number",
        ),
        (lambda: FMix(p=1.5), ValueError, r"^FMix: `p` must be in \[0, 1\], got 1.5$"),
        (lambda: MixUp(p=-0.1), ValueError, r"`p` must be in \[0, 1\], got -0.1"),
        (lambda: MixUp(p="1"), TypeError, r"`p` must be a finite real number"),
        (lambda: FMix(decay_power=0), ValueError, r"^FMix: `decay_power` must be > 0"),
        (lambda: FMix(max_soft=0.7), ValueError, r"`max_soft` must be in \[0, 0.5\], got 0.7"),
        (
            lambda: FMix(mask_sampler="approx"),
            ValueError,
            r"^FMix: `mask_sampler` must be one of \('exact', 'fast'\), got 'approx'$",
        ),
        (lambda: FMix(mask_sampler=1), TypeError, r"^FMix: `mask_sampler` must be a str, got 1$"),
        (lambda: MixUp(label_smoothing=1.0), ValueError, r"`label_smoothing` must be in \[0, 1\)"),
        (lambda: MixUp(num_classes=0), ValueError, r"`num_classes` must be an integer >= 1"),
        (lambda: MixUp(num_classes=2.0), TypeError, r"`num_classes` must be None or an integer"),
        (lambda: MixUp(stop_epoch=2, stop_fraction=0.5), ValueError, r"`stop_epoch` and `stop_"),
        (lambda: MixUp(stop_epoch=-1), ValueError, r"`stop_epoch` must be an integer >= 0"),
        (lambda: MixUp(stop_epoch=1.5), TypeError, r"`stop_epoch` must be None or an integer"),
        (lambda: MixUp(stop_fraction=0), ValueError, r"`stop_fraction` must be None or in \(0"),
        (lambda: MixUp(stop_fraction="all"), TypeError, r"`stop_fraction` must be a finite real"),
        (lambda: MixUp(input_key=1.5), TypeError, r"`input_key` must be None, an int .* got 1.5"),
        (lambda: MixUp(target_key=True), TypeError, r"`target_key` must be None, an int"),
        (lambda: MixUp(per_sample=1), TypeError, r"^MixUp: `per_sample` must be a bool, got 1$"),
        (lambda: MixUp(inplace="yes"), TypeError, r"`inplace` must be a bool, got 'yes'"),
        (lambda: MixUp(save_grid=None), TypeError, r"`save_grid` must be a bool"),
        (lambda: MixUp(grid_samples=0), ValueError, r"`grid_samples` must be an integer >= 1"),
        (lambda: MixUp(grid_samples=2.0), TypeError, r"`grid_samples` must be an integer"),
        (lambda: FMix(seed="a"), TypeError, r"`seed` must be None or an integer, got 'a'"),
        (lambda: CutMix(spatial_dims=4), ValueError, r"^CutMix: `spatial_dims` must be None"),
        (
            lambda: FMix(spatial_dims=_wrong("2")),
            TypeError,
            r"^FMix: `spatial_dims` must be None or an",
        ),
        (lambda: CutMix(correct_lam=_wrong("no")), TypeError, r"`correct_lam` must be a bool"),
        (lambda: RandomMix({"mosaic": 1.0}), ValueError, r"`probs` keys must be among .*mosaic"),
        (lambda: RandomMix({"mixup": 0.5}), ValueError, r"^RandomMix: `probs` must sum to 1"),
        (lambda: RandomMix({"mixup": 1.5, "fmix": -0.5}), ValueError, r"`probs\['fmix'\]` must"),
        (
            lambda: RandomMix({"mixup": _wrong("half")}),
            TypeError,
            r"`probs\['mixup'\]` must be a finite",
        ),
        (
            lambda: RandomMix(_wrong(["mixup"])),
            TypeError,
            r"`probs` must be a dict of method names",
        ),
        (lambda: RandomMix(alpha={"fmix": 0}), ValueError, r"^RandomMix: `alpha\['fmix'\]`"),
        (lambda: RandomMix(alpha={"mosaic": 1.0}), ValueError, r"`alpha` keys must be among"),
        (lambda: RandomMix(max_soft=-1), ValueError, r"`max_soft` must be in \[0, 0.5\]"),
        (lambda: RandomMix(mask_sampler="Fast"), ValueError, r"^RandomMix: `mask_sampler` must"),
        (lambda: RandomMix(mask_sampler=None), TypeError, r"^RandomMix: `mask_sampler` must be"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_constructor_errors_name_the_callback_and_the_argument(
    factory: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        factory()


def test_errors_of_a_subclass_name_it_once() -> None:
    class MyMix(CutMix):
        def __init__(self, alpha: float) -> None:
            super().__init__(alpha)

    with pytest.raises(ValueError, match=r"^MyMix: `alpha` must be > 0, got -1.0$"):
        MyMix(-1.0)


_X, _Y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize(
    ("callback", "batch", "num_classes", "error", "match"),
    [
        (MixUp(), (_X, _Y), 3, TypeError, r"^MixUp: MixUp mixes the batch in place, so .* a list"),
        (CutMix(), (_X, _Y), 3, TypeError, r"must be a list or a dict, got a tuple; return a list"),
        (MixUp(), [_X.to(torch.uint8), _Y], 3, TypeError, r"`batch\[0\]` must be a floating-"),
        (MixUp(), [torch.randn(0, 3), _Y[:0]], 3, ValueError, r"`batch\[0\]` must have a non-"),
        (MixUp(), [_X, torch.tensor([0, 1, 2, 3])], 3, ValueError, r"`batch\[1\]` must hold"),
        (
            MixUp(per_sample=True),
            [_X, torch.tensor([0, -1, 2, 0])],
            3,
            ValueError,
            r"^MixUp: `batch\[1\]` must hold class indices in \[0, 3\), got values in \[-1, 2\]$",
        ),
        (
            FMix(per_sample=True),
            {"image": _X, "target": torch.tensor([0, 1, 2, 7], dtype=torch.int32)},
            3,
            ValueError,
            r"^FMix: `batch\['target'\]` must hold class indices in \[0, 3\), got values in"
            r" \[0, 7\]$",
        ),
        (  # unmixed (the schedule stopped at epoch 0): the targets are still checked
            CutMix(stop_epoch=0),
            [_X, torch.tensor([3, 0, 1, 2])],
            3,
            ValueError,
            r"^CutMix: `batch\[1\]` must hold class indices in \[0, 3\), got values in \[0, 3\]$",
        ),
        (MixUp(), [_X, _Y[:3]], 3, ValueError, r"`batch\[1\]` must be integer labels of shape"),
        (MixUp(), [_X, torch.rand(4, 5)], 3, ValueError, r"`batch\[1\]` must have `num_classes`"),
        (MixUp(), [_X, _Y], None, ValueError, r"`num_classes` is needed .* to MixUp"),
        (MixUp(input_key=2), [_X, _Y], 3, ValueError, r"`input_key` must be an index into"),
        (MixUp(target_key=-3), [_X, _Y], 3, ValueError, r"`target_key` must be an index into"),
        (MixUp(), {"image": _X, "cls": _Y}, 3, ValueError, r"`target_key` must be given for a"),
        (MixUp(), {"img": _X, "target": _Y}, 3, ValueError, r"`input_key` must be given for a"),
        (MixUp(input_key="img"), {"image": _X, "target": _Y}, 3, ValueError, r"`input_key` must"),
        (MixUp(target_key="t"), {"image": _X, "target": _Y}, 3, ValueError, r"`target_key` must"),
        (FMix(), {"image": torch.randn(4, 36), "target": _Y}, 3, ValueError, r"^FMix: `batch\["),
        (CutMix(inplace=True), [torch.randn(9, 1, 6, 6)[:4], _Y], 3, ValueError, r"`batch\[0\]`"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_batch_errors_name_the_callback_the_item_and_the_fix(
    tmp_path: Path, callback: Any, batch: Any, num_classes: int | None, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        _fit_batch(tmp_path, callback, batch, num_classes)


@pytest.mark.parametrize("factory", [MixUp, CutMix, FMix], ids=lambda f: f.__name__)
def test_labels_out_of_range_stop_the_step_before_anything_is_mixed(
    tmp_path: Path, factory: Callable[..., MixingCallback]
) -> None:
    """The label range is checked before the mix: an in-place callback leaves the batch's
    images as they were, and the error names the labels."""
    callback, name = factory(per_sample=True, inplace=True), factory.__name__
    x = torch.randn(4, 1, 6, 6)
    own = x.clone()
    with pytest.raises(ValueError, match=rf"^{name}: `batch\[1\]` must hold class indices"):
        _fit_batch(tmp_path, callback, [own, torch.tensor([0, 1, 4, 0])])
    assert torch.equal(own, x)


def test_stop_fraction_needs_a_run_of_known_length(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, [MixUp(stop_fraction=0.5)], max_epochs=-1)
    assert trainer.estimated_stepping_batches == float("inf")
    with pytest.raises(ValueError, match=r"^MixUp: `stop_fraction` needs a run of known length"):
        trainer.fit(Recorder(8), _loader(_identity_data(8), 4))


INPLACE_CALLBACKS: dict[str, Callable[..., MixingCallback]] = {
    **CALLBACKS,
    # Per batch, RandomMix pastes a CutMix box in place: its own code path.
    "RandomMix cutmix": lambda **kw: RandomMix({"cutmix": 1.0}, **kw),
}


@pytest.mark.parametrize("name", list(INPLACE_CALLBACKS))
@pytest.mark.parametrize("per_sample", [False, True])
def test_inplace_mixes_the_batch_tensor_itself_with_the_same_values(
    tmp_path: Path, name: str, per_sample: bool
) -> None:
    factory = INPLACE_CALLBACKS[name]
    x, y = torch.randn(6, 2, 9, 9), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = _fit_batch(tmp_path / "a", factory(seed=3, per_sample=per_sample), [x, y])
    own = x.clone()
    batch = _fit_batch(
        tmp_path / "b", factory(seed=3, per_sample=per_sample, inplace=True), [own, y]
    )
    assert batch[0] is own and not torch.equal(own, x)
    assert torch.equal(batch[0], expected[0]) and torch.equal(batch[1], expected[1])


def test_without_inplace_a_view_is_mixed_into_a_new_tensor(tmp_path: Path) -> None:
    stored = torch.randn(10, 1, 6, 6)
    before = stored.clone()
    batch = _fit_batch(tmp_path, CutMix(), [stored[:4], torch.tensor([0, 1, 2, 0])])
    assert not torch.equal(batch[0], before[:4])  # it mixed
    assert torch.equal(stored, before)


@pytest.mark.parametrize("name", list(INPLACE_CALLBACKS))
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_a_nan_image_leaves_every_other_image_finite(
    tmp_path: Path, name: str, per_sample: bool, inplace: bool
) -> None:
    x, y = (
        torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(0)),
        torch.arange(8) % 3,
    )
    x[5, 1] = float("nan")
    callback = INPLACE_CALLBACKS[name](per_sample=per_sample, inplace=inplace)
    batch = _fit_batch(tmp_path, callback, [x.clone(), y])
    finite = batch[0].flatten(1).isfinite().all(1)
    assert finite.tolist() == [i != 5 for i in range(8)]
    assert batch[1].isfinite().all()
    torch.testing.assert_close(batch[1].sum(1), torch.ones(8))
    # The sample that took image 5 as its partner is unmixed, with its own target.
    kept = [i for i in range(8) if i != 5 and torch.equal(batch[0][i], x[i])]
    assert kept and all(batch[1][i].tolist() == F.one_hot(y[i], 3).tolist() for i in kept)


def test_float_targets_and_keys_by_name(tmp_path: Path) -> None:
    x = torch.randn(4, 1, 6, 6)
    multi_hot = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    callback = CutMix(input_key="a", target_key="b")
    batch = _fit_batch(tmp_path, callback, {"a": x, "b": multi_hot, "c": 1})
    assert batch["b"].shape == (4, 3) and batch["c"] == 1
    assert not torch.equal(batch["a"], x)


def _cuda_setup(callback: Any) -> tuple[pl.Trainer, pl.LightningModule]:
    """A real Trainer and module for the callback's hook, called outside of Lightning's loop
    (whose own syncs are not the callback's); its first step logs nothing."""
    trainer = pl.Trainer(accelerator="cuda", devices=1, logger=False, log_every_n_steps=50)
    module = BatchRecorder().cuda()
    callback.setup(trainer, module, "fit")
    return trainer, module


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(INPLACE_CALLBACKS))
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("nan", [False, True])
def test_no_host_device_sync_on_cuda(name: str, per_sample: bool, inplace: bool, nan: bool) -> None:
    callback = INPLACE_CALLBACKS[name](per_sample=per_sample, inplace=inplace)
    labels = torch.arange(8, device="cuda") % 3
    trainer, module = _cuda_setup(callback)
    first = [torch.randn(8, 3, 32, 32, device="cuda"), labels.clone()]
    callback.on_train_batch_start(trainer, module, first, 0)  # checks the label range once
    x = torch.randn(8, 3, 32, 32, device="cuda")
    if nan:
        x[5, 1] = float("nan")
    batch = [x.clone(), labels.clone()]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        callback.on_train_batch_start(trainer, module, batch, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch[1].shape == (8, 3) and batch[1].isfinite().all()
    finite = batch[0].flatten(1).isfinite().all(1).tolist()
    assert finite == [not (nan and i == 5) for i in range(8)]


# --------------------------------------------------------------------------- integration


@pytest.mark.parametrize("name", list(CALLBACKS))
def test_image_classifier_on_digits_trains_on_mixed_targets(tmp_path: Path, name: str) -> None:
    from lightning_recipes import DigitsDataModule, ImageClassifier

    pl.seed_everything(0)
    model = ImageClassifier(num_classes=10, in_channels=1, max_lr=0.05)
    trainer = _trainer(
        tmp_path,
        [CALLBACKS[name](per_sample=True)],
        limit_train_batches=3,
        limit_val_batches=1,
        log_every_n_steps=1,
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    log_name = name.split("-")[0]  # FMix-exact logs as FMix
    assert 0 <= float(trainer.callback_metrics[f"lam-{log_name}"]) <= 1


def test_grid_is_skipped_with_a_warning_for_non_images(tmp_path: Path) -> None:
    callback = FMix(save_grid=True)
    with pytest.warns(UserWarning, match=r"draws 2-D images of shape .* got shape \(4, 2, 16\)"):
        _fit_batch(tmp_path, callback, [torch.randn(4, 2, 16), torch.tensor([0, 1, 2, 0])])
    assert not (tmp_path / "mix_grids").exists()
