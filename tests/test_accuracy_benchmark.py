"""``benchmarks/accuracy.py``: its quick mode runs end to end, and its parts do what it says."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"


@pytest.fixture(scope="module")
def accuracy():
    spec = importlib.util.spec_from_file_location("_accuracy_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_study_writes_figures_and_tunes_on_validation(accuracy, tmp_path, capsys):
    report = accuracy.main(["--quick", "--output-dir", str(tmp_path)])

    png = (tmp_path / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "accuracy.json").read_text())
    assert saved["tuned_lr"] == report["tuned_lr"]
    printed = capsys.readouterr().out
    assert "**test accuracy (%)**" in printed and "expected calibration error" in printed

    runs = report["runs"]
    settings = report["settings"]
    # Every configuration ran at every budget, on the test split; tuning only on validation.
    assert {r["split"] for r in runs} == {"test"}
    assert {r["split"] for r in report["tuning"]} == {"val"}
    assert {r["epochs"] for r in runs} == set(settings["budgets"])
    assert {r["condition"] for r in runs} == set(settings["conditions"])
    assert {r["schedule"] for r in runs} == set(accuracy.SCHEDULES)
    assert {r["mixer"] for r in runs if r["condition"] == "full"} == set(settings["mixers"])
    assert {r["mixer"] for r in runs if r["condition"] != "full"} == set(settings["hard_mixers"])
    for run in runs:
        assert 0.0 <= run["acc"] <= 1.0 and 0.0 <= run["ece"] <= 1.0
        assert 0.1 <= run["conf"] <= 1.0  # the top class of 10 has at least 1/10
        assert math.isfinite(run["loss"]) and run["loss"] > 0
        assert run["lr"] == report["tuned_lr"][run["schedule"]]

    # The chosen rate is the best mean validation accuracy of its schedule's grid.
    for schedule, chosen in report["tuned_lr"].items():
        by_lr = {
            lr: statistics.fmean(
                r["acc"] for r in report["tuning"] if (r["schedule"], r["lr"]) == (schedule, lr)
            )
            for lr in settings["lr_grid"]
        }
        assert by_lr[chosen] == max(by_lr.values())

    # A summary row is the mean over the seeds of the runs it names.
    row = report["summary"][0]
    same = [
        r
        for r in runs
        if (r["condition"], r["schedule"], r["mixer"], r["epochs"])
        == (row["condition"], row["schedule"], row["mixer"], row["epochs"])
    ]
    assert row["n"] == len(same) == settings["seeds"]
    assert row["acc"] == pytest.approx(statistics.fmean(r["acc"] for r in same))


def test_label_noise_flips_exactly_the_fraction_and_only_training_labels(accuracy):
    clean = accuracy._data_module("full", seed=3)
    noisy = accuracy._data_module("noise20", seed=3)
    x_clean, y_clean = clean._splits["train"].tensors
    x_noisy, y_noisy = noisy._splits["train"].tensors
    assert torch.equal(x_clean, x_noisy)
    flipped = int((y_clean != y_noisy).sum())
    assert flipped == round(0.2 * len(y_clean))
    assert int(y_noisy.min()) >= 0 and int(y_noisy.max()) < accuracy.NUM_CLASSES
    for split in ("val", "test"):
        for a, b in zip(clean._splits[split].tensors, noisy._splits[split].tensors, strict=True):
            assert torch.equal(a, b)
    # Another seed flips other labels.
    other = accuracy._data_module("noise20", seed=4)._splits["train"].tensors[1]
    assert not torch.equal(other, y_noisy)


@pytest.mark.parametrize(("condition", "fraction"), [("10%", 0.10), ("25%", 0.25)])
def test_subset_is_stratified_and_keeps_clean_pairs(accuracy, condition, fraction):
    full_x, full_y = accuracy._data_module("full", seed=0)._splits["train"].tensors
    dm = accuracy._data_module(condition, seed=1)
    x, y = dm._splits["train"].tensors
    assert dm.batch_size == 16
    for c in range(accuracy.NUM_CLASSES):
        assert int((y == c).sum()) == round(fraction * int((full_y == c).sum()))
    # Each kept image keeps its own label: find it in the full split.
    flat = full_x.flatten(1).numpy()
    for image, label in zip(x.flatten(1).numpy(), y.tolist(), strict=True):
        match = np.flatnonzero((flat == image).all(axis=1))
        assert label in full_y[match].tolist()


def test_scores_match_independent_formulas(accuracy):
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(200, accuracy.NUM_CLASSES, generator=gen)
    y = torch.randint(0, accuracy.NUM_CLASSES, (200,), generator=gen)
    scores = accuracy._scores(torch.nn.Identity(), logits, y)

    p = logits.double().softmax(dim=1).numpy()
    labels = y.numpy()
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = pred == labels
    assert scores["acc"] == pytest.approx(correct.mean())
    assert scores["conf"] == pytest.approx(conf.mean())
    assert scores["loss"] == pytest.approx(-np.log(p[np.arange(200), labels]).mean(), rel=1e-5)
    # ECE: 15 equal-width confidence bins, |accuracy - confidence| weighted by the bin's share.
    bins = np.minimum((conf * accuracy.ECE_BINS).astype(int), accuracy.ECE_BINS - 1)
    ece = sum(
        (bins == b).mean() * abs(correct[bins == b].mean() - conf[bins == b].mean())
        for b in range(accuracy.ECE_BINS)
        if (bins == b).any()
    )
    assert len(set(bins.tolist())) > 3  # the confidences spread over several bins
    assert scores["ece"] == pytest.approx(ece, abs=1e-5)


def test_warmup_cosine_matches_torch_schedulers(accuracy):
    total = 57
    warmup = round(accuracy.WARMUP_FRACTION * total)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1
            ),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup),
        ],
        milestones=[warmup],
    )
    for step in range(total):
        assert accuracy.warmup_cosine(step, total) == pytest.approx(
            optimizer.param_groups[0]["lr"], abs=1e-12
        ), step
        optimizer.step()
        reference.step()
    assert accuracy.warmup_cosine(warmup - 1, total) == 1.0


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["--seeds", "0"], "seeds"),
        (["--tune-epochs", "0"], "tune-epochs"),
        (["--tune-seeds", "0"], "tune-seeds"),
        (["--workers", "0"], "workers"),
        (["--budgets", "3", "0"], "budgets"),
    ],
)
def test_bad_arguments_are_refused_before_any_fit(accuracy, tmp_path, argv, name):
    with pytest.raises(ValueError, match=name):
        accuracy.main(["--quick", "--output-dir", str(tmp_path), *argv])
    assert not (tmp_path / "accuracy.json").exists()
