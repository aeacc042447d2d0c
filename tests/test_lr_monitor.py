"""LRMonitor: values read back from the CSV log against standalone torch schedulers."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from _logs import csv_rows, csv_trainer, series
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR, StepLR
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes.callbacks.lr_monitor import LRMonitor

BATCH = 4


def _loader(batches: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batches * BATCH, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=BATCH)


class Net(pl.LightningModule):
    def __init__(self, configure: Callable[[pl.LightningModule], Any]) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)
        self._configure = configure

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)

    def configure_optimizers(self) -> Any:
        return self._configure(self)


def _make_optimizer(name: str, params: Any) -> torch.optim.Optimizer:
    if name == "SGD":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    return torch.optim.AdamW(params, lr=0.1, betas=(0.9, 0.99), weight_decay=0.01)


def _reference_onecycle(name: str, steps: int) -> tuple[list[float], list[float]]:
    """LR and momentum/beta1 of each optimizer step, from OneCycleLR stepped in a plain loop."""
    opt = _make_optimizer(name, [nn.Parameter(torch.zeros(1))])
    sched = OneCycleLR(opt, max_lr=0.5, total_steps=steps, pct_start=0.3)
    lrs, momenta = [], []
    for _ in range(steps):
        group = opt.param_groups[0]
        lrs.append(sched.get_last_lr()[0])
        momenta.append(group["momentum"] if "momentum" in group else group["betas"][0])
        opt.step()
        sched.step()
    return lrs, momenta


@pytest.mark.parametrize(
    ("opt_name", "accumulate", "plot"), [("SGD", 1, True), ("SGD", 3, False), ("AdamW", 2, False)]
)
def test_logs_scheduler_and_optimizer_once_per_optimizer_step(
    tmp_path: Any, opt_name: str, accumulate: int, plot: bool
) -> None:
    batches = 12
    steps = math.ceil(batches / accumulate)

    def configure(module: pl.LightningModule) -> Any:
        opt = _make_optimizer(opt_name, module.parameters())
        sched = OneCycleLR(opt, max_lr=0.5, total_steps=steps, pct_start=0.3)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    monitor = LRMonitor(plot=plot)
    trainer = csv_trainer(tmp_path, [monitor], accumulate_grad_batches=accumulate)
    trainer.fit(Net(configure), _loader(batches))

    key = f"lr-{opt_name}"
    rows = csv_rows(trainer)
    ref_lr, ref_momentum = _reference_onecycle(opt_name, steps)
    logged_steps, lrs = series(rows, key)
    # Once per optimizer step, never once per micro-batch.
    assert logged_steps == list(range(steps))
    assert lrs == pytest.approx(ref_lr, rel=1e-12)
    assert series(rows, key + "-scheduler")[1] == pytest.approx(ref_lr, rel=1e-12)
    assert series(rows, key + "-momentum")[1] == pytest.approx(ref_momentum, rel=1e-12)
    wd = 1e-4 if opt_name == "SGD" else 0.01
    assert series(rows, key + "-weight_decay")[1] == pytest.approx([wd] * steps)
    assert series(rows, key + "-lr_mismatch_steps")[1] == [0.0] * steps
    assert monitor.mismatch_steps == {key: 0}
    assert monitor.history[key] == (list(range(steps)), pytest.approx(ref_lr, rel=1e-12))
    if plot:
        assert monitor.plot_path == f"{trainer.log_dir}/lr_schedule.png"
        with open(monitor.plot_path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    else:
        assert monitor.plot_path is None


def test_lightning_monitor_logs_per_micro_batch_under_accumulation(tmp_path: Any) -> None:
    """The behaviour LRMonitor fixes: Lightning writes one row per micro-batch of a window."""

    def configure(module: pl.LightningModule) -> Any:
        opt = torch.optim.SGD(module.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": StepLR(opt, 1), "interval": "step"}}

    trainer = csv_trainer(tmp_path, [LearningRateMonitor()], accumulate_grad_batches=3)
    trainer.fit(Net(configure), _loader(6))
    steps, _ = series(csv_rows(trainer), "lr-SGD")
    assert steps == [0, 0, 0, 1, 1, 1]


class _HalvingScheduler:
    """A scheduler without ``get_last_lr`` (Lightning accepts any object with ``step``)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def step(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] *= 0.5

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class ThreeOptimizers(pl.LightningModule):
    """Manual optimization: a scheduled SGD with two groups, an Adam alone, an odd scheduler."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b, self.c, self.d = (nn.Linear(4, 1) for _ in range(4))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        optimizers = self.optimizers()
        for opt in optimizers:
            opt.zero_grad()
        pred = self.a(x) + self.b(x) + self.c(x) + self.d(x)
        self.manual_backward(F.mse_loss(pred, y))
        for opt in optimizers:
            opt.step()
        for sched in self.lr_schedulers():
            sched.step()

    def configure_optimizers(self) -> Any:
        sgd = torch.optim.SGD(
            [{"params": self.a.parameters()}, {"params": self.b.parameters(), "name": "head"}],
            lr=0.1,
            momentum=0.9,
        )
        adam = torch.optim.Adam(self.c.parameters(), lr=0.01)
        sgd2 = torch.optim.SGD(self.d.parameters(), lr=0.2)
        schedulers = [
            {"scheduler": StepLR(sgd, step_size=1, gamma=0.9), "name": "main"},
            {"scheduler": _HalvingScheduler(sgd2)},
        ]
        return [sgd, adam, sgd2], schedulers

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        scheduler.step()


def test_several_optimizers_manual_optimization_and_lightning_key_names(tmp_path: Any) -> None:
    monitor = LRMonitor(plot=False)
    trainer = csv_trainer(tmp_path / "ours", [monitor])
    trainer.fit(ThreeOptimizers(), _loader(4))
    rows = csv_rows(trainer)
    # Manual optimization: global_step counts every optimizer's step, 3 per batch, and each
    # optimizer is logged at the steps it takes.
    steps, lrs = series(rows, "main/pg1")
    assert steps == [0, 3, 6, 9]
    assert lrs == pytest.approx([0.1 * 0.9**n for n in range(4)])
    assert series(rows, "main/head-scheduler")[1] == pytest.approx([0.1 * 0.9**n for n in range(4)])
    assert series(rows, "main/head-momentum")[1] == [0.9] * 4
    assert series(rows, "lr-Adam") == ([1, 4, 7, 10], [0.01] * 4)
    assert series(rows, "lr-Adam-momentum")[1] == [0.9] * 4  # beta1
    assert series(rows, "lr-SGD") == ([2, 5, 8, 11], [0.2 * 0.5**n for n in range(4)])
    keys = set().union(*rows)
    # No scheduler, or a scheduler without get_last_lr: the optimizer's value only.
    assert not {"lr-Adam-scheduler", "lr-SGD-scheduler", "lr-SGD-lr_mismatch_steps"} & keys
    assert monitor.mismatch_steps == {"main/pg1": 0, "main/head": 0}

    # Every key Lightning's own monitor writes is one of ours, with the same meaning.
    lightning = LearningRateMonitor(log_momentum=True, log_weight_decay=True)
    reference = csv_trainer(tmp_path / "lightning", [lightning])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.fit(ThreeOptimizers(), _loader(4))
    lightning_keys = set().union(*csv_rows(reference)) - {"epoch", "step"}
    assert lightning_keys == {
        "main/pg1",
        "main/head",
        "lr-SGD",
        "lr-Adam",
        *(
            f"{k}-{s}"
            for k in ("main/pg1", "main/head", "lr-SGD", "lr-Adam")
            for s in ("momentum", "weight_decay")
        ),
    }
    assert lightning_keys <= keys


class EditsLR(Net):
    """Sets the LR by hand in two batches: the scheduler does not know."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx in (3, 5):
            self.trainer.optimizers[0].param_groups[0]["lr"] = 0.5
        return super().training_step(batch, batch_idx)


def test_disagreement_warns_once_and_is_counted(tmp_path: Any) -> None:
    steps = 8

    def configure(module: pl.LightningModule) -> Any:
        opt = _make_optimizer("SGD", module.parameters())
        sched = OneCycleLR(opt, max_lr=0.5, total_steps=steps, pct_start=0.3)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    monitor = LRMonitor(plot=False)
    trainer = csv_trainer(tmp_path, [monitor])
    ref, _ = _reference_onecycle("SGD", steps)
    pattern = (
        r"disagree on the learning rate of SGD param group 0 \('lr-SGD'\) at step 3:"
        rf" scheduler.get_last_lr\(\)\[0\]={ref[3]:.6g}, optimizer.param_groups\[0\]\['lr'\]=0.5"
    )
    with pytest.warns(UserWarning, match=pattern) as record:
        trainer.fit(EditsLR(configure), _loader(steps))
    assert sum("disagree" in str(w.message) for w in record) == 1
    assert monitor.mismatch_steps == {"lr-SGD": 2}
    rows = csv_rows(trainer)
    lrs = series(rows, "lr-SGD")[1]
    assert lrs[3] == lrs[5] == 0.5
    # OneCycleLR recomputes from its position, so the next step is back on schedule.
    assert series(rows, "lr-SGD-scheduler")[1] == pytest.approx(ref)
    assert lrs[4] == pytest.approx(ref[4])
    assert series(rows, "lr-SGD-lr_mismatch_steps")[1] == [0, 0, 0, 1, 1, 2, 2, 2]


def test_log_every_n_steps_thins_the_log_not_the_history(tmp_path: Any) -> None:
    def configure(module: pl.LightningModule) -> Any:
        return torch.optim.Adam(module.parameters(), lr=0.01)

    monitor = LRMonitor(log_every_n_steps=3, plot=False)
    trainer = csv_trainer(tmp_path, [monitor])
    trainer.fit(Net(configure), _loader(10))
    assert series(csv_rows(trainer), "lr-Adam")[0] == [0, 3, 6, 9]
    assert monitor.history["lr-Adam"][0] == list(range(10))
    assert monitor.mismatch_steps == {}


def test_trainer_without_logger_is_a_clear_error(tmp_path: Any) -> None:
    trainer = csv_trainer(tmp_path, [LRMonitor()], logger=False)
    net = Net(lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    with pytest.raises(MisconfigurationException, match="LRMonitor needs a logger"):
        trainer.fit(net, _loader(2))


def test_duplicate_param_group_names_are_an_error(tmp_path: Any) -> None:
    def configure(module: pl.LightningModule) -> Any:
        groups = [
            {"params": module.body.parameters(), "name": "x"},
            {"params": module.head.parameters(), "name": "x"},
        ]
        return torch.optim.SGD(groups, lr=0.1)

    trainer = csv_trainer(tmp_path, [LRMonitor()])
    with pytest.raises(
        MisconfigurationException, match=r"duplicated parameter group names \['x'\]"
    ):
        trainer.fit(Net(configure), _loader(2))


@pytest.mark.parametrize(
    ("argument", "value", "error"),
    [
        ("log_every_n_steps", 0, ValueError),
        ("log_every_n_steps", 2.0, TypeError),
        ("log_every_n_steps", True, TypeError),
        ("log_momentum", "yes", TypeError),
        ("log_weight_decay", 1, TypeError),
        ("rtol", -1.0, ValueError),
        ("rtol", float("nan"), ValueError),
        ("atol", "0", TypeError),
        ("atol", -1e-12, ValueError),
        ("plot", None, TypeError),
        ("plot_filename", "lr.jpg", ValueError),
        ("plot_filename", Path("lr.png"), TypeError),
    ],
)
def test_invalid_arguments(argument: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"^LRMonitor: `{argument}`"):
        LRMonitor(**{argument: value})


# ------------------------------------------------------------------ callback_metrics
# Lightning's `LearningRateMonitor` writes its values into `trainer.callback_metrics`, so
# `EarlyStopping` and `ModelCheckpoint` can monitor `lr-SGD` (Lightning's
# `test_lr_monitor_update_callback_metrics`); LRMonitor must allow the same.


def _step_lr_per_epoch(module: pl.LightningModule) -> Any:
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    return [opt], [StepLR(opt, step_size=1, gamma=0.5)]


@pytest.mark.parametrize(
    "accelerator",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ),
    ],
)
def test_early_stopping_monitors_the_learning_rate(tmp_path: Any, accelerator: str) -> None:
    monitor = LRMonitor(plot=False)
    stopping = EarlyStopping(
        monitor="lr-SGD", mode="min", stopping_threshold=0.02, check_on_train_epoch_end=True
    )
    trainer = csv_trainer(
        tmp_path,
        [monitor, stopping],
        max_epochs=5,
        limit_train_batches=2,
        accelerator=accelerator,
        devices=1,
    )
    trainer.fit(Net(_step_lr_per_epoch), _loader(2))
    # 0.1, 0.05, 0.025, 0.0125: the first value below 0.02 is that of epoch 3, so it stops there.
    steps, lrs = monitor.history["lr-SGD"]
    assert steps == list(range(8))
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125])
    assert stopping.stopped_epoch == 3
    assert trainer.current_epoch == 4
    assert float(trainer.callback_metrics["lr-SGD"]) == pytest.approx(0.0125)
    for key in ("lr-SGD-momentum", "lr-SGD-weight_decay", "lr-SGD-scheduler"):
        assert key in trainer.callback_metrics


def test_model_checkpoint_monitors_the_learning_rate(tmp_path: Any) -> None:
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "checkpoints", monitor="lr-SGD", mode="max", save_top_k=2
    )
    trainer = csv_trainer(
        tmp_path,
        [LRMonitor(plot=False), checkpoint],
        max_epochs=3,
        limit_train_batches=2,
        enable_checkpointing=True,
    )
    trainer.fit(Net(_step_lr_per_epoch), _loader(2))
    # The two epochs with the highest learning rate, 0.1 and 0.05, are kept.
    scores = sorted(float(s) for s in checkpoint.best_k_models.values())
    assert scores == pytest.approx([0.05, 0.1])
    assert float(checkpoint.best_model_score) == pytest.approx(0.1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch=0-step=2.ckpt",
        "epoch=1-step=4.ckpt",
    ]


class Alternating(pl.LightningModule):
    """Manual optimization: two optimizers taking turns, one step per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = nn.Linear(4, 1), nn.Linear(4, 1)
        self.took: dict[str, list[int]] = {"lr-SGD": [], "lr-Adam": []}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        sgd, adam = self.optimizers()
        opt, layer, key = (
            (sgd, self.a, "lr-SGD") if batch_idx % 2 == 0 else (adam, self.b, "lr-Adam")
        )
        opt.zero_grad()
        self.manual_backward(F.mse_loss(layer(x), y))
        self.took[key].append(self.trainer.global_step)
        opt.step()

    def configure_optimizers(self) -> Any:
        return [
            torch.optim.SGD(self.a.parameters(), lr=0.1),
            torch.optim.Adam(self.b.parameters(), lr=0.01),
        ]


@pytest.mark.parametrize("every_n", [2, 4, 50])
def test_alternating_optimizers_are_each_logged_at_steps_they_take(
    tmp_path: Any, every_n: int
) -> None:
    """An even `log_every_n_steps` must not hide the optimizer that steps on odd steps."""
    model = Alternating()
    trainer = csv_trainer(tmp_path, [LRMonitor(plot=False)], log_every_n_steps=every_n)
    trainer.fit(model, _loader(12))
    rows = csv_rows(trainer)
    assert model.took == {"lr-SGD": list(range(0, 12, 2)), "lr-Adam": list(range(1, 12, 2))}
    for key, took in model.took.items():
        # Each optimizer is logged at the first step it takes in every window of `every_n`
        # global steps: as often as one optimizer stepping every step would be.
        windows: dict[int, int] = {}
        for step in took:
            windows.setdefault(step // every_n, step)
        logged, values = series(rows, key)
        assert logged == sorted(windows.values())
        assert set(logged) <= set(took)
        assert values == [0.1 if key == "lr-SGD" else 0.01] * len(logged)


def test_resumed_fit_logs_at_the_steps_of_the_uninterrupted_one(tmp_path: Any) -> None:
    def configure(module: pl.LightningModule) -> Any:
        return torch.optim.Adam(module.parameters(), lr=0.01)

    first = csv_trainer(tmp_path / "a", [LRMonitor(3, plot=False)], max_steps=5, max_epochs=3)
    first.fit(Net(configure), _loader(10))
    first.save_checkpoint(tmp_path / "step5.ckpt")
    assert series(csv_rows(first), "lr-Adam")[0] == [0, 3]
    second = csv_trainer(tmp_path / "b", [LRMonitor(3, plot=False)], max_steps=10, max_epochs=3)
    second.fit(Net(configure), _loader(10), ckpt_path=tmp_path / "step5.ckpt")
    # Steps 5..9 of a fit logging every 3 steps: 6 and 9, as without the interruption.
    assert series(csv_rows(second), "lr-Adam")[0] == [6, 9]
