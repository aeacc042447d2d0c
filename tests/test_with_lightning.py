"""OneCycleModule next to the rest of Lightning: tuners, SWA, compile, precision, loggers, limits.

Every fit records the learning rate and momentum of each param group right before each real
optimizer step and compares them with a standalone torch ``OneCycleLR`` over the true number of
optimizer steps, stepped in a plain loop.
"""

from __future__ import annotations

import math
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from _logs import csv_rows, series
from lightning.pytorch.callbacks import (
    BatchSizeFinder,
    Callback,
    EarlyStopping,
    LearningRateFinder,
    LearningRateMonitor,
    ModelCheckpoint,
    StochasticWeightAveraging,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR
from torch.optim.swa_utils import SWALR
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import OneCycleModule
from lightning_recipes.callbacks import MixUp, TrainingSanityChecks, TrainingSanityWarning
from lightning_recipes.scheduler import GuardedOneCycleLR, ScheduleProgress, schedule_progress

pytestmark = pytest.mark.slow

N_SAMPLES = 64
N_CLASSES = 3
ALL_RAISE = dict.fromkeys(TrainingSanityChecks().modes, "raise")


def _data(n: int = N_SAMPLES) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return TensorDataset(x, torch.randint(0, N_CLASSES, (n,), generator=g))


class Clf(OneCycleModule):
    """A small classifier that loads its own data with ``self.batch_size`` (BatchSizeFinder)."""

    def __init__(self, batch_size: int = 8, body: nn.Module | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.batch_size = batch_size
        self.num_classes = N_CLASSES
        self.body = body or nn.Sequential(
            nn.Flatten(), nn.Linear(16, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, N_CLASSES)
        )
        self.soft_target_batches = 0  # batches whose targets were mixed (not one-hot)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if y.ndim == 2 and bool((y.max(dim=1).values < 1).any()):
            self.soft_target_batches += 1
        loss = F.cross_entropy(self.body(x).float(), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.body(x).float(), y))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_data(), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_data(16), batch_size=8)


class Recorder(Callback):
    """LR and momentum of every param group right before each optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.moms: list[list[float]] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.lrs.append([g["lr"] for g in optimizer.param_groups])
        self.moms.append(
            [g.get("momentum", g.get("betas", (None,))[0]) for g in optimizer.param_groups]
        )


def _trainer(tmp_path: Path, callbacks: list[Callback], **kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = {
        "max_epochs": 2,
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1,
        "default_root_dir": tmp_path,
    }
    return pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def reference(total: int, max_lrs: list[float], **kwargs: Any) -> tuple[list, list]:
    """LR and momentum per step of torch's OneCycleLR stepped in a plain loop."""
    params = [nn.Parameter(torch.zeros(1)) for _ in max_lrs]
    opt = torch.optim.SGD([{"params": [p]} for p in params], lr=1.0, momentum=0.9)
    kwargs.setdefault("pct_start", 0.25)
    sched = OneCycleLR(opt, max_lr=max_lrs, total_steps=total, **kwargs)
    lrs, moms = [], []
    for _ in range(total):
        lrs.append([g["lr"] for g in opt.param_groups])
        moms.append([g["momentum"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return lrs, moms


def assert_close(actual: Any, expected: Any, rtol: float = 1e-12) -> None:
    torch.testing.assert_close(
        torch.tensor(actual, dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64),
        rtol=rtol,
        atol=0.0,
    )


def steps(n_batches: int, accumulate: int = 1, epochs: int = 2) -> int:
    """Lightning steps after every `accumulate` batches and on the last batch of an epoch."""
    per_epoch = sum(1 for i in range(n_batches) if (i + 1) % accumulate == 0 or i + 1 == n_batches)
    return per_epoch * epochs


def _scheduler(trainer: pl.Trainer) -> GuardedOneCycleLR:
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, GuardedOneCycleLR)
    return scheduler


def _assert_matches_standalone(rec: Recorder, model: Clf, total: int, **kwargs: Any) -> None:
    max_lrs = [g["max_lr"] for g in model.trainer.optimizers[0].param_groups]
    ref_lrs, ref_moms = reference(total, max_lrs, **kwargs)
    assert len(rec.lrs) == total
    assert_close(rec.lrs, ref_lrs)
    assert_close(rec.moms, ref_moms)
    scheduler = _scheduler(model.trainer)
    assert scheduler.total_steps == total == scheduler.last_epoch


# --------------------------------------------------------------------------- accumulation
def test_gradient_accumulation_with_mixup(tmp_path: Path) -> None:
    rec, model = Recorder(), Clf(max_lr=0.2)
    trainer = _trainer(
        tmp_path,
        [rec, MixUp(alpha=1.0), TrainingSanityChecks(**ALL_RAISE)],
        accumulate_grad_batches=3,
    )
    trainer.fit(model)
    _assert_matches_standalone(rec, model, steps(8, 3))
    assert model.soft_target_batches == 16  # every batch of both epochs was mixed


# --------------------------------------------------------------------------- SWA
class WithBatchNorm(Clf):
    def __init__(self, **kwargs: Any):
        body = nn.Sequential(
            nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, N_CLASSES)
        )
        super().__init__(body=body, **kwargs)


def test_stochastic_weight_averaging_takes_over_after_the_cycle(tmp_path: Path) -> None:
    rec, model = Recorder(), WithBatchNorm(max_lr=0.2)
    # SWA from epoch 2 of 4, then one more epoch to recompute the BatchNorm statistics.
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=3, annealing_epochs=1)
    trainer = _trainer(
        tmp_path,
        [rec, swa, MixUp(alpha=1.0), TrainingSanityChecks(**ALL_RAISE)],
        max_epochs=4,
    )
    trainer.fit(model)
    assert trainer.current_epoch == 5 and swa.n_averaged == 2  # SWA ran, with its extra epoch
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, SWALR)
    # The cycle spans the 2 epochs before SWA and ends at min_lr; SWALR then reaches swa_lrs.
    ref_lrs, ref_moms = reference(16, [0.2, 0.2])
    assert_close(rec.lrs[:16], ref_lrs)
    assert_close(rec.moms[:16], ref_moms)
    assert rec.lrs[15][0] == pytest.approx(0.2 / 25 / 1e4, rel=1e-9)
    # SWALR starts from the LR the cycle ended at (min_lr; the scheduler stays there after
    # its last step) for its one annealing epoch (stepped per epoch), then holds swa_lrs.
    swa_epoch_2 = [lrs[0] for lrs in rec.lrs[16:24]]
    assert swa_epoch_2 == pytest.approx([0.2 / 25 / 1e4] * 8, rel=1e-9)
    assert [lrs[0] for lrs in rec.lrs[24:32]] == pytest.approx([0.01] * 8, rel=1e-12)
    assert model.soft_target_batches >= 32  # mixing in every training epoch


def test_stochastic_weight_averaging_from_the_first_epoch(tmp_path: Path) -> None:
    rec, model = Recorder(), Clf(max_lr=0.2)
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1, annealing_epochs=1)
    trainer = _trainer(tmp_path, [rec, swa, TrainingSanityChecks(**ALL_RAISE)])
    scheduler = None

    class Grab(Callback):
        def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            nonlocal scheduler
            scheduler = trainer.lr_scheduler_configs[0].scheduler

    trainer.callbacks.append(Grab())
    trainer.fit(model)
    # SWALR replaced the cycle before its first step: the cycle never ran, SWALR did.
    assert isinstance(scheduler, GuardedOneCycleLR) and scheduler.last_epoch == 0
    assert [lrs[0] for lrs in rec.lrs[8:]] == pytest.approx([0.01] * 8, rel=1e-12)


# --------------------------------------------------------------------------- compile
def test_compiled_body(tmp_path: Path) -> None:
    # "aot_eager" traces forward and backward like inductor without compiling kernels.
    body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, N_CLASSES))
    rec, model = Recorder(), Clf(body=torch.compile(body, backend="aot_eager"), max_lr=0.2)
    _trainer(tmp_path, [rec, TrainingSanityChecks(**ALL_RAISE)], max_epochs=1).fit(model)
    _assert_matches_standalone(rec, model, steps(8, epochs=1))
    names = {n for n, _ in model.named_parameters()}
    assert "body._orig_mod.1.weight" in names  # the compiled wrapper really is in the module
    decayed = [g for g in model.trainer.optimizers[0].param_groups if g["weight_decay"] > 0]
    assert sum(p.numel() for g in decayed for p in g["params"]) == 16 * 8 + 8 * N_CLASSES


# --------------------------------------------------------------------------- tuners
@pytest.mark.parametrize(
    ("start", "init_val"), [(32, 2), (4, 8)], ids=["finds_smaller_batch", "finds_larger_batch"]
)
def test_batch_size_finder(tmp_path: Path, start: int, init_val: int) -> None:
    rec, model = Recorder(), Clf(batch_size=start, max_lr=0.2)
    finder = BatchSizeFinder(init_val=init_val, max_trials=1, steps_per_trial=1)
    trainer = _trainer(tmp_path, [finder, rec, TrainingSanityChecks(**ALL_RAISE)])
    trainer.fit(model)
    found = model.batch_size
    assert found == finder.optimal_batch_size == init_val  # the finder changed the step count
    total = steps(math.ceil(N_SAMPLES / found))
    _assert_matches_standalone(rec, model, total)
    # The last step used min_lr = max_lr / div_factor / final_div_factor.
    assert_close(rec.lrs[-1], [0.2 / 25 / 1e4] * 2, rtol=1e-9)


def test_learning_rate_finder_sets_the_peak(tmp_path: Path) -> None:
    pl.seed_everything(0)
    rec, model = Recorder(), Clf(max_lr=0.2, param_group_max_lr={"body.4.": 0.02})
    finder = LearningRateFinder(attr_name="max_lr", num_training_steps=20, min_lr=1e-4, max_lr=1.0)
    trainer = _trainer(tmp_path, [finder, rec, TrainingSanityChecks(**ALL_RAISE)])
    trainer.fit(model)
    suggestion = finder.optimal_lr.suggestion()
    assert suggestion is not None and suggestion != 0.2
    assert model.max_lr == model.hparams.max_lr == suggestion
    total = steps(8)
    # Every group's peak scales by the same factor: the head keeps its tenth of max_lr.
    peaks = [g["max_lr"] for g in trainer.optimizers[0].param_groups]
    assert peaks[:2] == [suggestion, suggestion]
    assert peaks[2:] == pytest.approx([suggestion / 10, suggestion / 10], rel=1e-12)
    _assert_matches_standalone(rec, model, total)
    # The peak, at step pct_start * total - 1 = 3, is the suggestion.
    assert max(lrs[0] for lrs in rec.lrs) == rec.lrs[3][0] == pytest.approx(suggestion, rel=1e-12)
    assert rec.lrs[0][0] == pytest.approx(suggestion / 25, rel=1e-12)  # step 0 too


# --------------------------------------------------------------------------- trainer limits
@pytest.mark.parametrize(
    ("trainer_kwargs", "total"),
    [
        ({"fast_dev_run": True}, 1),
        ({"fast_dev_run": 3}, 3),
        ({"overfit_batches": 3}, steps(3)),
        ({"limit_train_batches": 5}, steps(5)),
        ({"limit_train_batches": 0.75, "accumulate_grad_batches": 2}, steps(6, 2)),
        ({"val_check_interval": 3}, steps(8)),
        ({"max_steps": 11}, 11),
    ],
    ids=[
        "fast_dev_run",
        "fast_dev_run3",
        "overfit",
        "limit",
        "limit_frac_accum",
        "val",
        "max_steps",
    ],
)
def test_trainer_limits(tmp_path: Path, trainer_kwargs: dict[str, Any], total: int) -> None:
    rec, model = Recorder(), Clf(max_lr=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingSanityWarning)
        _trainer(tmp_path, [rec, TrainingSanityChecks(**ALL_RAISE)], **trainer_kwargs).fit(model)
    _assert_matches_standalone(rec, model, total)


def _onecycle(position: int, total: int, peak: float, pct_start: float = 0.25) -> float:
    """Two-phase cosine OneCycle written out; a warm-up of zero length is passed at once."""
    initial, low = peak / 25, peak / 25 / 1e4
    end_up = pct_start * total - 1

    def cos(a: float, b: float, pct: float) -> float:
        return b + (a - b) / 2 * (1 + math.cos(math.pi * pct))

    if position <= end_up:
        return cos(initial, peak, position / end_up if end_up > 0 else 1.0)
    return cos(peak, low, (position - end_up) / (total - 1 - end_up))


@pytest.mark.parametrize("max_steps", [1, 2, 3, 4, 8])
def test_very_short_schedules(tmp_path: Path, max_steps: int) -> None:
    rec, model = Recorder(), Clf(max_lr=0.2)
    _trainer(tmp_path, [rec, TrainingSanityChecks(**ALL_RAISE)], max_steps=max_steps).fit(model)
    expected = [_onecycle(k, max_steps, 0.2) for k in range(max_steps)]
    assert [lrs[0] for lrs in rec.lrs] == pytest.approx(expected, rel=1e-12)
    assert rec.lrs[-1][0] == pytest.approx(0.2 / 25 / 1e4, rel=1e-9)  # it ends at min_lr


def test_max_time_reports_how_far_the_schedule_got(tmp_path: Path) -> None:
    rec, model = Recorder(), Clf(max_lr=0.2)
    # The Timer checks after every batch; one batch takes far longer than a microsecond.
    trainer = _trainer(tmp_path, [rec, TrainingSanityChecks()], max_time={"microseconds": 1})
    with pytest.warns(TrainingSanityWarning, match=r"stopped after optimizer step 1 of 16 \(6.2%"):
        trainer.fit(model)
    assert trainer.global_step == 1
    assert_close(rec.lrs, reference(16, [0.2, 0.2])[0][:1])
    assert schedule_progress(_scheduler(trainer)).step == 1


# --------------------------------------------------------------------------- precision
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_with_mixup(tmp_path: Path, precision: str) -> None:
    rec, model = Recorder(), Clf(max_lr=0.2)
    kwargs: dict[str, Any] = {"precision": precision}
    if precision == "16-mixed":
        # CPU float16 autocast with a GradScaler; a small start scale makes no step overflow.
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
        kwargs = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=scaler)]}
    trainer = _trainer(tmp_path, [rec, MixUp(alpha=1.0), TrainingSanityChecks()], **kwargs)
    trainer.fit(model)
    assert type(trainer.precision_plugin).__name__ == "MixedPrecision"
    assert trainer.precision_plugin.precision == precision
    _assert_matches_standalone(rec, model, steps(8))
    assert model.soft_target_batches == 16


# --------------------------------------------------------------------------- loggers
def _tensorboard_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """Scalars under ``tag`` read from the TFRecord event files (length, crc, event, crc)."""
    from tensorboardX.proto import event_pb2

    found = []
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            found += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
    return found


@pytest.mark.parametrize("kind", ["csv", "tensorboard"])
def test_loggers_receive_the_schedule(tmp_path: Path, kind: str) -> None:
    if kind == "tensorboard":
        pytest.importorskip("tensorboardX")
    logger = CSVLogger(tmp_path) if kind == "csv" else TensorBoardLogger(tmp_path)
    rec, model = Recorder(), Clf(max_lr=0.2)
    trainer = _trainer(
        tmp_path,
        [rec, LearningRateMonitor(logging_interval="step")],
        logger=logger,
        log_every_n_steps=1,
    )
    trainer.fit(model)
    _assert_matches_standalone(rec, model, steps(8))
    expected = [lrs[0] for lrs in reference(16, [0.2, 0.2])[0]]
    if kind == "csv":
        logged_steps, logged = series(csv_rows(trainer), "lr-SGD/default")
    else:
        pairs = _tensorboard_scalars(Path(logger.log_dir), "lr-SGD/default")
        logged_steps, logged = [s for s, _ in pairs], [v for _, v in pairs]
    assert logged_steps == list(range(16))
    # TensorBoard stores float32.
    assert logged == pytest.approx(expected, rel=1e-6 if kind == "tensorboard" else 1e-12)


# --------------------------------------------------------------------------- timm
def test_timm_model_inside_a_onecycle_module(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    body = timm.create_model("test_resnet", pretrained=False, num_classes=N_CLASSES, in_chans=1)
    rec, model = Recorder(), Clf(body=body, batch_size=8, max_lr=0.05)
    _trainer(tmp_path, [rec, TrainingSanityChecks(**ALL_RAISE)], max_epochs=1).fit(model)
    _assert_matches_standalone(rec, model, steps(8, epochs=1))
    groups = {g["name"]: g for g in model.trainer.optimizers[0].param_groups}
    ndims = {p.ndim for p in groups["default"]["params"]}
    assert ndims >= {2, 4} and 1 not in ndims  # conv and linear weights decayed
    assert {p.ndim for p in groups["default/no_decay"]["params"]} == {1}


# --------------------------------------------------------------------------- early stopping
def test_early_stopping_says_how_far_the_schedule_got(tmp_path: Path) -> None:
    class Constant(Clf):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("const", 1.0)

    rec, model = Recorder(), Constant(max_lr=0.2)
    stop = EarlyStopping(monitor="const", patience=0)
    trainer = _trainer(tmp_path, [rec, stop, TrainingSanityChecks()], max_epochs=5)
    with pytest.warns(TrainingSanityWarning) as record:
        trainer.fit(model)
    assert stop.stopped_epoch == 1 and trainer.global_step == 16  # the scenario
    lr = _scheduler(trainer).optimizer.param_groups[0]["lr"]
    messages = [str(w.message) for w in record if "schedule_end" in str(w.message)]
    assert len(messages) == 1
    assert re.search(
        rf"stopped after optimizer step 16 of 40 \(40.0%\) of its OneCycle schedule.*"
        rf"lr={lr:.3g}",
        messages[0],
    )
    progress = schedule_progress(_scheduler(trainer))
    assert progress == ScheduleProgress(step=16, total=40, lr=lr, min_lr=0.2 / 25 / 1e4)
    assert not progress.finished and progress.fraction == 0.4
    assert_close(rec.lrs, reference(40, [0.2, 0.2])[0][:16])


# --------------------------------------------------------------------------- resume
def test_checkpoint_holds_the_resolved_schedule_and_resumes_exactly(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    full, model = Recorder(), Clf(batch_size=32)
    finder = BatchSizeFinder(init_val=8, max_trials=1, steps_per_trial=1)
    _trainer(tmp_path, [finder, full, ckpt], enable_checkpointing=True).fit(model)
    assert model.batch_size == 8  # 16 steps, not the 4 of batch 32 at configure_optimizers
    state = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", weights_only=True)
    assert state["lr_schedulers"][0]["resolved"] is True
    assert state["lr_schedulers"][0]["total_steps"] == 16
    resumed = Recorder()
    _trainer(tmp_path / "r", [resumed]).fit(
        Clf(batch_size=8), ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt"
    )
    assert resumed.lrs == full.lrs[8:] and resumed.moms == full.moms[8:]
