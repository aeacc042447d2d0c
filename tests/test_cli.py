"""The ``lightning-recipes`` command, run as a user runs it.

A subprocess costs 5 to 10 s of imports, so there are three: one short ``fit`` of the main
config shared by the module, the same command again through the console script in the same
folder, and a fit of a user's own classes found on ``PYTHONPATH``. ``validate``, ``test``,
``predict``, ``--help`` and ``--print_config`` go through :func:`lightning_recipes.cli.main`
in-process, which is what the console script calls.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from _logs import cli_summary
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_recipes import CIFAR10DataModule, DigitsDataModule, ImageClassifier, OneCycleModule
from lightning_recipes.cli import RecipesCLI, main

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "configs" / "digits.yaml"
CIFAR10 = REPO / "configs" / "cifar10.yaml"
SUBPROCESS_TIMEOUT = 300


@pytest.fixture(autouse=True)
def _restore_global_state(monkeypatch):
    """In-process CLI runs read ``sys.argv`` and call ``seed_everything``: isolate both."""
    monkeypatch.setattr(sys, "argv", ["lightning-recipes"])  # not pytest's arguments
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    state = torch.random.get_rng_state()
    yield
    torch.random.set_rng_state(state)


def _short_fit_args(folder: Path) -> list[str]:
    return [
        "fit",
        "--config",
        str(DIGITS),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.default_root_dir",
        str(folder),
        "--trainer.logger.init_args.save_dir",
        str(folder),
    ]


def _run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    # One intra-op thread: the runs are tiny, and reruns then reproduce results bit for bit.
    result = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _checkpoints(summary: dict[str, str]) -> tuple[Path, Path, Path]:
    """(folder, last, best) from the summary's checkpoints line."""
    match = re.fullmatch(r"(\S+) \(last: (\S+), best: (\S+)\)", summary["checkpoints"])
    assert match is not None, summary["checkpoints"]
    return Path(match[1]), Path(match[2]), Path(match[3])


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("fit")
    args = [sys.executable, "-m", "lightning_recipes", *_short_fit_args(folder)]
    result = _run(args, cwd=folder)
    return folder, cli_summary(result.stdout)


def _accuracy(checkpoint: Path, split: str) -> float:
    """Accuracy of a checkpoint on a digits split, computed without Lightning's loops."""
    model = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    dm = DigitsDataModule(seed=0)
    dm.setup()
    loader = {"val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    x, y = loader.dataset.tensors
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# ------------------------------------------------------------------------------------ fit
def test_fit_prints_summary_with_existing_paths(fit_run):
    folder, summary = fit_run
    assert set(summary) >= {"test/acc", "test/acc_top5", "test/loss", "logs", "checkpoints"}
    assert re.fullmatch(r"0\.\d{4}|1\.0000", summary["test/acc"])

    logs = Path(summary["logs"])
    assert logs == folder / "digits" / "version_0"
    assert (logs / "metrics.csv").is_file()
    dirpath, last, best = _checkpoints(summary)
    assert dirpath == logs / "checkpoints"
    assert best.is_file() and best.parent == dirpath
    assert last == dirpath / "last.ckpt" and last.is_file()

    assert summary["schedule"].startswith("step 3 of 3 (100.0%)")

    config = Path(summary["config"])
    assert config == logs / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    assert saved["trainer"]["max_epochs"] == 1
    assert saved["trainer"]["limit_train_batches"] == 3
    assert saved["model"]["class_path"] == "lightning_recipes.ImageClassifier"

    # The OneCycle in the checkpoint spans exactly the steps that ran: 1 epoch x 3 batches.
    state = torch.load(best, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3
    (scheduler,) = state["lr_schedulers"]
    assert scheduler["total_steps"] == 3
    assert scheduler["last_epoch"] == 3


def test_fit_test_accuracy_is_that_of_the_final_weights(fit_run):
    _, summary = fit_run
    _, last, _ = _checkpoints(summary)
    assert float(summary["test/acc"]) == pytest.approx(_accuracy(last, "test"), abs=5e-5)


def test_rerun_in_same_folder_with_console_script(fit_run):
    folder, first = fit_run
    script = shutil.which("lightning-recipes")
    assert script is not None, "the `lightning-recipes` console script is not installed"
    result = _run([script, *_short_fit_args(folder)], cwd=folder)
    assert "already exists" not in result.stdout + result.stderr
    again = cli_summary(result.stdout)
    assert Path(again["logs"]) == folder / "digits" / "version_1"
    assert Path(again["config"]).is_file()
    assert Path(first["config"]).is_file()
    # Same seed, same config, same data: the same run.
    assert again["test/acc"] == first["test/acc"]


# ------------------------------------------------------------- other subcommands, in-process
def _capture(monkeypatch, method: str) -> list:
    """Record what ``Trainer.<method>`` returns when the CLI calls it."""
    results: list = []
    original = getattr(pl.Trainer, method)

    # `wraps` keeps the signature: the CLI builds the subcommand's arguments from it.
    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        results.append(out)
        return out

    monkeypatch.setattr(pl.Trainer, method, wrapper)
    return results


def _subcommand_args(subcommand: str, folder: Path, ckpt: Path) -> list[str]:
    return [
        subcommand,
        "--config",
        str(DIGITS),
        "--ckpt_path",
        str(ckpt),
        "--trainer.default_root_dir",
        str(folder),
        "--trainer.logger.init_args.save_dir",
        str(folder),
        "--trainer.enable_progress_bar",
        "false",
    ]


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_from_checkpoint(fit_run, tmp_path, monkeypatch, subcommand):
    _, summary = fit_run
    _, _, best = _checkpoints(summary)
    results = _capture(monkeypatch, subcommand)
    main(_subcommand_args(subcommand, tmp_path, best))
    ((metrics,),) = results
    stage = "val" if subcommand == "validate" else "test"
    assert metrics[f"{stage}/acc"] == pytest.approx(_accuracy(best, stage), abs=1e-6)
    if subcommand == "test":
        assert f"{metrics['test/acc']:.4f}" == summary["test/acc"]


def test_predict_from_checkpoint(fit_run, tmp_path, monkeypatch):
    _, summary = fit_run
    _, _, best = _checkpoints(summary)
    results = _capture(monkeypatch, "predict")
    main(_subcommand_args("predict", tmp_path, best))
    (batches,) = results
    probs = torch.cat(batches)
    assert probs.shape == (360, 10)  # the digits test split
    torch.testing.assert_close(probs.sum(1), torch.ones(360))
    dm = DigitsDataModule(seed=0)
    dm.setup()
    labels = dm.test_dataloader().dataset.tensors[1]
    accuracy = (probs.argmax(1) == labels).float().mean().item()
    assert f"{accuracy:.4f}" == summary["test/acc"]


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in out
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "--data" in out


def test_the_command_keeps_its_published_import_paths():
    # The command moved into the `cli` subpackage; the names users and saved configs know
    # still import, and are the objects the command runs.
    from importlib.metadata import entry_points

    import lightning_recipes.cli
    import lightning_recipes.trainer
    from lightning_recipes.cli._trainer import RecipesTrainer

    assert lightning_recipes.trainer.RecipesTrainer is RecipesTrainer
    assert lightning_recipes.cli.RecipesTrainer is RecipesTrainer
    (script,) = entry_points(group="console_scripts", name="lightning-recipes")
    assert script.value == "lightning_recipes.cli:main"
    assert script.load() is lightning_recipes.cli.main is main


def _build(*args: str) -> RecipesCLI:
    """The objects ``main`` would build, without running a subcommand."""
    return RecipesCLI(
        OneCycleModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=list(args),
        auto_configure_optimizers=False,
    )


def test_explicit_num_classes_that_contradicts_the_data_is_an_error(tmp_path):
    match = r"`model.init_args.num_classes` is 5, but the data module DigitsDataModule has"
    with pytest.raises(ValueError, match=match + r" num_classes=10"):
        _build("--model.init_args.num_classes", "5", "--trainer.logger", "false")


# ---------------------------------------------------------------------------- user classes
USER_MODULE = '''
import torch
import torch.nn.functional as F
import lightning.pytorch as pl
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import OneCycleModule


class Blobs(pl.LightningDataModule):
    """Three Gaussian blobs in 4-D; has `num_classes`, has no `in_channels`."""

    num_classes = 3

    def __init__(self, n: int = 96, batch_size: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        y = torch.arange(n) % 3
        x = torch.randn(n, 4, generator=g) * 0.3 + F.one_hot(y, 4).float() * 3
        self.data = TensorDataset(x, y)
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)


class LinearProbe(OneCycleModule):
    """Takes `num_classes` (linked from the data) and no `in_channels`."""

    def __init__(self, num_classes: int = 2, hidden: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/acc", (self(x).argmax(1) == y).float().mean())
'''


def test_user_model_and_data_from_pythonpath(tmp_path):
    (tmp_path / "my_recipes.py").write_text(textwrap.dedent(USER_MODULE))
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    args = [
        *_short_fit_args(tmp_path),
        "--model",
        "my_recipes.LinearProbe",
        "--model.init_args.hidden",
        "16",
        "--model.init_args.max_lr",
        "0.5",
        "--data",
        "my_recipes.Blobs",
        "--data.init_args.batch_size",
        "16",
        "--trainer.max_epochs",
        "3",
        "--trainer.limit_train_batches",
        "1.0",
        "--trainer.limit_val_batches",
        "1.0",
    ]
    result = _run(
        [sys.executable, "-m", "lightning_recipes", *args], tmp_path, PYTHONPATH=pythonpath
    )
    summary = cli_summary(result.stdout)
    assert set(summary) >= {"test/acc", "logs", "checkpoints", "config"}
    saved = yaml.safe_load(Path(summary["config"]).read_text())
    assert saved["model"]["class_path"] == "my_recipes.LinearProbe"
    assert saved["model"]["init_args"]["hidden"] == 16
    assert saved["data"]["class_path"] == "my_recipes.Blobs"

    _, _, best = _checkpoints(summary)
    state = torch.load(best, map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["num_classes"] == 3  # linked from Blobs.num_classes
    assert state["state_dict"]["net.2.weight"].shape == (3, 16)
    (scheduler,) = state["lr_schedulers"]
    assert scheduler["total_steps"] == 3 * (96 // 16)  # epochs x full batches
    groups = state["optimizer_states"][0]["param_groups"]
    assert [group["max_lr"] for group in groups] == [0.5, 0.5]
    # Separable blobs: three OneCycle epochs learn them.
    assert float(summary["test/acc"]) > 0.9


# ---------------------------------------------------------------------------- cifar10.yaml
def test_cifar10_config_prints(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(CIFAR10),
                "--data.init_args.root",
                str(tmp_path),
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    trainer = config["trainer"]
    assert (trainer["devices"], trainer["strategy"], trainer["precision"]) == (
        "auto",
        "ddp",
        "16-mixed",
    )
    assert trainer["sync_batchnorm"] is True
    assert trainer["max_epochs"] == 30
    assert trainer["logger"]["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    checkpoint, last, step, interrupt, *monitors = trainer["callbacks"]
    assert checkpoint["class_path"] == last["class_path"] == step["class_path"]
    assert checkpoint["class_path"] == "lightning.pytorch.callbacks.ModelCheckpoint"
    assert last["init_args"]["filename"] == "last" and last["init_args"]["monitor"] is None
    assert step["init_args"]["filename"] == "step" and step["init_args"]["monitor"] is None
    assert step["init_args"]["every_n_train_steps"] == 50
    assert interrupt["class_path"] == "lightning_recipes.InterruptCheckpoint"
    assert [m["class_path"] for m in monitors] == [
        "lightning_recipes.LRMonitor",
        "lightning_recipes.LossScaleMonitor",
        "lightning_recipes.TrainingSanityChecks",
    ]
    assert checkpoint["init_args"]["monitor"] == "val/acc"
    assert config["data"]["class_path"] == "lightning_recipes.CIFAR10DataModule"
    assert config["data"]["init_args"]["download"] is False
    assert config["data"]["init_args"]["root"] == str(tmp_path)
    assert config["model"]["init_args"]["backbone"] == "small_cnn"


def test_cifar10_config_instantiates(tmp_path):
    # fp16 AMP and DDP need GPUs; on CPU, override them to build every object of the config.
    cli = _build(
        "--config",
        str(CIFAR10),
        "--data.init_args.root",
        str(tmp_path),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "auto",
        "--trainer.precision",
        "32",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
    )
    assert isinstance(cli.datamodule, CIFAR10DataModule)
    assert cli.datamodule.root == tmp_path and cli.datamodule.download is False
    assert isinstance(cli.model, ImageClassifier)
    # num_classes and in_channels are linked from the data module.
    assert cli.model.hparams.num_classes == 10 and cli.model.hparams.in_channels == 3
    assert cli.model.net[0].in_channels == 3 and cli.model.net[-1].out_features == 10
    assert isinstance(cli.trainer.logger, CSVLogger)
    assert cli.trainer.max_epochs == 30
    checkpoint, last, step = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert checkpoint.monitor == "val/acc" and last.monitor is None and step.monitor is None
    assert step._every_n_train_steps == 50 and step.filename == "step"


def test_summary_says_when_the_schedule_stopped_early(tmp_path):
    from lightning_recipes.cli._runs import _schedule_lines

    class StopAt2(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.global_step == 2

    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=8,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[StopAt2()],
    )
    trainer.fit(ImageClassifier(num_classes=10, in_channels=1), datamodule=DigitsDataModule())
    assert trainer.global_step == 2  # the scenario: stopped early
    (line,) = _schedule_lines(trainer)
    assert re.fullmatch(
        r"  schedule:    step 2 of 8 \(25\.0%\), lr=\S+ \(min_lr=\S+\); stopped before the"
        r" end, the LR never annealed",
        line,
    )
