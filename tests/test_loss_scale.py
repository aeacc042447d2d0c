"""LossScaleMonitor and AMP-aware scheduling, on the CPU with a float16 GradScaler.

``GradScaler("cpu", init_scale=2**40)`` makes the first steps overflow in float16 for sure: the
scale halves on each of them until the scaled gradients fit, so the test knows skips happen
without needing a GPU.
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from _logs import csv_rows, csv_trainer, series
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes.callbacks.loss_scale import LossScaleMonitor
from lightning_recipes.callbacks.lr_monitor import LRMonitor

INIT_SCALE = 2.0**40
SCHEDULER_FIRST = "Detected call of `lr_scheduler.step()` before `optimizer.step()`"


def _loader(batches: int, batch: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batches * batch, 16, generator=g)
    y = torch.randint(0, 4, (batches * batch,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def _amp() -> MixedPrecision:
    return MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    )


def _trainer(tmp_path: Any, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    """:func:`csv_trainer` with fp16 mixed precision and a GradScaler on the CPU."""
    return csv_trainer(tmp_path, callbacks, **{"plugins": [_amp()], **kwargs})


class Classifier(pl.LightningModule):
    """Records, independently of the callback, whether each optimizer step changed the weights."""

    def __init__(self, fused: bool = False, onecycle: bool = True, total_steps: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        self.fused = fused
        self.onecycle = onecycle
        self.total_steps = total_steps
        self.updated: list[bool] = []
        self._before: torch.Tensor | None = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self._before = torch.cat([p.detach().flatten() for p in self.parameters()]).clone()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._before is not None:
            after = torch.cat([p.detach().flatten() for p in self.parameters()])
            self.updated.append(not torch.equal(after, self._before))
            self._before = None

    def configure_optimizers(self) -> Any:
        if self.fused:
            opt: torch.optim.Optimizer = torch.optim.Adam(self.parameters(), lr=1e-3, fused=True)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        if not self.onecycle:
            return opt
        sched = OneCycleLR(opt, max_lr=0.05, total_steps=self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@pytest.mark.parametrize(("fused", "accumulate"), [(False, 1), (True, 2)])
def test_counts_skipped_steps_and_logs_the_scale(
    tmp_path: Any, fused: bool, accumulate: int
) -> None:
    steps = 30
    monitor = LossScaleMonitor()
    model = Classifier(fused=fused, onecycle=False)
    trainer = _trainer(tmp_path, [monitor], accumulate_grad_batches=accumulate)
    trainer.fit(model, _loader(steps * accumulate))

    assert len(model.updated) == trainer.global_step == steps
    skipped = model.updated.count(False)
    assert 5 < skipped < steps  # the first steps overflow, later ones fit
    assert monitor.skipped_steps == skipped
    # Every skip halves the scale (backoff_factor=0.5); 30 clean steps never reach the
    # growth_interval of 2000, so the scale never grows.
    assert monitor.scale == INIT_SCALE * 0.5**skipped
    rows = csv_rows(trainer)
    logged_steps, scales = series(rows, "loss_scale")
    assert logged_steps == list(range(steps))  # once per optimizer step, not per micro-batch
    counts = [sum(not u for u in model.updated[: k + 1]) for k in range(steps)]
    assert scales == [INIT_SCALE * 0.5**c for c in counts]
    assert series(rows, "loss_scale-skipped_steps")[1] == counts


def test_lightning_steps_the_scheduler_on_skipped_steps(tmp_path: Any) -> None:
    """Lightning issue 5558, the behaviour ``on_skipped_step="hold"`` fixes."""
    steps = 30
    model = Classifier(total_steps=steps)
    trainer = _trainer(tmp_path, [LossScaleMonitor()])
    with pytest.warns(UserWarning, match=re.escape(SCHEDULER_FIRST)):
        trainer.fit(model, _loader(steps))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert model.updated.count(False) > 5
    assert scheduler.last_epoch == trainer.global_step == steps


def _onecycle_module(on_skipped_step: str, fused: bool = False) -> pl.LightningModule:
    from lightning_recipes.module import OneCycleModule

    class Net(OneCycleModule):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
            self.updated: list[bool] = []
            self._before: torch.Tensor | None = None

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        on_before_optimizer_step = Classifier.on_before_optimizer_step
        on_train_batch_end = Classifier.on_train_batch_end

    if not fused:
        return Net(max_lr=0.05, on_skipped_step=on_skipped_step)
    # A fused optimizer is always called by GradScaler and skips inside the kernel.
    adam = functools.partial(torch.optim.Adam, fused=True, betas=(0.95, 0.999))
    return Net(max_lr=0.05, on_skipped_step=on_skipped_step, optimizer=adam)


@pytest.mark.parametrize(
    ("on_skipped_step", "fused"), [("hold", False), ("advance", False), ("hold", True)]
)
def test_onecycle_module_holds_the_schedule_on_skipped_steps(
    tmp_path: Any, on_skipped_step: str, fused: bool
) -> None:
    steps = 30
    model = _onecycle_module(on_skipped_step, fused)
    lr_monitor, scale_monitor = LRMonitor(plot=False), LossScaleMonitor()
    trainer = _trainer(tmp_path, [lr_monitor, scale_monitor], max_steps=steps, max_epochs=None)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model, _loader(steps))
    spurious = [w for w in record if SCHEDULER_FIRST in str(w.message)]
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    real = model.updated.count(True)
    assert trainer.global_step == len(model.updated) == steps
    assert scale_monitor.skipped_steps == steps - real > 5
    if on_skipped_step == "advance":
        assert scheduler.last_epoch == steps
        assert spurious
        return
    # hold: scheduler steps equal real parameter updates, and torch has nothing to warn about.
    assert scheduler.last_epoch == real
    assert not spurious
    # The LR of every step is OneCycle's value at the number of real updates before it.
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.05, momentum=0.95, nesterov=True)
    ref = OneCycleLR(opt, max_lr=0.05, total_steps=steps, pct_start=0.25, base_momentum=0.85)
    expected = []
    for updated in model.updated:
        expected.append(ref.get_last_lr()[0])
        if updated:
            opt.step()
            ref.step()
    name = "Adam" if fused else "SGD"
    for key in (f"lr-{name}/default", f"lr-{name}/default/no_decay"):  # OneCycleModule's groups
        assert lr_monitor.history[key] == (list(range(steps)), pytest.approx(expected, rel=1e-12))
        assert lr_monitor.mismatch_steps[key] == 0


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_without_a_scaler_it_says_so_once_and_logs_nothing(tmp_path: Any, precision: str) -> None:
    monitor = LossScaleMonitor()
    trainer = _trainer(tmp_path, [monitor], plugins=None, precision=precision, max_steps=3)
    with pytest.warns(UserWarning, match=f"precision='{precision}' uses no GradScaler") as record:
        trainer.fit(Classifier(onecycle=False), _loader(3))
    assert sum("no GradScaler" in str(w.message) for w in record) == 1
    rows = csv_rows(trainer)
    assert len(series(rows, "train_loss")[0]) == 3
    assert not any("loss_scale" in row for row in rows)
    assert monitor.scale is None
    assert monitor.skipped_steps == 0


def test_state_dict_keeps_the_count() -> None:
    monitor = LossScaleMonitor()
    monitor._skipped = torch.tensor(7.0)
    restored = LossScaleMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.state_dict() == {"skipped_steps": 7}
    assert restored.skipped_steps == 7


@pytest.mark.parametrize("prog_bar", [1, "True", None])
def test_invalid_arguments(prog_bar: Any) -> None:
    with pytest.raises(TypeError, match="`prog_bar`"):
        LossScaleMonitor(prog_bar=prog_bar)


def test_resumed_fit_continues_the_count(tmp_path: Any) -> None:
    model = Classifier(onecycle=False)
    first = LossScaleMonitor()
    trainer = _trainer(tmp_path, [first], max_steps=20, max_epochs=None)
    trainer.fit(model, _loader(20))  # ends with the epoch, so the checkpoint is clean
    skipped = first.skipped_steps
    assert skipped == model.updated.count(False) > 5
    ckpt = str(tmp_path / "mid.ckpt")
    trainer.save_checkpoint(ckpt)

    model.updated = []
    second = LossScaleMonitor()
    resumed = _trainer(tmp_path, [second], max_steps=26, max_epochs=None)
    resumed.fit(model, _loader(20), ckpt_path=ckpt)
    assert second.skipped_steps == skipped + model.updated.count(False)
    # The scaler's state was restored too: no second run of 2**40 overflows.
    assert second.scale == first.scale * 0.5 ** model.updated.count(False)
    logged = series(csv_rows(resumed), "loss_scale-skipped_steps")
    assert logged[0][-1] == 25 and logged[1][-1] == second.skipped_steps
