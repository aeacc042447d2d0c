"""Hostile values at every public entry point: each is refused with an error naming the argument.

One case per row: wrong types and ranges through the ``lightning-recipes`` command (nothing
written to the run folder by a run that fails validation), NaN or inf in images, labels out of
range, empty data folders.
"""

from __future__ import annotations

import re
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import (
    DigitsDataModule,
    ImageClassifier,
    ImageFolderDataModule,
    MixUp,
    TrainingSanityChecks,
    TrainingSanityError,
)

# `training_step` called outside a Trainer: `self.log` warns that there is no trainer.
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def _trainer(tmp_path: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": tmp_path,
    }
    return pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def _images(n: int = 16, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


# ------------------------------------------------------------------ labels out of range
@pytest.mark.parametrize(
    ("labels", "stage", "match"),
    [
        ([0, 1, 10, 2], "training", r"label 10 at position 2 .* `num_classes`=10"),
        ([0, -1, 3, 2], "training", r"label -1 at position 1 .* `num_classes`=10"),
        ([0, 1, 2, 12], "validation", r"label 12 at position 3 .* `num_classes`=10"),
        ([0, 11, 2, 3], "test", r"label 11 at position 1 .* `num_classes`=10"),
    ],
)
def test_labels_out_of_range_name_num_classes_and_the_label(
    labels: list[int], stage: str, match: str
) -> None:
    model = ImageClassifier(num_classes=10, in_channels=1)
    batch = [torch.randn(4, 1, 8, 8), torch.tensor(labels)]
    step = {"training": model.training_step, "validation": model.validation_step}
    step["test"] = model.test_step
    with pytest.raises(ValueError, match=rf"ImageClassifier: {match}"):
        step[stage](batch, 0)


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (torch.rand(4, 7), r"`num_classes`=10 columns, got shape \(4, 7\)"),
        (torch.zeros(4, 2, dtype=torch.long), r"integer labels of shape \(4,\), got shape"),
        (torch.zeros(5, dtype=torch.long), r"integer labels of shape \(4,\), got shape \(5,\)"),
    ],
)
def test_targets_of_the_wrong_shape_are_named(targets: torch.Tensor, match: str) -> None:
    model = ImageClassifier(num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match=rf"ImageClassifier: .*{match}"):
        model.training_step([torch.randn(4, 1, 8, 8), targets], 0)


@pytest.mark.slow
def test_labels_out_of_range_in_a_fit(tmp_path: Path) -> None:
    x, y = _images(32)
    y[21] = 10
    model = ImageClassifier(num_classes=10, in_channels=1)
    trainer = _trainer(tmp_path, [])
    with pytest.raises(ValueError, match=r"label 10 at position 5 of the training batch"):
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=16))
    assert trainer.global_step == 1  # the first batch trained; the second was refused


# ------------------------------------------------------------------ NaN / inf in images
class NonFiniteDigits(DigitsDataModule):
    """The digits with ``value`` in one pixel of every ``every``-th image of ``split``."""

    def __init__(self, value: float = float("nan"), split: str = "train", every: int = 40) -> None:
        super().__init__(batch_size=32)
        self.value, self.split, self.every = value, split, every

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        images = self._splits[self.split].tensors[0]
        images[:: self.every, 0, 3, 3] = self.value


@pytest.mark.slow
@pytest.mark.parametrize(
    ("value", "split", "match"),
    [
        (float("nan"), "train", r"training batch \d+ of epoch 0: `batch\[0\]` holds NaN in"),
        # MixUp runs first: two broken images that are partners are left unmixed, and
        # 1 * inf + 0 * inf is NaN, so an inf can be reported as NaN after mixing.
        (
            float("inf"),
            "train",
            r"training batch \d+ of epoch 0: `batch\[0\]` holds (inf|NaN) in",
        ),
        (float("nan"), "val", r"validation batch 0: `batch\[0\]` holds NaN in samples \[0\]"),
        (-float("inf"), "test", r"test batch 0: `batch\[0\]` holds inf in samples \[0\]"),
    ],
)
def test_non_finite_images_stop_the_run_with_the_samples_named(
    tmp_path: Path, value: float, split: str, match: str
) -> None:
    """The shipped callbacks (MixUp before TrainingSanityChecks): no silent NaN training."""
    pl.seed_everything(0)
    model = ImageClassifier(num_classes=10, in_channels=1)
    trainer = _trainer(
        tmp_path,
        [MixUp(alpha=0.2, per_sample=True), TrainingSanityChecks()],
        limit_train_batches=8,
        limit_val_batches=2,
        limit_test_batches=2,
    )
    data = NonFiniteDigits(value, split)
    with pytest.raises(TrainingSanityError, match=match) as info:
        trainer.fit(model, data)
        trainer.test(model, data)
    assert "TrainingSanityChecks[finite_inputs]" in str(info.value) and "Fix:" in str(info.value)
    if split == "train":
        assert trainer.global_step < 8  # stopped before the end of the epoch
    # Nothing trained on a NaN: every weight is finite.
    assert all(p.isfinite().all() for p in model.parameters())


# ------------------------------------------------------------------ the command line
REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "configs" / "digits.yaml"


@pytest.fixture
def cli_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working folder for an in-process CLI run, with global state isolated."""
    monkeypatch.setattr(sys, "argv", ["lightning-recipes"])  # not pytest's arguments
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    state = torch.random.get_rng_state()
    yield folder
    torch.random.set_rng_state(state)


def _yaml(text: str) -> str:
    """A second config file, as a user layers one over ``configs/digits.yaml``."""
    path = Path(tempfile.mkdtemp()) / "override.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


CLI_CASES = [
    # (extra arguments, error, pattern) -- SystemExit: jsonargparse's own message on stderr.
    (["--model.init_args.max_lr", "-1"], ValueError, r"`max_lr` must be > 0, got -1"),
    (["--model.init_args.max_lr", "abc"], SystemExit, r'"max_lr":\s+Expected a .*float.*abc'),
    (["--model.init_args.max_lr", "nan"], SystemExit, r'"max_lr":\s+Expected a .*float.*nan'),
    (["--model.init_args.pct_start", "2"], ValueError, r"`pct_start` must be in \(0, 1\)"),
    (["--model.init_args.weight_decay", "-1"], ValueError, r"`weight_decay` must be >= 0"),
    (["--model.init_args.label_smoothing", "1.5"], ValueError, r"`label_smoothing` must be in"),
    (["--model.init_args.optimizer", "adamx"], ValueError, r"`optimizer` must be one of"),
    (["--model.init_args.backbone", "resnet999"], ValueError, r"`backbone` must be 'small_cnn'"),
    (["--model.init_args.num_classes", "5"], ValueError, r"`model.init_args.num_classes` is 5"),
    (["--data.init_args.batch_size", "0"], ValueError, r"`batch_size` must be an integer >= 1"),
    (["--data.init_args.batch_size", "1.5"], SystemExit, r'"batch_size":\s+Expected a .*int'),
    (["--data.init_args.num_workers", "-1"], ValueError, r"`num_workers` must be an integer >= 0"),
    (["--data.init_args.image_size", "-3"], ValueError, r"`image_size` must be an integer >= 8"),
    (
        ["--data.init_args.val_fraction", "0.5", "--data.init_args.test_fraction", "0.5"],
        ValueError,
        r"`val_fraction \+ test_fraction` must leave at least 10% for training",
    ),
    (["--trainer.max_epochs", "-2"], Exception, r"`max_epochs` must be a non-negative integer"),
    (["--seed_everything", "x"], SystemExit, r'Parser key "seed_everything"'),
    (
        ["--trainer.callbacks+=lightning_recipes.CutMix", "--trainer.callbacks.alpha", "-1"],
        ValueError,
        r"CutMix: `alpha` must be > 0, got -1.0",
    ),
    (
        ["--trainer.callbacks+=lightning_recipes.LRMonitor", "--trainer.callbacks.rtol", "-1"],
        ValueError,
        r"LRMonitor: `rtol` must be >= 0",
    ),
    (
        [
            "--trainer.callbacks+=lightning_recipes.TrainingSanityChecks",
            "--trainer.callbacks.finite_inputs",
            "loud",
        ],
        SystemExit,
        r'"finite_inputs":\s+Expected a typing.Literal',
    ),
    (
        ["--config", "model: {init_args: {max_lr: fast}}"],
        SystemExit,
        r'"max_lr":\s+Expected a .*float.*fast',
    ),
    (
        ["--config", "data: {init_args: {val_fraction: 1.5}}"],
        ValueError,
        r"`val_fraction` must be in \(0, 1\), got 1.5",
    ),
    (
        [
            "--config",
            "trainer: {callbacks: [{class_path: lightning_recipes.FMix, init_args: {p: 2}}]}",
        ],
        ValueError,
        r"FMix: `p` must be in \[0, 1\], got 2.0",
    ),
]


@pytest.mark.parametrize(("extra", "error", "match"), CLI_CASES, ids=lambda v: str(v)[:60])
def test_cli_refuses_bad_values_and_writes_nothing(
    cli_folder: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    error: type,
    match: str,
) -> None:
    from lightning_recipes.cli import TRACEBACK_ENV, main

    if extra[0] == "--config":  # YAML text: layered over the digits config as a file
        extra = ["--config", _yaml(extra[1])]
    run = cli_folder / "run"
    args = ["fit", "--config", str(DIGITS), "--trainer.default_root_dir", str(run)]
    args += ["--trainer.logger.init_args.save_dir", str(run), *extra]
    # The command's own short message on stderr, exit status 2.
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    text = capsys.readouterr().err
    assert re.search(match, text), text
    # With the traceback variable set, the class's own error comes through.
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(error) as raised:
        main(args)
    if error is not SystemExit:
        assert re.search(match, str(raised.value)), raised.value
    # A run that fails validation leaves no run folder, checkpoint or log behind.
    assert list(cli_folder.iterdir()) == []


# ------------------------------------------------------------------ empty data folders
def _pngs(folder: Path, classes: tuple[str, ...], per_class: int = 1) -> None:
    from PIL import Image

    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (12, 12), (40 * i, 80, 120)).save(folder / name / f"{i}.png")


def _no_root(root: Path) -> None:
    pass


def _no_train(root: Path) -> None:
    _pngs(root / "val", ("cat", "dog"))


def _empty_train(root: Path) -> None:
    (root / "train").mkdir(parents=True)
    _pngs(root / "val", ("cat", "dog"))


def _empty_class(root: Path) -> None:
    _pngs(root / "train", ("cat",))
    (root / "train" / "dog").mkdir()
    _pngs(root / "val", ("cat", "dog"))


def _empty_val(root: Path) -> None:
    _pngs(root / "train", ("cat", "dog"))
    (root / "val").mkdir()


def _empty_test(root: Path) -> None:
    _pngs(root / "train", ("cat", "dog"))
    _pngs(root / "val", ("cat", "dog"))
    (root / "test").mkdir()


def _empty_test_class(root: Path) -> None:
    _pngs(root / "train", ("cat", "dog"))
    _pngs(root / "val", ("cat", "dog"))
    _pngs(root / "test", ("cat",))
    (root / "test" / "dog").mkdir()


def _test_classes_differ(root: Path) -> None:
    _pngs(root / "train", ("cat", "dog"))
    _pngs(root / "val", ("cat", "dog"))
    _pngs(root / "test", ("dog", "fox"))


@pytest.mark.parametrize(
    ("layout", "error", "match"),
    [
        (_no_root, FileNotFoundError, r"`root` must be an existing folder, got '.*images'"),
        (_no_train, FileNotFoundError, r"class sub-folders at '.*train', but it does not exist"),
        (_empty_train, FileNotFoundError, r"'.*train' holds no class sub-folder"),
        (_empty_class, FileNotFoundError, r"Class folder '.*train/dog' holds no image"),
        (_empty_val, FileNotFoundError, r"'.*val' holds no class sub-folder"),
        (_empty_test, FileNotFoundError, r"'.*test' holds no class sub-folder"),
        (_empty_test_class, FileNotFoundError, r"Class folder '.*test/dog' holds no image"),
        (_test_classes_differ, ValueError, r"class folders of '.*test' \(\['dog', 'fox'\]\)"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_image_folder_refuses_empty_or_inconsistent_folders(
    tmp_path: Path, layout: Any, error: type, match: str
) -> None:
    root = tmp_path / "images"
    layout(root)
    with pytest.raises(error, match=match):
        ImageFolderDataModule(root, image_size=8, num_workers=0)


# ------------------------------------------------------------------ on a CUDA device
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nan_images_and_bad_labels_on_cuda(tmp_path: Path) -> None:
    """The checks that wait for the device: NaN images, the first batch's labels."""
    pl.seed_everything(0)
    model = ImageClassifier(num_classes=10, in_channels=1)
    callbacks = [MixUp(alpha=0.2, per_sample=True), TrainingSanityChecks()]
    trainer = _trainer(tmp_path, callbacks, accelerator="cuda", devices=1, limit_train_batches=8)
    with pytest.raises(TrainingSanityError, match=r"`batch\[0\]` holds NaN in samples"):
        trainer.fit(model, NonFiniteDigits(float("nan"), "train"))
    x, y = _images(32)
    y[3] = 12
    trainer = _trainer(tmp_path, [], accelerator="cuda", devices=1, num_sanity_val_steps=0)
    model = ImageClassifier(num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match=r"label 12 at position 3 of the training batch"):
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=16))
