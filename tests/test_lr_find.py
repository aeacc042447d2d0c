"""The LR range test: fastai's rules against written-out references, and the fit that follows."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_recipes import DigitsDataModule, ImageClassifier, MixUp
from lightning_recipes.lr_find import lr_find, set_max_lr, suggest_lrs


def _reference_valley(losses: list[float]) -> int:
    # fastai's `valley`, written out with its own loops as the reference.
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def _sweep(seed: int, n: int = 100) -> tuple[list[float], list[float]]:
    # A range-test-like curve: flat, falling, then diverging, with noise.
    rng = np.random.default_rng(seed)
    lrs = np.geomspace(1e-6, 10, n)
    t = np.log10(lrs)
    losses = 2.3 - 1.5 / (1 + np.exp(-(t + 3) * 2)) + np.exp(3 * (t - 0.3))
    losses += rng.normal(0, 0.02, n)
    return lrs.tolist(), losses.tolist()


@pytest.mark.parametrize("seed", range(5))
def test_suggestions_match_fastai_rules(seed):
    lrs, losses = _sweep(seed)
    got = suggest_lrs(lrs, losses)
    # fastai's lr_find drops the first num_it // 10 and the last 5 steps first.
    lr, loss = lrs[10:-5], losses[10:-5]
    assert got["valley"] == lr[_reference_valley(loss)]
    slopes = [
        (loss[i + 1] - loss[i]) / (math.log(lr[i + 1]) - math.log(lr[i]))
        for i in range(len(lr) - 1)
    ]
    assert got["steep"] == lr[slopes.index(min(slopes))]
    assert got["minimum"] == pytest.approx(lr[loss.index(min(loss))] / 10, rel=1e-12)


def test_suggestions_stop_at_the_first_nan():
    lrs, losses = _sweep(0)
    losses[60:] = [math.nan] * 40
    got = suggest_lrs(lrs, losses)
    assert got == suggest_lrs(lrs[:60], losses[:60], skip_begin=10, skip_end=0)


@pytest.mark.parametrize(
    ("losses", "match"),
    [
        ([1.0] * 12 + [math.nan] * 88, "usable steps"),
        ([1.0 + i for i in range(100)], "never decreased"),
    ],
    ids=["diverges-at-once", "never-decreases"],
)
def test_bad_sweeps_name_the_range_and_the_fix(losses, match):
    lrs = np.geomspace(1e-6, 10, 100).tolist()
    with pytest.raises(ValueError, match=match) as info:
        suggest_lrs(lrs, losses)
    assert "lr=1e-06" in str(info.value) and "lr=10" in str(info.value)


def test_suggest_lrs_length_mismatch():
    with pytest.raises(ValueError, match="`lrs` and `losses`"):
        suggest_lrs([1e-3, 1e-2], [1.0])


def _trainer(tmp_path, callbacks=(), **kwargs) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        **kwargs,
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rule": "slide"}, ValueError, "`rule`"),
        ({"num_training": 2}, ValueError, "`num_training`"),
        ({"min_lr": 0.0}, ValueError, "`min_lr`"),
        ({"max_lr": -1.0}, ValueError, "`max_lr`"),
        ({"min_lr": 1.0, "max_lr": 0.1}, ValueError, "`min_lr` must be < `max_lr`"),
        ({"num_training": 10.0}, TypeError, "`num_training`"),
        ({"min_lr": "1e-7"}, TypeError, "`min_lr`"),
        ({"max_lr": None}, TypeError, "`max_lr`"),
    ],
    ids=[
        *["rule", "num_training", "min_lr", "max_lr", "order"],
        *["num_training_type", "min_lr_type", "max_lr_type"],
    ],
)
def test_lr_find_argument_errors(tmp_path, kwargs, error, match):
    model = ImageClassifier(num_classes=10, in_channels=1)
    with pytest.raises(error, match=match):
        lr_find(model, _trainer(tmp_path), DigitsDataModule(), **kwargs)


def test_lr_find_needs_a_max_lr(tmp_path):
    class Plain(pl.LightningModule):
        pass

    with pytest.raises(TypeError, match="`max_lr`"):
        lr_find(Plain(), _trainer(tmp_path), DigitsDataModule())


def test_set_max_lr_scales_group_peaks():
    model = ImageClassifier(num_classes=10, in_channels=1, max_lr=0.1)
    model.hparams["param_group_max_lr"] = {"backbone.": 0.01}
    set_max_lr(model, 0.4)
    assert model.max_lr == 0.4 and model.hparams.max_lr == 0.4
    assert model.hparams.param_group_max_lr == {"backbone.": pytest.approx(0.04)}


class _RecordLR(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


@pytest.mark.slow
def test_range_test_sets_the_peak_and_leaves_the_rest_as_it_was(tmp_path):
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=64)
    model = ImageClassifier(num_classes=10, in_channels=1, max_lr=0.05)
    mixup = MixUp(alpha=0.2)
    record = _RecordLR()
    trainer = _trainer(tmp_path, callbacks=[mixup, record], max_epochs=2)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    result = lr_find(
        model, trainer, dm, min_lr=1e-4, num_training=50, plot_path=tmp_path / "lr_find.png"
    )

    # Weights, global RNG and the mixing callback's state are as before; it never mixed.
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert mixup.state_dict()["batches"] == 0 and record.lrs == []
    assert set(result.suggestions) == {"valley", "steep", "minimum"}
    assert result.previous_max_lr == 0.05
    assert model.max_lr == result.suggestion == result.suggestions["valley"]
    assert model.hparams.max_lr == result.suggestion
    assert result.plot_path is not None and result.plot_path.stat().st_size > 0
    assert "valley" in result.table() and "<- max_lr" in result.table()
    assert len(result.lrs) == len(result.losses) <= 50

    trainer.fit(model, datamodule=dm)
    total = trainer.estimated_stepping_batches
    assert len(record.lrs) == total
    # The fit's LR is torch's OneCycleLR with the suggestion as its peak, step for step.
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=result.suggestion, total_steps=total, pct_start=0.25
    )
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert record.lrs == pytest.approx(expected, rel=1e-12)
    assert record.lrs[0] == pytest.approx(result.suggestion / 25)
    assert mixup.state_dict()["batches"] == total


@pytest.mark.slow
def test_sweep_runs_every_step_on_a_one_epoch_trainer(tmp_path):
    # Lightning's sweep also stops at max_epochs; one epoch has 19 steps at batch 64 here.
    model = ImageClassifier(num_classes=10, in_channels=1)
    trainer = _trainer(tmp_path, max_epochs=1)
    result = lr_find(
        model,
        trainer,
        DigitsDataModule(batch_size=64),
        min_lr=1e-3,
        num_training=30,
        early_stop_threshold=None,
    )
    assert len(result.lrs) == 30
    assert trainer.max_epochs == 1


@pytest.mark.slow
@pytest.mark.parametrize("path", ["tuner", "callback"])
def test_lightnings_own_finder_sets_the_onecycle_peak(tmp_path, path):
    # Lightning's finder writes its suggestion to `lr`: a OneCycleModule's peak follows it.
    from lightning.pytorch.callbacks import LearningRateFinder
    from lightning.pytorch.tuner import Tuner

    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=64)
    model = ImageClassifier(num_classes=10, in_channels=1, max_lr=0.05)
    model.hparams["param_group_max_lr"] = {"backbone.": 0.01}
    record = _RecordLR()
    finder_kwargs = {"min_lr": 1e-4, "max_lr": 1.0}
    callbacks: list[Callback] = [record]
    if path == "callback":
        callbacks.insert(0, LearningRateFinder(num_training_steps=30, **finder_kwargs))
    trainer = _trainer(tmp_path, callbacks=callbacks, max_epochs=2)
    if path == "tuner":
        finder = Tuner(trainer).lr_find(model, datamodule=dm, num_training=30, **finder_kwargs)
        found = finder.suggestion()
    trainer.fit(model, datamodule=dm)
    if path == "callback":
        found = callbacks[0].optimal_lr.suggestion()

    assert model.max_lr == model.hparams.max_lr == model.lr == found
    assert model.hparams.param_group_max_lr == {"backbone.": pytest.approx(0.01 * found / 0.05)}
    total = trainer.estimated_stepping_batches
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=found, total_steps=total, pct_start=0.25)
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    # param group 0 is the head ("default"); the backbone groups run a scaled cycle.
    assert record.lrs == pytest.approx(expected, rel=1e-9)


def test_lr_must_be_positive():
    model = ImageClassifier(num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="`lr`"):
        model.lr = -1.0


@pytest.mark.slow
def test_ddp_ranks_average_the_sweep_and_share_one_suggestion(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("_ddp_lr_find.py")
    subprocess.run(
        [sys.executable, str(script), str(tmp_path)], check=True, timeout=300, capture_output=True
    )
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["local"] != rank1["local"]  # each process swept its own shard
    mean = [(a + b) / 2 for a, b in zip(rank0["local"], rank1["local"], strict=True)]
    assert rank0["losses"] == rank1["losses"] == pytest.approx(mean, rel=1e-12)
    assert len(mean) == 30  # no early stop under DDP
    assert rank0["suggestion"] == rank1["suggestion"] == rank0["max_lr"] == rank1["max_lr"]
    assert rank0["suggestion"] == suggest_lrs(rank0["lrs"], mean)["valley"]
