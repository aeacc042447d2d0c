"""Hostile values at every public entry point: each is refused with an error naming the argument.

One case per row: wrong types and ranges through the ``lightning-recipes`` command (nothing
written to the run folder by a run that fails validation), NaN or inf in images, labels out of
range, empty data folders.
"""

from __future__ import annotations

import sys
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
