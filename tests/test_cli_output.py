"""What ``lightning-recipes`` itself prints: help, short errors, no upstream noise.

Everything runs in-process through :func:`lightning_recipes.cli.main`, which is what the
console script calls; one short ``fit`` checks a run's own output.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import lightning_recipes
from lightning_recipes.callbacks.mixing._base import MixingCallback
from lightning_recipes.cli import TRACEBACK_ENV, main

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits.yaml")
LEAFSPEC = "`isinstance(treespec, LeafSpec)` is deprecated"
LITLOGGER = "litlogger"


@pytest.fixture(autouse=True)
def _restore_global_state(monkeypatch):
    """In-process CLI runs read ``sys.argv`` and call ``seed_everything``: isolate both."""
    monkeypatch.setattr(sys, "argv", ["lightning-recipes"])
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    state = torch.random.get_rng_state()
    yield
    torch.random.set_rng_state(state)


def _exit_code(args: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


# ------------------------------------------------------------------------------------ help
def test_help_names_the_package_with_examples(capsys):
    assert _exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Lightning Trainer command line tool" not in out
    assert "lightning-recipes: train, validate, test and predict" in out
    for line in (
        "lightning-recipes fit --config configs/digits.yaml",
        "lightning-recipes fit --model.help ImageClassifier",
        "lightning-recipes fit --data.help DigitsDataModule",
        f"{TRACEBACK_ENV}=1",
    ):
        assert line in out


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_subcommand_help_starts_with_examples(capsys, subcommand):
    assert _exit_code([subcommand, "--help"]) == 0
    out = capsys.readouterr().out
    head = "\n".join(out.splitlines()[:12])  # what a reader sees before the option list
    assert f"lightning-recipes {subcommand} --config configs/digits.yaml" in head
    assert f"lightning-recipes {subcommand} --model.help ImageClassifier" in head
    assert f"lightning-recipes {subcommand} --data.help DigitsDataModule" in head
    assert "--trainer.max_epochs" in out  # the options are all still there


def test_model_help_lists_the_classifier_arguments(capsys):
    assert _exit_code(["fit", "--model.help", "ImageClassifier"]) == 0
    out = capsys.readouterr().out
    for argument in ("--model.max_lr", "--model.backbone", "--model.on_schedule_mismatch"):
        assert argument in out


@pytest.mark.parametrize("name", ["MixUp", "CutMix", "FMix", "RandomMix"])
def test_callback_help_lists_every_argument_of_the_mixing_class(capsys, name):
    # The thin classes pass the shared options on as `**options`; the command's help must still
    # show each of them, with the base's documentation, beside the class's own arguments.
    cls = getattr(lightning_recipes, name)
    own = [n for n, p in inspect.signature(cls).parameters.items() if p.kind != p.VAR_KEYWORD]
    shared = [n for n in inspect.signature(MixingCallback).parameters if n != "methods"]
    assert "per_sample" in shared and "alpha" in own  # both lists were read
    assert _exit_code(["fit", "--trainer.callbacks.help", f"lightning_recipes.{name}"]) == 0
    out = capsys.readouterr().out
    for argument in own + shared:
        assert f"--trainer.callbacks.{argument} " in out, argument


# ---------------------------------------------------------------------------- short errors
BAD_VALUES = {
    "model": (
        ["--model.init_args.max_lr", "-1"],
        "`max_lr` must be > 0, got -1.0",
        ["--model.init_args.max_lr", "lightning-recipes fit --model.help ImageClassifier"],
    ),
    "data": (
        ["--data.init_args.batch_size", "0"],
        "`batch_size` must be an integer >= 1, got 0",
        ["--data.init_args.batch_size", "lightning-recipes fit --data.help DigitsDataModule"],
    ),
    "callback": (
        ["--trainer.callbacks+=lightning_recipes.CutMix", "--trainer.callbacks.alpha", "-1"],
        "CutMix: `alpha` must be > 0, got -1.0",
        ["`alpha` in its entry of trainer.callbacks", "--trainer.callbacks.help CutMix"],
    ),
    "trainer": (
        ["--trainer.devices", "-3"],
        "`devices` selected with `CPUAccelerator` should be an int > 0",
        ["--trainer.devices"],
    ),
    "linked": (
        ["--model.init_args.num_classes", "5"],
        "`model.init_args.num_classes` is 5, but the data module DigitsDataModule has",
        ["leave the model's argument out"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_refused_value_is_a_short_error(capsys, tmp_path, case):
    args, message, hints = BAD_VALUES[case]
    code = _exit_code(["fit", "--config", DIGITS, "--trainer.logger", "false", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert 2 <= len(lines) <= 4, err
    assert lines[0].startswith(f"lightning-recipes fit: error: {message}")
    for hint in hints:
        assert hint in err
    assert lines[-1] == f"  (set {TRACEBACK_ENV}=1 for the full traceback)"


def test_traceback_variable_shows_the_full_traceback(monkeypatch):
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(ValueError, match="max_lr") as error_info:
        main(["fit", "--config", DIGITS, "--model.init_args.max_lr", "-1"])
    # jsonargparse's error, caused by the model's own.
    assert "`max_lr` must be > 0" in str(error_info.value.__cause__)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trainer.max_epochz", "3"], "error: unrecognized arguments: --trainer.max_epochz 3"),
        (["--model.init_args.max_lr", "abc"], "Expected a <class 'float'>. Got value: abc"),
    ],
    ids=["unknown", "ill-typed"],
)
def test_a_parse_error_is_short(capsys, args, message):
    assert _exit_code(["fit", "--config", DIGITS, *args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) <= 7, err
    assert lines[0].startswith("usage: lightning-recipes [options] fit")
    assert message in err
    assert "Subtypes:" not in err and "Given value" not in err


def test_an_error_during_the_run_keeps_its_traceback(tmp_path):
    # Only the building of the objects is configuration; a failure of the run itself is
    # a bug or a broken loop and keeps its exception.
    with pytest.raises(ValueError, match="infinite"):
        main(
            [
                "fit",
                "--config",
                DIGITS,
                "--trainer.max_epochs",
                "-1",
                "--trainer.max_steps",
                "-1",
                "--trainer.logger.init_args.save_dir",
                str(tmp_path),
                "--trainer.default_root_dir",
                str(tmp_path),
                "--trainer.enable_model_summary",
                "false",
            ]
        )


# ------------------------------------------------------------------------ upstream noise
def test_without_the_command_the_upstream_noise_is_there(caplog):
    # The scenario the filters are for: Lightning's pytree warning and its cloud-logging tip.
    from lightning.pytorch.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tree_flatten(torch.zeros(1))
    assert any(LEAFSPEC in str(w.message) for w in caught)
    # The level is set on Lightning's logger itself: another test may have raised it.
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        pl.Trainer(logger=False, enable_progress_bar=False)
    assert LITLOGGER in caplog.text


@pytest.mark.slow
def test_a_run_prints_no_upstream_noise(tmp_path, capsys, caplog):
    args = [
        "fit",
        "--config",
        DIGITS,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
    ]
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        main(args)
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text + "\n".join(str(w.message) for w in caught)
    assert "lightning-recipes fit finished" in out.out  # the run happened
    assert LEAFSPEC not in text
    assert LITLOGGER not in text
    # The model summary ran a batch of one image: real FLOPs and sizes, not 0.
    total = re.search(r"Total FLOPs: (\S+)", out.out)
    assert total is not None and total[1] != "0", out.out
    # A warning about the run itself still reaches the user.
    assert any("log_every_n_steps" in str(w.message) for w in caught)
    # The filters end with the command.
    assert not any(LEAFSPEC in str(f[1].pattern if f[1] else "") for f in warnings.filters)
