"""Checkpoints that survive interruptions, and resuming from them exactly.

- The shipped configs keep ``last.ckpt`` at the end of the latest epoch and the best checkpoint
  apart from it.
- SIGTERM and Ctrl-C during ``fit`` save the state of that moment, atomically, and the process
  exits non-zero; a kill during a save leaves the previous checkpoint whole.
- ``--ckpt_path last`` finds the newest last/interrupt checkpoint across ``version_N`` folders.
- A run killed mid-epoch and resumed logs the same LR, momentum, mixing weights and losses at
  every step, and ends with the same weights, as a run that was never stopped.
- Damaged checkpoints and checkpoints of another model class are errors naming the file.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from _logs import csv_rows
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_recipes import (
    AtomicCheckpointIO,
    DigitsDataModule,
    ImageClassifier,
    InterruptCheckpoint,
    LRMonitor,
    MixUp,
    find_last_checkpoint,
)
from lightning_recipes._compat import request_graceful_stop
from lightning_recipes.cli import main
from lightning_recipes.cli._runs import _checkpoint_folders
from lightning_recipes.data._common import _EpochSampler, _ResumableLoader

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
DIGITS = REPO / "configs" / "digits.yaml"
SUBPROCESS_TIMEOUT = 300
EPOCHS, BATCHES = 3, 6  # 18 optimizer steps
KILL_STEP = 8  # after the 2nd batch of the 2nd epoch: mid-epoch


@pytest.fixture(autouse=True)
def _restore_global_state(monkeypatch):
    """Fits call ``seed_everything`` and the CLI reads ``sys.argv``: isolate both."""
    monkeypatch.setattr(sys, "argv", ["lightning-recipes"])
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    state = torch.random.get_rng_state()
    handler = signal.getsignal(signal.SIGINT)
    yield
    torch.random.set_rng_state(state)
    assert signal.getsignal(signal.SIGINT) == handler, "a fit left its Ctrl-C handler behind"


class SignalAt(Callback):
    """Send ``signum`` to this process once ``global_step`` reaches ``step`` (a real signal,
    delivered to the handlers Lightning and the callbacks installed)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


def _fit(
    root: Path,
    per_sample: bool,
    ckpt_path: str | Path | None = None,
    stop: SignalAt | None = None,
) -> tuple[pl.Trainer, ImageClassifier]:
    """The digits job in small: seeded model, MixUp, LRMonitor, both checkpoints."""
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(num_classes=10, in_channels=1, max_lr=0.2)
    callbacks: list[Callback] = [
        MixUp(alpha=0.2, per_sample=per_sample),
        LRMonitor(),
        ModelCheckpoint(monitor="val/acc", mode="max", filename="epoch{epoch:02d}"),
        ModelCheckpoint(filename="last", save_top_k=1, enable_version_counter=False),
        InterruptCheckpoint(),
    ]
    if stop is not None:
        callbacks.append(stop)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=EPOCHS,
        limit_train_batches=BATCHES,
        limit_val_batches=2,
        log_every_n_steps=1,
        logger=CSVLogger(root, name="run"),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64, seed=0), ckpt_path=ckpt_path)
    return trainer, model


# ------------------------------------------------------------------- exact resume, in-process
@pytest.mark.slow
@pytest.mark.parametrize(
    ("per_sample", "signum"),
    [(False, signal.SIGTERM), (True, signal.SIGINT)],
    ids=["per-batch-SIGTERM", "per-sample-Ctrl-C"],
)
def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path, per_sample, signum):
    full_trainer, full = _fit(tmp_path / "full", per_sample)
    expected = csv_rows(full_trainer)

    stop = SignalAt(KILL_STEP, signum)
    with pytest.raises(SystemExit) as exit_info:
        _fit(tmp_path / "cut", per_sample, stop=stop)
    assert stop.sent
    assert exit_info.value.code == 128 + signum  # not 0, as Lightning's SIGTERMException
    run = tmp_path / "cut" / "run"
    interrupted = run / "version_0" / "checkpoints" / "interrupted.ckpt"
    state = torch.load(interrupted, map_location="cpu", weights_only=False)
    # The scenario: the state after step 8, in the middle of the 2nd epoch.
    assert (state["epoch"], state["global_step"]) == (1, KILL_STEP)
    assert KILL_STEP % BATCHES > 0
    assert find_last_checkpoint([run / "version_0" / "checkpoints"]) == interrupted
    cut_rows = _rows(run / "version_0" / "metrics.csv")

    resumed_trainer, resumed = _fit(tmp_path / "cut", per_sample, ckpt_path=interrupted)
    assert resumed_trainer.global_step == EPOCHS * BATCHES
    for key, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key

    # Every value logged at every step (LR and momentum of each param group, the mixing
    # weight, the loss, the validation metrics) is the uninterrupted run's.
    assert cut_rows + csv_rows(resumed_trainer) == expected
    keys = set().union(*expected)
    logged = {k for k in keys if k.startswith(("lr-", "lam-"))}
    for group in ("default", "default/no_decay"):  # LR and momentum of both param groups
        assert {f"lr-SGD/{group}", f"lr-SGD/{group}-momentum"} <= logged
    assert "lam-MixUp" in logged
    for key in logged:
        steps = sorted(int(r["step"]) for r in expected if key in r)
        assert steps == list(range(EPOCHS * BATCHES)), key
    assert {r["lam-MixUp"] for r in expected if "lam-MixUp" in r} - {1.0}  # it did mix


@pytest.mark.slow
def test_resumed_from_the_end_of_an_epoch_equals_uninterrupted(tmp_path):
    full_trainer, full = _fit(tmp_path / "full", per_sample=True)
    with pytest.raises(SystemExit):
        _fit(tmp_path / "cut", per_sample=True, stop=SignalAt(KILL_STEP))
    first = tmp_path / "cut" / "run" / "version_0"
    last = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (0, BATCHES)  # the end of the 1st epoch
    resumed_trainer, resumed = _fit(
        tmp_path / "cut", per_sample=True, ckpt_path=first / "checkpoints" / "last.ckpt"
    )
    for key, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    # The steps after the first epoch are logged again by the resumed run, as the first time.
    expected = csv_rows(full_trainer)
    assert csv_rows(resumed_trainer) == [r for r in expected if r["step"] >= BATCHES]


class SignalInValidation(SignalAt):
    """SIGTERM after the first validation batch of epoch ``step``."""

    def on_train_batch_end(self, *args: Any) -> None:
        pass

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.current_epoch == self.step and not trainer.sanity_checking and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


@pytest.mark.slow
def test_killed_during_validation_resumes_training_exactly(tmp_path):
    full_trainer, full = _fit(tmp_path / "full", per_sample=True)
    stop = SignalInValidation(1)
    with pytest.raises(SystemExit):
        _fit(tmp_path / "cut", per_sample=True, stop=stop)
    assert stop.sent
    first = tmp_path / "cut" / "run" / "version_0"
    interrupted = first / "checkpoints" / "interrupted.ckpt"
    state = torch.load(interrupted, map_location="cpu", weights_only=False)
    assert (state["epoch"], state["global_step"]) == (1, 2 * BATCHES)  # epoch 1 trained
    resumed_trainer, resumed = _fit(tmp_path / "cut", per_sample=True, ckpt_path=interrupted)
    for key, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    # Every training step is logged as in the uninterrupted run; Lightning does not repeat the
    # interrupted validation, so that epoch's validation metrics are all that is missing.
    expected = csv_rows(full_trainer)
    got = _rows(first / "metrics.csv") + csv_rows(resumed_trainer)
    missing = [r for r in expected if r not in got]
    assert [r for r in got if r not in expected] == []
    assert len(missing) == 1 and missing[0]["epoch"] == 1 and "val/acc" in missing[0]


def _rows(metrics_csv: Path) -> list[dict[str, float]]:
    with open(metrics_csv) as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_without_checkpoint(tmp_path):
    class TwoCtrlC(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(SystemExit) as exit_info:
        _fit(tmp_path, per_sample=False, stop=TwoCtrlC())  # type: ignore[arg-type]
    assert exit_info.value.code == 1  # Lightning's exit after a KeyboardInterrupt
    checkpoints = tmp_path / "run" / "version_0" / "checkpoints"
    assert not (checkpoints / "interrupted.ckpt").exists()


def test_graceful_stop_sets_lightnings_sigterm_flag_or_falls_back_to_keyboard_interrupt():
    trainer = pl.Trainer(logger=False, enable_checkpointing=False)
    assert not trainer.received_sigterm
    request_graceful_stop(trainer)
    assert trainer.received_sigterm  # the loops now stop as on SIGTERM

    class OtherTrainer:  # a Lightning without the flag
        pass

    with pytest.raises(KeyboardInterrupt):
        request_graceful_stop(OtherTrainer())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("filename", "error"), [("", ValueError), ("a/b", ValueError), (3, TypeError)]
)
def test_interrupt_checkpoint_filename_checked(filename, error):
    with pytest.raises(error, match="`filename`"):
        InterruptCheckpoint(filename=filename)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ resumable loader
def test_training_loader_order_is_seeded_per_epoch_and_resumes_part_way(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    dm = DigitsDataModule(batch_size=50, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, _ResumableLoader) and isinstance(loader.sampler, _EpochSampler)
    n = len(loader.dataset)
    # Independent formula: torch's DistributedSampler permutation, from seed + epoch.
    for epoch in (0, 3):
        loader.sampler.set_epoch(epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(7 + epoch))
        expected = [loader.dataset[i][1] for i in order[: len(loader) * 50].tolist()]
        labels = torch.cat([y for _, y in loader]).tolist()
        assert labels == [int(y) for y in expected]
    # Iterated again without `set_epoch` (a plain loop), the next epoch's order comes.
    again = torch.cat([y for _, y in loader])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(7 + 4))
    assert again.tolist() == [int(loader.dataset[i][1]) for i in order[: len(again)].tolist()]
    # Two batches into epoch 3, the state says so; a new loader resumes at the 3rd batch.
    loader.sampler.set_epoch(3)
    iterator = iter(loader)
    consumed = [next(iterator)[1] for _ in range(2)]
    state = loader.state_dict()
    assert state == {"seed": 7, "epoch": 3, "batches": 2, "batch_size": 50, "num_replicas": 1}
    rest = [y for _, y in iterator]
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # the checkpoint's seed wins
    fresh = dm.train_dataloader()
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(3)  # as Lightning does before the epoch goes on
    resumed = [y for _, y in fresh]
    assert len(consumed) + len(resumed) == len(loader)
    assert all(torch.equal(a, b) for a, b in zip(resumed, rest, strict=True))
    assert fresh.state_dict()["batches"] == len(loader)
    # The next epoch starts from its first batch again.
    fresh.sampler.set_epoch(4)
    assert sum(1 for _ in fresh) == len(loader)


def test_training_loader_under_ddp_takes_its_share_of_the_same_permutation(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    dm = DigitsDataModule(batch_size=16, seed=0)
    dm.trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    loader = dm.train_dataloader()
    # A DistributedSampler already: Lightning keeps it instead of injecting its own.
    assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
    assert (loader.sampler.num_replicas, loader.sampler.rank, loader.sampler.seed) == (2, 0, 3)
    n = len(loader.dataset)
    shares = [list(_EpochSampler(loader.dataset, 2, rank, seed=3)) for rank in (0, 1)]
    assert shares[0] == list(loader.sampler)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3)).tolist()
    padded = order + order[: n % 2]  # torch pads to a multiple of the process count
    assert shares[0] == padded[0::2] and shares[1] == padded[1::2]


def test_loader_with_another_batch_size_restarts_the_epoch():
    dm = DigitsDataModule(batch_size=50, seed=0)
    loader = dm.train_dataloader()
    state = {"seed": 0, "epoch": 1, "batches": 3, "batch_size": 64, "num_replicas": 1}
    with pytest.warns(UserWarning, match="batch_size"):
        loader.load_state_dict(state)
    assert sum(1 for _ in loader) == len(loader)


# ------------------------------------------------------------------- find_last_checkpoint
def _touch(path: Path, mtime: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, ns=(mtime, mtime))
    return path


def test_find_last_checkpoint_newest_across_versions(tmp_path):
    run = tmp_path / "run"
    _touch(run / "version_0" / "checkpoints" / "last.ckpt", 10)
    newest = _touch(run / "version_1" / "checkpoints" / "interrupted.ckpt", 30)
    _touch(run / "version_1" / "checkpoints" / "last.ckpt", 20)
    _touch(run / "version_2" / "checkpoints" / "epoch05.ckpt", 50)  # not a last checkpoint
    _touch(run / "version_2" / "checkpoints" / ".last.ckpt.123.ab.tmp", 60)  # being written
    _touch(run / "version_2" / "checkpoints" / "lastly.ckpt", 70)
    folders = [*sorted(run.glob("*/checkpoints")), run / "version_9" / "checkpoints"]
    assert find_last_checkpoint(folders) == newest
    versioned = _touch(run / "version_2" / "checkpoints" / "last-v1.ckpt", 40)
    assert find_last_checkpoint(folders) == versioned
    assert find_last_checkpoint(folders, names=["interrupted"]) == newest
    # Lightning's SLURM requeue checkpoints, numbered in the run's root folder, and a step
    # checkpoint of the configs.
    hpc = _touch(run / "hpc_ckpt_2.ckpt", 80)
    _touch(run / "hpc_ckpt_1.ckpt", 45)
    assert find_last_checkpoint([*folders, run]) == hpc
    step = _touch(run / "version_2" / "checkpoints" / "step.ckpt", 90)
    assert find_last_checkpoint([*folders, run]) == hpc  # not a name looked for by default
    assert find_last_checkpoint([*folders, run], names=["last", "step"]) == step


def test_find_last_checkpoint_none(tmp_path):
    assert find_last_checkpoint([]) is None
    assert find_last_checkpoint([tmp_path / "missing"]) is None
    _touch(tmp_path / "epoch01.ckpt", 1)
    assert find_last_checkpoint([tmp_path]) is None


# ------------------------------------------------------------------------ atomic checkpoints
class _FailWhilePickled:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_atomic_save_failure_keeps_previous_and_leaves_no_temp_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.arange(4)}, path)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "bad": _FailWhilePickled()}, path)
    assert io.load_checkpoint(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    io.save_checkpoint({"step": 3}, path)
    assert io.load_checkpoint(path)["step"] == 3
    io.remove_checkpoint(path)
    assert not path.exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_save_rejects_storage_options(tmp_path):
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "a.ckpt", storage_options={"x": 1})


KILL_DURING_SAVE = """
import builtins, os, signal, sys, shutil
from pathlib import Path
import torch
import lightning.pytorch as pl
from lightning_recipes import OneCycleModule
from lightning_recipes.cli import RecipesCLI

folder = Path(sys.argv[1])
# The checkpoint IO the command gives its trainer.
cli = RecipesCLI(
    OneCycleModule,
    pl.LightningDataModule,
    subclass_mode_model=True,
    subclass_mode_data=True,
    run=False,
    args=["--config", sys.argv[2], "--trainer.default_root_dir", str(folder)],
    auto_configure_optimizers=False,
)
io = cli.trainer.strategy.checkpoint_io
path = folder / "checkpoints" / "last.ckpt"
io.save_checkpoint({"step": 1, "w": torch.zeros(10)}, path)
print("saved", flush=True)

# From here on, the process is killed once 64 KiB have been written into the checkpoint
# folder, whatever writes them (the checkpoint's own file, a temporary file, a copy).
shutil._USE_CP_SENDFILE = False  # copies go through file.write, where the kill is
real_open = builtins.open
class Killing:
    def __init__(self, f):
        self.f, self.n = f, 0
    def write(self, data):
        self.n += len(data)
        if self.n > 65536:
            self.f.write(bytes(data)[: len(data) // 2])
            self.f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.f.write(data)
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)
def killing_open(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if "w" in mode or "x" in mode:
        if Path(os.fsdecode(file)).resolve().parent == path.parent.resolve():
            return Killing(f)
    return f
builtins.open = killing_open
io.save_checkpoint({"step": 2, "w": torch.ones(100_000)}, path)
print("not killed", flush=True)
"""


@pytest.mark.slow
def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    script = tmp_path / "kill_during_save.py"
    script.write_text(KILL_DURING_SAVE)
    folder = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A system temporary folder on another file system (a tmpfs /tmp, a node-local disk) is
    # common on clusters; there a rename from it becomes a copy over the checkpoint.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        env["TMPDIR"] = str(shm)
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(DIGITS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert result.stdout.startswith("saved"), result.stderr
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr  # killed mid-save
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["step"] == 1 and torch.equal(state["w"], torch.zeros(10))


# -------------------------------------------------------------------------------- the CLI
def _short_args(
    folder: Path, epochs: int = 1, batches: int = 2, config: Path = DIGITS
) -> list[str]:
    return [
        "--config",
        str(config),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.limit_train_batches",
        str(batches),
        "--trainer.limit_val_batches",
        "2",
        "--trainer.default_root_dir",
        str(folder),
        "--trainer.logger.init_args.save_dir",
        str(folder),
        "--trainer.enable_progress_bar",
        "false",
    ]


@pytest.mark.slow
def test_shipped_config_last_checkpoint_is_the_last_epoch_and_best_is_apart(tmp_path, capsys):
    # A tiny peak LR: validation accuracy cannot improve after the first epoch, so the best
    # checkpoint stays at epoch 0 while training goes on for two more epochs.
    main(["fit", *_short_args(tmp_path, epochs=3, batches=4), "--model.init_args.max_lr", "1e-7"])
    folder = tmp_path / "digits" / "version_0" / "checkpoints"
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 12)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch00.ckpt", "last.ckpt", "step.ckpt"]
    step = torch.load(folder / "step.ckpt", map_location="cpu", weights_only=False)
    assert step["global_step"] == 10  # every 10 optimizer steps, in the middle of epoch 2
    best = torch.load(folder / "epoch00.ckpt", map_location="cpu", weights_only=False)
    assert best["global_step"] == 4
    out = capsys.readouterr().out
    assert f"(last: {folder / 'last.ckpt'}, best: {folder / 'epoch00.ckpt'})" in out


@pytest.mark.slow
def test_ckpt_path_last_without_any_checkpoint_starts_fresh_and_says_so(tmp_path, capsys):
    main(["fit", *_short_args(tmp_path), "--ckpt_path", "last"])
    out = capsys.readouterr().out
    assert f"no last checkpoint under {tmp_path / 'digits'}" in out
    assert "training starts from scratch" in out
    last = tmp_path / "digits" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2


def test_checkpoint_folders_of_a_run(tmp_path):
    """Where ``--ckpt_path last`` looks: as ``ModelCheckpoint`` resolves its folder."""
    for version in ("version_0", "version_3", "custom"):
        (tmp_path / "logs" / "job" / version / "checkpoints").mkdir(parents=True)
    (tmp_path / "logs" / "job" / "version_1").mkdir()  # a run that saved nothing
    logged = pl.Trainer(
        logger=CSVLogger(tmp_path / "logs", name="job"),
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "mine")],
        default_root_dir=tmp_path,
    )
    assert _checkpoint_folders(logged) == [
        tmp_path / "mine",
        *(
            tmp_path / "logs" / "job" / v / "checkpoints"
            for v in ("custom", "version_0", "version_3")
        ),
        tmp_path,  # Lightning's hpc_ckpt_<N>.ckpt
    ]
    no_logger = pl.Trainer(logger=False, default_root_dir=tmp_path)
    assert _checkpoint_folders(no_logger) == [tmp_path / "checkpoints", tmp_path]


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_ckpt_path_last_without_any_checkpoint_is_an_error_outside_fit(tmp_path, subcommand):
    with pytest.raises(ValueError, match="ckpt_path"):
        main([subcommand, *_short_args(tmp_path), "--ckpt_path", "last"])


def _cli(folder: Path, *args: str, expect: int = 0, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lightning_recipes", "fit", *args]
    # `_ddp_helpers.SignalRankAt` stops a run: the tests folder is on the path.
    pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        command,
        cwd=folder,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath, **env},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert result.returncode == expect, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


def _signal_at(step: int, signum: int, out: Path) -> list[str]:
    """Arguments that add a callback sending ``signum`` to the command after step ``step``."""
    return [
        "--trainer.callbacks+=_ddp_helpers.SignalRankAt",
        f"--trainer.callbacks.out={out}",
        f"--trainer.callbacks.step={step}",
        f"--trainer.callbacks.signum={int(signum)}",
    ]


@pytest.fixture(scope="module")
def full_cli_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The shipped digits config, never stopped: the reference of the resumed runs."""
    folder = tmp_path_factory.mktemp("full")
    full = _cli(folder, *_short_args(folder / "out", epochs=EPOCHS, batches=BATCHES))
    assert "lightning-recipes fit finished" in full.stdout
    return folder / "out", full


def _assert_ends_as_the_full_run(
    full_cli_run: tuple[Path, subprocess.CompletedProcess], out: Path, resumed: str
) -> None:
    """The resumed run's last checkpoint holds the uninterrupted run's final weights, bit for
    bit, and its test accuracy is the same."""
    full_out, full = full_cli_run
    assert "lightning-recipes fit finished" in resumed
    full_last = full_out / "digits" / "version_0" / "checkpoints" / "last.ckpt"
    resumed_last = out / "digits" / "version_1" / "checkpoints" / "last.ckpt"
    a = torch.load(full_last, map_location="cpu", weights_only=False)
    b = torch.load(resumed_last, map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == EPOCHS * BATCHES
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(b["state_dict"][key], value), key
    test_line = next(line for line in full.stdout.splitlines() if "test/acc:" in line)
    assert test_line in resumed, resumed[resumed.index("fit finished") :]


@pytest.mark.slow
def test_cli_sigterm_saves_exits_143_and_resumes_with_ckpt_path_last(tmp_path, full_cli_run):
    args = _short_args(tmp_path / "out", epochs=EPOCHS, batches=BATCHES)
    killed = _cli(
        tmp_path,
        *args,
        *_signal_at(KILL_STEP, signal.SIGTERM, tmp_path / "signal"),
        expect=128 + signal.SIGTERM,
    )
    folder = tmp_path / "out" / "digits" / "version_0" / "checkpoints"
    assert f"interrupted by SIGTERM at epoch 1, global step {KILL_STEP}" in killed.stdout
    assert "fit finished" not in killed.stdout  # no summary of a finished run, no test
    assert f"interrupted: {folder / 'interrupted.ckpt'}" in killed.stdout
    assert "--ckpt_path last" in killed.stdout
    state = torch.load(folder / "interrupted.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == KILL_STEP

    resumed = _cli(tmp_path, *args, "--ckpt_path", "last")
    assert f"--ckpt_path last: resuming from {folder / 'interrupted.ckpt'}" in resumed.stdout
    _assert_ends_as_the_full_run(full_cli_run, tmp_path / "out", resumed.stdout)


STEP_EVERY = 4  # the step checkpoint's interval in this test (the shipped config: 10)
# SIGKILL after a step drawn at random (seeded, so the test repeats) among those after the step
# checkpoint of step 8, the middle of the 2nd epoch, and up to the next checkpoint (step 12).
SIGKILL_STEP = random.Random(2026).randint(2 * STEP_EVERY + 1, 2 * BATCHES)


@pytest.mark.slow
def test_cli_sigkill_loses_at_most_the_step_interval_and_resumes_exactly(tmp_path, full_cli_run):
    config = yaml.safe_load(DIGITS.read_text())
    (step,) = [
        callback["init_args"]
        for callback in config["trainer"]["callbacks"]
        if callback.get("init_args", {}).get("filename") == "step"
    ]
    step["every_n_train_steps"] = STEP_EVERY
    (tmp_path / "digits.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    args = _short_args(out, epochs=EPOCHS, batches=BATCHES, config=tmp_path / "digits.yaml")
    # No grace: the process ends at once, nothing is saved at the kill.
    _cli(tmp_path, *args, *_signal_at(SIGKILL_STEP, signal.SIGKILL, out), expect=-signal.SIGKILL)
    sent = json.loads((out / "signal.json").read_text())
    assert sent["step"] == SIGKILL_STEP
    checkpoints = out / "digits" / "version_0" / "checkpoints"
    assert not (checkpoints / "interrupted.ckpt").exists()
    assert not list(checkpoints.glob(".*.tmp"))  # no save was under way
    # The newest state saved before the kill: a step checkpoint, or the end of an epoch.
    saved = max(
        STEP_EVERY * ((SIGKILL_STEP - 1) // STEP_EVERY), BATCHES * ((SIGKILL_STEP - 1) // BATCHES)
    )
    assert 0 < SIGKILL_STEP - saved <= STEP_EVERY

    resumed = _cli(tmp_path, *args, "--ckpt_path", "last")
    match = re.search(r"--ckpt_path last: resuming from (\S+)", resumed.stdout)
    assert match is not None, resumed.stdout
    # The scenario: the newest checkpoint is the step checkpoint, in the middle of an epoch.
    assert Path(match[1]) == checkpoints / "step.ckpt"
    state = torch.load(match[1], map_location="cpu", weights_only=False)
    assert state["global_step"] == saved == 2 * STEP_EVERY and saved % BATCHES > 0
    _assert_ends_as_the_full_run(full_cli_run, out, resumed.stdout)


# A SLURM job with Lightning's automatic requeue, simulated: the job's variables, the requeue
# signal (SIGUSR1, which `#SBATCH --signal=USR1@90` sends) and an `scontrol` that records the
# requeue and then ends the job at once, as SLURM does when it requeues (no grace here).
FAKE_SCONTROL = """#!/bin/sh
echo "$@" >> "$SCONTROL_LOG"
kill -KILL $PPID
"""
SLURM_JOB = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "digits",
    "SLURM_NTASKS": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "127.0.0.1",
}


@pytest.mark.slow
def test_slurm_requeue_resumes_from_the_hpc_checkpoint_exactly(tmp_path, full_cli_run):
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "scontrol").write_text(FAKE_SCONTROL)
    (bin_folder / "scontrol").chmod(0o755)
    log = tmp_path / "scontrol.log"
    env = {**SLURM_JOB, "PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}"}
    env["SCONTROL_LOG"] = str(log)
    out = tmp_path / "out"
    args = _short_args(out, epochs=EPOCHS, batches=BATCHES)
    _cli(
        tmp_path,
        *args,
        *_signal_at(KILL_STEP, signal.SIGUSR1, out),
        expect=-signal.SIGKILL,
        **env,
    )
    # The scenario: the requeue signal came in the middle of the 2nd epoch, the job was
    # requeued, and Lightning's checkpoint holds the state after the batch then under way.
    assert json.loads((out / "signal.json").read_text())["step"] == KILL_STEP
    assert log.read_text().split() == ["requeue", SLURM_JOB["SLURM_JOB_ID"]]
    hpc = out / "hpc_ckpt_1.ckpt"
    state = torch.load(hpc, map_location="cpu", weights_only=False)
    saved = KILL_STEP + 1
    assert (state["epoch"], state["global_step"]) == (1, saved) and saved % BATCHES > 0
    (scheduler,) = state["lr_schedulers"]
    assert (scheduler["last_epoch"], scheduler["total_steps"]) == (saved, EPOCHS * BATCHES)
    (mixing,) = [value for key, value in state["callbacks"].items() if "MixUp" in key]
    assert mixing["batches"] == saved
    assert not (out / "digits" / "version_0" / "checkpoints" / "interrupted.ckpt").exists()

    requeued = _cli(tmp_path, *args, "--ckpt_path", "last", SLURM_RESTART_COUNT="1", **env)
    assert f"--ckpt_path last: resuming from {hpc}" in requeued.stdout
    # The summary names this run's checkpoints (not those of the requeue's).
    assert f"last: {out / 'digits' / 'version_1' / 'checkpoints' / 'last.ckpt'}" in requeued.stdout
    assert not log.read_text().count("\n") > 1  # requeued once, by the first run only
    _assert_ends_as_the_full_run(full_cli_run, out, requeued.stdout)


# -------------------------------------------------------------------- bad checkpoint files
def _real_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "good.ckpt"
    model = ImageClassifier(num_classes=10, in_channels=1)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture
def damaged(tmp_path, request) -> Path:
    good = _real_checkpoint(tmp_path).read_bytes()
    content = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "not_a_checkpoint": b"these are not the bytes you are looking for\n" * 10,
    }[request.param]
    path = tmp_path / f"{request.param}.ckpt"
    path.write_bytes(content)
    return path


ALL_DAMAGED = ["truncated", "empty", "not_a_checkpoint"]


@pytest.mark.parametrize("damaged", ALL_DAMAGED, indirect=True)
def test_damaged_checkpoint_through_the_io_names_the_file(damaged):
    with pytest.raises(ValueError, match=f"Checkpoint '{damaged}' cannot be read"):
        AtomicCheckpointIO().load_checkpoint(damaged)


@pytest.mark.parametrize("damaged", ALL_DAMAGED, indirect=True)
@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_damaged_checkpoint_through_the_cli_names_the_file_and_writes_nothing(
    tmp_path, damaged, subcommand
):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=f"Checkpoint '{damaged}' cannot be read"):
        main([subcommand, *_short_args(out), "--ckpt_path", str(damaged)])
    assert not list(out.rglob("*.ckpt"))


@pytest.mark.parametrize("damaged", ["truncated"], indirect=True)
def test_trainer_fit_from_a_damaged_checkpoint_names_the_file(tmp_path, damaged):
    out = tmp_path / "out"
    trainer = pl.Trainer(
        logger=False, max_epochs=1, plugins=[AtomicCheckpointIO()], default_root_dir=out
    )
    model = ImageClassifier(num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match=f"Checkpoint '{damaged}' cannot be read"):
        trainer.fit(model, DigitsDataModule(), ckpt_path=damaged)
    assert not list(out.rglob("*.ckpt"))


OTHER_MODEL = """
import torch
import torch.nn.functional as F

from lightning_recipes import OneCycleModule


class Flat(OneCycleModule):
    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.net = torch.nn.Linear(64, num_classes)

    def forward(self, x):
        return self.net(x.flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/acc", (self(x).argmax(1) == y).float().mean())
"""


@pytest.fixture
def other_model_checkpoint(tmp_path, monkeypatch) -> Path:
    """A checkpoint of another OneCycleModule subclass, written by the CLI."""
    (tmp_path / "other_model.py").write_text(textwrap.dedent(OTHER_MODEL))
    monkeypatch.syspath_prepend(str(tmp_path))
    main(["fit", *_short_args(tmp_path / "other"), "--model", "other_model.Flat"])
    return tmp_path / "other" / "digits" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_checkpoint_of_another_model_class_names_both_classes(
    tmp_path, other_model_checkpoint, subcommand
):
    out = tmp_path / "out"
    pattern = r"other_model\.Flat.*lightning_recipes\.classifier\.ImageClassifier"
    with pytest.raises(ValueError, match=pattern):
        main([subcommand, *_short_args(out), "--ckpt_path", str(other_model_checkpoint)])
    assert not list(out.rglob("*.ckpt"))
    # `load_from_checkpoint` (Lightning's own check) names both classes too.
    with pytest.raises(ValueError, match=r"other_model\.Flat.*ImageClassifier"):
        ImageClassifier.load_from_checkpoint(other_model_checkpoint)


class _Failing(ImageClassifier):
    def __init__(self, where: str) -> None:
        super().__init__(num_classes=10, in_channels=1)
        self.where = where

    def training_step(self, batch, batch_idx):
        if self.where == "training" and self.global_step == 3:
            raise ValueError("a bug in training_step")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        if self.where == "validation":
            raise ValueError("a bug in validation_step")
        return super().validation_step(batch, batch_idx)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["validation", "training"])
def test_an_exception_is_not_an_interruption_and_saves_nothing(tmp_path, where):
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=BATCHES,
        limit_val_batches=2,
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=[InterruptCheckpoint()],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(ValueError, match=f"a bug in {where}_step"):
        trainer.fit(_Failing(where), datamodule=DigitsDataModule(seed=0))
    assert trainer.global_step == (3 if where == "training" else 0)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_run_that_fails_before_training_writes_no_checkpoint(tmp_path):
    out = tmp_path / "out"
    # max_epochs=-1 without max_steps: the OneCycle schedule has no end, and fit stops.
    with pytest.raises(ValueError, match="max_epochs"):
        main(["fit", *_short_args(out), "--trainer.max_epochs", "-1"])
    assert not list(out.rglob("*.ckpt"))


@pytest.mark.parametrize("damaged", ALL_DAMAGED, indirect=True)
def test_load_from_checkpoint_of_a_damaged_file_names_the_file(damaged):
    with pytest.raises(ValueError, match=f"Checkpoint '{damaged}' cannot be read"):
        ImageClassifier.load_from_checkpoint(damaged)
