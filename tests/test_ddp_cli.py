"""Several processes: the callbacks under ``ddp_spawn``, and ``lightning-recipes fit`` under DDP.

DDP runs go through the console command in a subprocess, as a user runs them, with a timeout
so that a hang fails the test instead of stalling the suite. A ``RankRecorder`` (in
``tests/_ddp_helpers.py``), added by ``--trainer.callbacks+=``, writes what each process saw.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from _ddp_helpers import RankRecorder, TrainDuringValidation
from _logs import cli_summary
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import (
    CutMix,
    FMix,
    LossScaleMonitor,
    LRMonitor,
    MixUp,
    OneCycleModule,
    RandomMix,
    ScheduleMismatchError,
    TrainingSanityChecks,
)
from lightning_recipes.cli import main

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
DIGITS = REPO / "configs" / "digits.yaml"
TIMEOUT = 240


def _mixers() -> list[Callback]:
    return [
        MixUp(alpha=0.4, per_sample=True, seed=3, num_classes=4),
        CutMix(seed=4, num_classes=4),
        FMix(per_sample=True, seed=5, num_classes=4),
        RandomMix(
            {"mixup": 0.3, "cutmix": 0.3, "fmix": 0.4}, per_sample=True, seed=6, num_classes=4
        ),
    ]


# ------------------------------------------------------------------ pickling for ddp_spawn
class _BatchRecorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(64, 4)
        self.inputs: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.inputs.append(x.detach().clone())
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _mixed_inputs(callback: Callback, steps: int, folder: Path) -> list[torch.Tensor]:
    """The inputs ``training_step`` receives in a short fit with ``callback``."""
    images = torch.arange(8 * 64, dtype=torch.float32).reshape(8, 1, 8, 8)
    data = TensorDataset(images, torch.arange(8) % 4)
    module = _BatchRecorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
        callbacks=[callback],
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    return module.inputs


def _unpickle_in_child(index: int, callbacks: list[Callback], out: str) -> None:
    # Reaching this line means the spawned process rebuilt every callback.
    Path(out, "child.txt").write_text(" ".join(type(c).__name__ for c in callbacks))


def test_mixing_callbacks_reach_a_spawned_process(tmp_path: Path) -> None:
    # `ddp_spawn` sends the callbacks through torch's multiprocessing pickler; a
    # `torch.Generator` does not survive it, and the child died unpickling.
    callbacks = _mixers()
    mp.start_processes(
        _unpickle_in_child, args=(callbacks, str(tmp_path)), nprocs=1, start_method="spawn"
    )
    assert (tmp_path / "child.txt").read_text() == "MixUp CutMix FMix RandomMix"


@pytest.mark.parametrize("index", range(4), ids=["MixUp", "CutMix", "FMix", "RandomMix"])
def test_a_pickled_mixer_draws_what_the_original_draws(tmp_path: Path, index: int) -> None:
    original = _mixers()[index]
    # Half-way through a run, as a spawned process or a resumed one would continue it.
    first = _mixed_inputs(original, 2, tmp_path / "a")
    copy = pickle.loads(pickle.dumps(original))
    assert copy.state_dict() == original.state_dict() == {"seed": original.seed, "batches": 2}
    later = _mixed_inputs(original, 2, tmp_path / "b")
    from_copy = _mixed_inputs(copy, 2, tmp_path / "c")
    assert all(torch.equal(a, b) for a, b in zip(later, from_copy, strict=True))
    # The scenario: inputs were mixed, and differently from the first two batches.
    clean = torch.arange(8 * 64, dtype=torch.float32).reshape(8, 1, 8, 8)[:4]
    assert not torch.equal(first[0], clean)
    assert not torch.equal(later[0], first[0])


# ------------------------------------------------------------------- DDP through the CLI
EPOCHS, LIMIT = 2, 0.5


def _batches(processes: int) -> int:
    """Training batches per epoch and process: the digits train split (1257 images) shared by
    the DistributedSampler, 64 a batch without the last partial one, half of them kept."""
    return int(LIMIT * (math.ceil(1257 / processes) // 64))


BATCHES = _batches(2)  # 4; one process has 9, so the OneCycle length depends on the count


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The command in a session of its own, so that every process it starts is killed when it
    hangs or the test fails: a timeout fails the test instead of stalling the suite."""
    # Each process on one intra-op thread: two processes share the machine's cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "lightning_recipes", *args]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the ranks it started, if any are left
        process.wait()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _fit_args(folder: Path, strategy: str, devices: int = 2, config: Path = DIGITS) -> list[str]:
    return [
        "fit",
        "--config",
        str(config),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        str(devices),
        "--trainer.strategy",
        strategy,
        "--trainer.max_epochs",
        str(EPOCHS),
        "--trainer.limit_train_batches",
        str(LIMIT),
        "--trainer.limit_val_batches",
        "2",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(folder),
        "--trainer.logger.init_args.save_dir",
        str(folder),
        "--trainer.callbacks+=_ddp_helpers.RankRecorder",
        "--trainer.callbacks.out",
        str(folder / "ranks"),
    ]


def _ranks(folder: Path, out: str = "ranks") -> list[dict[str, Any]]:
    return [json.loads((folder / out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _csv(log_dir: Path) -> list[dict[str, float]]:
    with open(log_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("ddp")
    # A checkpoint at the end of every epoch, to resume from the middle of the schedule: the
    # config's unmonitored checkpoint callback keeps every epoch instead of `last.ckpt` (a third
    # one with the same triggers is refused by Lightning).
    config = yaml.safe_load(DIGITS.read_text())
    keep_all = config["trainer"]["callbacks"][1]["init_args"]
    assert keep_all["filename"] == "last"
    keep_all.update(filename="end-{epoch}", save_top_k=-1, enable_version_counter=True)
    (folder / "digits.yaml").write_text(yaml.safe_dump(config))
    result = _run(_ddp_args(folder, folder / "digits.yaml"), folder)
    assert result.returncode == 0, result.stdout + result.stderr
    # No rank aborted at exit: a gloo group's worker threads left to the interpreter's
    # finalization abort it now and then (InterruptCheckpoint frees the group at exit).
    assert "terminate called" not in result.stderr, result.stderr
    return folder, result


def _ddp_args(folder: Path, config: Path, out: str = "ranks") -> list[str]:
    """The command of ``ddp_run``, writing into ``folder`` and its records into ``out``."""
    args = [
        *_fit_args(folder, "ddp", config=config),
        "--trainer.callbacks+=lightning_recipes.LossScaleMonitor",
    ]
    args[args.index("--trainer.callbacks.out") + 1] = str(folder / out)
    return args


def _reference_onecycle(total: int, max_lr: float = 0.2) -> tuple[list[float], list[float]]:
    """LR and momentum before each step of torch's OneCycleLR stepped in a plain loop, with
    OneCycleModule's defaults (and the digits config's ``max_lr``)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=max_lr, momentum=0.95, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total, pct_start=0.25
    )
    lrs, momentums = [], []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        momentums.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    return lrs, momentums


@pytest.mark.slow
def test_ddp_ranks_follow_one_lr_schedule(ddp_run):
    folder, _ = ddp_run
    ranks = _ranks(folder)
    lrs, momentums = _reference_onecycle(EPOCHS * BATCHES)
    for rank, record in enumerate(ranks):
        assert (record["rank"], record["world_size"]) == (rank, 2)
        assert record["strategy"] == "DDPStrategy"
        assert record["total_steps"] == record["estimated_stepping_batches"] == EPOCHS * BATCHES
        assert record["global_step"] == EPOCHS * BATCHES
        torch.testing.assert_close(record["lrs"], lrs, rtol=1e-12, atol=0)
        torch.testing.assert_close(record["momentums"], momentums, rtol=1e-12, atol=0)


@pytest.mark.slow
def test_ddp_ranks_mix_with_different_draws(ddp_run):
    folder, _ = ddp_run
    lam0, lam1 = (record["lams"] for record in _ranks(folder))
    steps = EPOCHS * BATCHES
    mixed = math.ceil(0.8 * steps)  # MixUp(stop_fraction=0.8) in the config
    assert len(lam0) == len(lam1) == steps
    # Both ranks mix the same steps, each with its own draws, and stop at the same step.
    assert all(0 < lam < 1 for lam in lam0[:mixed] + lam1[:mixed])
    assert all(a != b for a, b in zip(lam0[:mixed], lam1[:mixed], strict=True))
    assert lam0[mixed:] == lam1[mixed:] == [1.0] * (steps - mixed)


@pytest.mark.slow
def test_ddp_logged_metrics_are_synced(ddp_run):
    folder, result = ddp_run
    rank0, rank1 = _ranks(folder)
    log_dir = Path(cli_summary(result.stdout)["logs"])
    rows = _csv(log_dir)
    logged = [row["train/loss"] for row in rows if "train/loss" in row]
    mean = [(a + b) / 2 for a, b in zip(rank0["losses"], rank1["losses"], strict=True)]
    assert rank0["losses"] != rank1["losses"]  # each rank trains on its own shard
    torch.testing.assert_close(logged, mean, rtol=1e-6, atol=0)
    # Validation: both ranks hold the same synced values, the ones the logger wrote.
    assert rank0["validation"] == rank1["validation"] and len(rank0["validation"]) == EPOCHS
    val = [row for row in rows if "val/acc" in row]
    for synced, row in zip(rank0["validation"], val, strict=True):
        assert synced["val/acc"] == pytest.approx(row["val/acc"], abs=1e-7)
        assert synced["val/loss"] == pytest.approx(row["val/loss"], abs=1e-7)
        assert synced["train/loss"] == pytest.approx(
            row_for_step(rows, row["step"])["train/loss"], abs=1e-7
        )


def row_for_step(rows: list[dict[str, float]], step: float) -> dict[str, float]:
    return next(r for r in rows if r.get("step") == step and "train/loss" in r)


@pytest.mark.slow
def test_ddp_writes_one_set_of_outputs(ddp_run):
    folder, result = ddp_run
    summary = cli_summary(result.stdout)
    log_dir = Path(summary["logs"])
    assert log_dir == folder / "digits" / "version_0"
    assert sorted(p.name for p in (folder / "digits").iterdir()) == ["version_0"]
    assert all(Path(record["log_dir"]) == log_dir for record in _ranks(folder))
    checkpoints = sorted(p.name for p in (log_dir / "checkpoints").iterdir())
    # The config's best, and one per epoch (the config's `last` callback, changed for the
    # resume tests).
    best = re.search(r"best: (\S+)\)", summary["checkpoints"])
    assert best is not None and re.fullmatch(r"epoch0[01]\.ckpt", Path(best[1]).name)
    assert checkpoints == sorted(["end-epoch=0.ckpt", "end-epoch=1.ckpt", Path(best[1]).name])
    assert summary["checkpoints"].startswith(str(log_dir / "checkpoints"))
    assert [p.relative_to(folder) for p in folder.rglob("*.png")] == [
        Path("digits/version_0/lr_schedule.png")
    ]
    assert [p.relative_to(folder) for p in folder.rglob("config.yaml")] == [
        Path("digits/version_0/config.yaml")
    ]
    assert Path(summary["config"]) == log_dir / "config.yaml"
    # One checkpoint for both ranks, saved at the end of the schedule.
    end = log_dir / "checkpoints" / f"end-epoch={EPOCHS - 1}.ckpt"
    state = torch.load(end, map_location="cpu", weights_only=False)
    assert state["global_step"] == EPOCHS * BATCHES
    (scheduler,) = state["lr_schedulers"]
    assert scheduler["total_steps"] == EPOCHS * BATCHES


@pytest.mark.slow
def test_ddp_monitors_and_checks_run_on_both_ranks(ddp_run):
    folder, result = ddp_run
    ranks = _ranks(folder)
    for record in ranks:
        # LRMonitor compared scheduler and optimizer at every step of every rank.
        assert record["lr_mismatch_steps"] == [{"lr-SGD/default": 0, "lr-SGD/default/no_decay": 0}]
        assert record["skipped_steps"] == [0]  # LossScaleMonitor, 32-bit: nothing to skip
        assert record["sanity_checks"] == 1
    rows = _csv(Path(cli_summary(result.stdout)["logs"]))
    logged = [row["lr-SGD/default"] for row in rows if "lr-SGD/default" in row]
    torch.testing.assert_close(logged, ranks[0]["lrs"], rtol=1e-12, atol=0)
    output = result.stdout + result.stderr
    # Said once for the run, not once per process.
    assert output.count("LossScaleMonitor: precision='32-true' uses no GradScaler") == 1
    assert "TrainingSanityChecks[" not in output
    assert "LeafSpec" not in output and "litlogger" not in output


@pytest.mark.slow
def test_ddp_spawn_runs_the_config_and_names_its_outputs(tmp_path):
    # Every callback of configs/digits.yaml (MixUp included) crosses into the spawned
    # processes; before, the child died unpickling MixUp and the parent waited forever.
    args = _fit_args(tmp_path, "ddp_spawn")
    args[args.index("--trainer.max_epochs") + 1] = "1"
    args[args.index("--trainer.limit_train_batches") + 1] = "2"
    result = _run(args, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # The test after the fit spawns new processes too: their groups are destroyed at exit.
    assert "terminate called" not in result.stderr, result.stderr
    ranks = _ranks(tmp_path)
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert all(0 < lam < 1 for r in ranks for lam in r["lams"])  # MixUp ran in both
    # The summary names the folder the spawned processes wrote, not a new empty one.
    summary = cli_summary(result.stdout)
    log_dir = tmp_path / "digits" / "version_0"
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["version_0"]
    assert Path(summary["logs"]) == log_dir
    assert all(Path(r["log_dir"]) == log_dir for r in ranks)
    assert summary["checkpoints"] == (
        f"{log_dir / 'checkpoints'} (last: {log_dir / 'checkpoints' / 'last.ckpt'},"
        f" best: {log_dir / 'checkpoints' / 'epoch00.ckpt'})"
    )
    assert (log_dir / "checkpoints" / "last.ckpt").is_file()
    assert Path(summary["config"]) == log_dir / "config.yaml"
    assert (log_dir / "config.yaml").is_file()
    # The test after fit logged into the same folder.
    assert any("test/acc" in row for row in _csv(log_dir))
    assert "LeafSpec" not in result.stdout + result.stderr


# ------------------------------------------------- the other callbacks in two processes
INIT_SCALE = 2.0**22  # float16 overflows at 65504: the first few steps are skipped


class _Probe(OneCycleModule):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 4)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", torch.nn.functional.cross_entropy(self.net(x), y), sync_dist=True)


def _probe_loader(batches: int = 24, batch: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batches * batch, 16, generator=g)
    y = torch.randint(0, 4, (batches * batch,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def _fork_trainer(tmp_path: Path, callbacks: list[Callback], **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        max_epochs=1,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
        **kwargs,
    )


@pytest.mark.slow
def test_loss_scale_monitor_and_the_held_schedule_under_ddp(tmp_path):
    # fp16 on the CPU with a large initial scale: the first steps overflow on both ranks (the
    # gradients are all-reduced before the scaler looks at them), so both skip the same
    # steps, and the OneCycle holds on exactly those.
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    callbacks = [LossScaleMonitor(), LRMonitor(), RankRecorder(str(tmp_path / "ranks"))]
    trainer = _fork_trainer(
        tmp_path, callbacks, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)]
    )
    trainer.fit(_Probe(max_lr=0.1), _probe_loader())
    rank0, rank1 = _ranks(tmp_path)
    steps = rank0["total_steps"]
    assert steps == 12  # 24 batches over 2 ranks
    assert rank0["loss_scales"] == rank1["loss_scales"] and len(rank0["loss_scales"]) == steps
    assert rank0["skipped_steps"] == rank1["skipped_steps"]
    scales = [INIT_SCALE, *rank0["loss_scales"]]
    skipped = [after < before for before, after in itertools.pairwise(scales)]
    assert rank0["skipped_steps"] == [sum(skipped)] and 0 < sum(skipped) < steps
    # The LR of each step: the reference schedule at the number of updates done so far.
    reference, _ = _reference_onecycle(steps, max_lr=0.1)
    applied = list(itertools.accumulate([0, *[not s for s in skipped]]))[:steps]
    expected = [reference[n] for n in applied]
    for record in (rank0, rank1):
        torch.testing.assert_close(record["lrs"], expected, rtol=1e-12, atol=0)
        assert record["lr_mismatch_steps"] == [{"lr-SGD/default": 0, "lr-SGD/default/no_decay": 0}]


@pytest.mark.slow
def test_a_sanity_check_ends_a_ddp_run(tmp_path):
    # Every rank checks its own module; the first to fail ends the run (the launcher stops
    # the other process), with the rule's message, instead of leaving a rank waiting.
    out = tmp_path / "errors"
    trainer = _fork_trainer(
        tmp_path, [TrainingSanityChecks(), TrainDuringValidation(str(out))], limit_val_batches=2
    )
    with pytest.raises(Exception, match=r"TrainingSanityChecks\[eval_mode\]: .*Dropout"):
        trainer.fit(_Probe(), _probe_loader(4), _probe_loader(4))
    errors = list(out.iterdir())
    assert errors and all("TrainingSanityError" in path.read_text() for path in errors)


# ------------------------------------------------------ the schedule follows devices x nodes
@pytest.mark.parametrize(
    ("devices", "num_nodes"), [(1, 1), (2, 1), (4, 1), (2, 2), (8, 4)], ids=lambda n: str(n)
)
def test_schedule_length_follows_devices_times_nodes(devices: int, num_nodes: int) -> None:
    # The objects `lightning-recipes fit --trainer.devices D --trainer.num_nodes N` builds,
    # without launching anything: the strategy's world size gives the DistributedSampler its
    # number of replicas, as in Lightning's own estimated_stepping_batches tests.
    samples, batch_size, epochs = 1000, 16, 3
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp" if devices * num_nodes > 1 else "auto",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    assert trainer.world_size == devices * num_nodes
    model = _Probe(max_lr=0.1)
    model.trainer = trainer
    loader = DataLoader(TensorDataset(torch.zeros(samples, 16), torch.zeros(samples).long()), 16)
    trainer._data_connector.attach_data(model, train_dataloaders=loader)
    trainer.strategy.connect(model)
    per_process = math.ceil(samples / (devices * num_nodes))  # DistributedSampler pads
    expected = epochs * math.ceil(per_process / batch_size)
    assert trainer.estimated_stepping_batches == expected
    scheduler = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert scheduler.total_steps == expected


# --------------------------------------------------- resuming with another number of devices
@pytest.fixture
def in_process(monkeypatch):
    """``main`` in this process reads ``sys.argv`` and calls ``seed_everything``."""
    monkeypatch.setattr(sys, "argv", ["lightning-recipes"])
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    state = torch.random.get_rng_state()
    yield
    torch.random.set_rng_state(state)


def _mid_run_checkpoint(folder: Path) -> Path:
    """The 2-process run's checkpoint after its first epoch: half-way through the OneCycle."""
    path = folder / "digits" / "version_0" / "checkpoints" / "end-epoch=0.ckpt"
    state = torch.load(path, map_location="cpu", weights_only=False)
    assert state["global_step"] == BATCHES
    (scheduler,) = state["lr_schedulers"]
    assert (scheduler["total_steps"], scheduler["last_epoch"]) == (EPOCHS * BATCHES, BATCHES)
    return path


@pytest.mark.slow
def test_resume_on_one_device_is_a_clear_error(ddp_run, tmp_path, in_process):
    folder, _ = ddp_run
    args = [
        *_fit_args(tmp_path, "auto", devices=1),
        "--ckpt_path",
        str(_mid_run_checkpoint(folder)),
    ]
    # One process sees all 1257 images: 9 batches an epoch instead of 4, so the run would end
    # after the checkpoint's 4 steps and one epoch of 9.
    match = rf"total_steps={EPOCHS * BATCHES} .* total_steps={BATCHES + _batches(1)}"
    with pytest.raises(ScheduleMismatchError, match=match):
        main(args)


@pytest.fixture(scope="module")
def rescaled_resume(ddp_run, tmp_path_factory) -> dict[str, Any]:
    """The 2-process run's mid-run checkpoint resumed by one process with rescale."""
    folder = tmp_path_factory.mktemp("rescaled")
    args = [
        *_fit_args(folder, "auto", devices=1),
        "--ckpt_path",
        str(_mid_run_checkpoint(ddp_run[0])),
        "--model.init_args.on_schedule_mismatch",
        "rescale",
    ]
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(sys, "argv", ["lightning-recipes"])
        monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
        monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
        state = torch.random.get_rng_state()
        try:
            main(args)  # with the checkpoint's `on_schedule_mismatch="error"` this raised
        finally:
            torch.random.set_rng_state(state)
    return json.loads((folder / "ranks" / "rank0.json").read_text())


@pytest.mark.slow
def test_resume_on_one_device_with_rescale_continues(rescaled_resume):
    record = rescaled_resume
    # The second epoch, now with one process: 9 optimizer steps after the checkpoint's 4.
    assert record["world_size"] == 1
    assert record["global_step"] == BATCHES + _batches(1)
    assert len(record["lrs"]) == _batches(1)
    # Rescaled to this run's real end: the checkpoint's 4 steps and one epoch of 9.
    assert record["total_steps"] == BATCHES + _batches(1)
    # The LR keeps annealing from the checkpoint's point (past the peak) downwards.
    lrs = record["lrs"]
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert lrs[0] < 0.2


@pytest.mark.slow
def test_resume_on_one_device_with_rescale_ends_the_schedule(rescaled_resume):
    # What `on_schedule_mismatch="rescale"` promises: the schedule ends on the run's last
    # optimizer step, at min_lr = max_lr / div_factor / final_div_factor.
    assert rescaled_resume["lrs"][-1] == pytest.approx(0.2 / 25 / 1e4, rel=1e-9)


# ------------------------------------------------------------- SIGTERM to one rank or to all
SIGNAL_STEP = BATCHES + 1  # one batch into the second epoch
# The ranks read, after each batch, the agreement they started after the one before: the
# signal noted after batch 5 is agreed on after batch 6 and read after batch 7.
STOP_STEP = SIGNAL_STEP + 2
GRACE = 30  # seconds a scheduler typically waits between SIGTERM and SIGKILL


def _gone(pid: int, within: float) -> bool:
    """Whether process ``pid`` has exited (it is not a child of this one) within ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1], ids=["to-the-launching-process", "to-one-rank-only"])
def test_ddp_sigterm_saves_one_checkpoint_and_resumes_bit_for_bit(ddp_run, tmp_path, rank):
    full_folder, _ = ddp_run
    config = full_folder / "digits.yaml"
    signal_at = [
        "--trainer.callbacks+=_ddp_helpers.SignalRankAt",
        f"--trainer.callbacks.out={tmp_path / 'signal'}",
        f"--trainer.callbacks.step={SIGNAL_STEP}",
        f"--trainer.callbacks.rank={rank}",
    ]
    killed = _run([*_ddp_args(tmp_path, config, out="killed"), *signal_at], tmp_path)
    ended = time.time()
    output = killed.stdout + killed.stderr
    assert killed.returncode == 128 + signal.SIGTERM, output
    # The scenario: one rank received SIGTERM in the middle of an epoch.
    sent = json.loads((tmp_path / "signal" / "signal.json").read_text())
    assert (sent["rank"], sent["step"], sent["epoch"]) == (rank, SIGNAL_STEP, 1)
    assert 0 < sent["batches_in_epoch"] < BATCHES
    assert ended - sent["time"] < GRACE
    assert "Traceback" not in output and "RuntimeError" not in output

    # Both ranks stopped after the same batch, still in that epoch, and exited; one checkpoint
    # holds that step.
    stopped = _ranks(tmp_path, "killed")
    assert [r["global_step"] for r in stopped] == [STOP_STEP] * 2
    assert [r["stopped_by"] for r in stopped] == ["SIGTERMException"] * 2
    assert all(_gone(r["pid"], within=GRACE) for r in stopped)
    checkpoints = tmp_path / "digits" / "version_0" / "checkpoints"
    assert sorted(p.name for p in tmp_path.rglob("interrupted*.ckpt")) == ["interrupted.ckpt"]
    state = torch.load(checkpoints / "interrupted.ckpt", map_location="cpu", weights_only=False)
    assert (state["epoch"], state["global_step"]) == (1, STOP_STEP) and STOP_STEP % BATCHES > 0
    summary = f"fit interrupted by SIGTERM at epoch 1, global step {STOP_STEP}"
    assert summary in killed.stdout

    resumed = _run([*_ddp_args(tmp_path, config, out="resumed"), "--ckpt_path", "last"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from {checkpoints / 'interrupted.ckpt'}" in resumed.stdout
    # Per rank, every step's LR, mixing weight and loss, before and after the stop, are those
    # of the uninterrupted run, and so are the final weights.
    for full, before, after in zip(
        _ranks(full_folder), stopped, _ranks(tmp_path, "resumed"), strict=True
    ):
        for key in ("lrs", "momentums", "lams", "losses"):
            assert before[key] + after[key] == full[key], key
        assert after["global_step"] == EPOCHS * BATCHES
    end = f"end-epoch={EPOCHS - 1}.ckpt"
    expected = _weights(full_folder / "digits" / "version_0" / "checkpoints" / end)
    got = _weights(tmp_path / "digits" / "version_1" / "checkpoints" / end)
    assert expected.keys() == got.keys()
    assert all(torch.equal(got[key], value) for key, value in expected.items())
