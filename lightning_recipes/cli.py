"""The ``lightning-recipes`` command: a LightningCLI over any OneCycleModule and data module."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import lightning.pytorch as pl
import torch
from jsonargparse import DefaultHelpFormatter
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from typing_extensions import override

from lightning_recipes._cli_runs import (
    _check_checkpoint,
    _checkpoint_folders,
    _checkpoint_lines,
    _import,
    _interrupted_summary,
    _last_names,
    _recover_checkpoint_paths,
    _run_root,
    _schedule_lines,
)
from lightning_recipes.checkpointing import (
    AtomicCheckpointIO,
    InterruptCheckpoint,
    find_last_checkpoint,
)
from lightning_recipes.classifier import ImageClassifier
from lightning_recipes.lr_find import LRFindResult
from lightning_recipes.module import OneCycleModule
from lightning_recipes.trainer import RecipesTrainer

__all__ = ["TRACEBACK_ENV", "RecipesCLI", "main"]

# Data-module attributes copied into model arguments of the same name, when both exist.
_LINKED = ("num_classes", "in_channels")
# OneCycleModule arguments that say how to treat this run rather than what was trained: with
# `--ckpt_path`, LightningCLI replaces the model's arguments by the checkpoint's, but for these
# the value of this run (command line, config or default) is kept.
_RUN_POLICY = ("on_schedule_mismatch", "on_skipped_step")

#: Set this environment variable (to anything but ``0`` or empty) to see the full traceback of
#: a configuration error instead of its short message.
TRACEBACK_ENV = "LIGHTNING_RECIPES_TRACEBACK"
# Exit status of a wrong command line or config: jsonargparse's own for unknown or
# ill-typed arguments, so every configuration error exits the same way.
_CONFIG_ERROR_STATUS = 2

# Upstream warnings that every run printed and that say nothing about the run, as
# (message regex, category). Filtered in `main` only, never on import of the package.
_HARMLESS_WARNINGS = (
    # torch deprecates `LeafSpec`, which Lightning's `_pytree` still instantiates.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)
# The same for the processes `strategy="ddp_spawn"` starts, which do not run `main`:
# PYTHONWARNINGS takes a literal message prefix, and no comma (its separator).
_CHILD_WARNING_FILTERS = ("ignore:`isinstance(treespec:FutureWarning",)
# Lightning's advert for its cloud logger, printed (at INFO level) by every Trainer.
_HARMLESS_INFO = re.compile(r"💡 Tip: For seamless cloud logging")
_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
# Lines of jsonargparse's Union errors that only restate the types: `--model` is
# `OneCycleModule | None`, so every bad model argument also "is not None".
_UNION_NOISE = re.compile(
    r"\s*(Does not validate against any of the Union subtypes|Subtypes: \[.*\]|Errors:"
    r"|- Expected a <class 'NoneType'>|Given value type: .*|Given value: .*)"
)

_MAIN_DESCRIPTION = """\
lightning-recipes: train, validate, test and predict with the lightning_recipes models
(OneCycle stepped per optimizer step, MixUp/CutMix/FMix, LR and loss-scale monitors).

Examples:
  lightning-recipes fit --config configs/digits.yaml
  lightning-recipes fit --config configs/digits.yaml --trainer.max_epochs 5
  lightning-recipes fit --help                              every option of fit
  lightning-recipes fit --model.help ImageClassifier        the model's arguments
  lightning-recipes fit --data.help DigitsDataModule        the data module's arguments

A wrong argument ends with a short error (exit status 2); set LIGHTNING_RECIPES_TRACEBACK=1
to see its full traceback.
"""
_SUBCOMMAND_DESCRIPTION = """\
{summary}

  lightning-recipes {subcommand} --config configs/digits.yaml{example}
  lightning-recipes {subcommand} --model.help ImageClassifier     the model's arguments
  lightning-recipes {subcommand} --data.help DigitsDataModule     the data module's arguments

Any option below can also be set in the YAML file given by --config; options on the
command line override it.
"""
_SUMMARIES = {
    "fit": "Train the model, then test the final weights and print where logs, checkpoints"
    " and the config went.",
    "validate": "Evaluate a checkpoint on the validation set.",
    "test": "Evaluate a checkpoint on the test set.",
    "predict": "Predict class probabilities with a checkpoint.",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's formatter that keeps the description's lines (its example commands)."""


class _Parser(LightningArgumentParser):
    """The command's parser: errors without jsonargparse's restatement of Union types."""

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        lines = [line for line in message.splitlines() if not _UNION_NOISE.fullmatch(line)]
        super().error("\n".join(lines), ex)


def _parser_kwargs() -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "description": _MAIN_DESCRIPTION,
        "formatter_class": _HelpFormatter,
    }
    for subcommand, summary in _SUMMARIES.items():
        example = "" if subcommand == "fit" else " --ckpt_path CHECKPOINT"
        kwargs[subcommand] = {
            "description": _SUBCOMMAND_DESCRIPTION.format(
                summary=summary, subcommand=subcommand, example=example
            ),
            "formatter_class": _HelpFormatter,
            "usage": "%(prog)s [--config CONFIG] [--SECTION.ARGUMENT VALUE ...]",
        }
    return kwargs


class RecipesCLI(LightningCLI):
    """LightningCLI in subclass mode: ``--model`` any :class:`OneCycleModule` subclass (default
    :class:`~lightning_recipes.ImageClassifier`), ``--data`` any ``LightningDataModule`` (default
    :class:`~lightning_recipes.DigitsDataModule`), by ``class_path``.

    ``num_classes`` and ``in_channels`` of the data module are passed to the model when the
    model takes them (``link_arguments``); a model value set in the config that contradicts the
    data module is an error rather than silently replaced. After ``fit``, the final weights (the
    end of the OneCycle) are tested when the data module has a test set, and a summary names the
    test accuracy, the log folder, the last and best checkpoints and the saved config (also
    under ``strategy="ddp_spawn"``, where the fit runs in other processes).

    With ``--ckpt_path``, LightningCLI takes the model's arguments from the checkpoint; the
    run-policy arguments ``on_schedule_mismatch`` and ``on_skipped_step`` are the exception and
    keep this run's value, so a resume can choose ``on_schedule_mismatch=rescale``.

    Checkpoints are interrupt-safe: every checkpoint is written atomically
    (:class:`~lightning_recipes.AtomicCheckpointIO`, unless another ``CheckpointIO`` plugin is
    given), and SIGTERM or Ctrl-C during ``fit`` saves the state of that moment
    (:class:`~lightning_recipes.InterruptCheckpoint`, added when the config has none and
    checkpointing is on), prints where it went and exits with status 143 (SIGTERM) or 130
    (Ctrl-C). ``--ckpt_path last`` resumes from the newest ``last``/``interrupted`` checkpoint
    of the same run (logger ``save_dir``/``name``, across its ``version_N`` folders, or
    ``default_root_dir``); when there is none, ``fit`` says so and starts from scratch and
    ``validate``/``test``/``predict`` stop with an error. A checkpoint file that cannot be read,
    or that was saved from another model class, is an error naming the file (and both classes).
    """

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        # `lr_find` and `preview` are RecipesTrainer methods: LightningCLI makes a subcommand of
        # each, with the same config as `fit`.
        fit_like = {"model", "train_dataloaders", "datamodule"}
        return {**LightningCLI.subcommands(), "lr_find": fit_like, "preview": fit_like}

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults(
            {
                "model": {"class_path": "lightning_recipes.ImageClassifier"},
                "data": {"class_path": "lightning_recipes.DigitsDataModule"},
            }
        )
        for name in _LINKED:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        config = self._subcommand_config()
        self._run_policy = {
            name: config.get(f"model.init_args.{name}")
            for name in _RUN_POLICY
            if config.get(f"model.init_args.{name}") is not None
        }
        # LightningCLI reads an explicit `--ckpt_path` file right after parsing (to take the
        # model's hyperparameters from it): check it first, so that a damaged file or one of
        # another model class is reported as such and not as a pickle error or a silent switch.
        if not self.config.get("subcommand"):
            return
        ckpt_path = config.get("ckpt_path")
        if ckpt_path in (None, "last", "best", "hpc", "registry") or not Path(ckpt_path).is_file():
            return
        model_cls = _import(config.get("model.class_path"))
        if model_cls is not None:
            _check_checkpoint(ckpt_path, model_cls)

    @override
    def before_instantiate_classes(self) -> None:
        # `_parse_ckpt_path` has merged the checkpoint's hyperparameters by now: without this,
        # `--model.init_args.on_schedule_mismatch rescale` on a resume would be ignored.
        config = self._subcommand_config()
        for name, value in getattr(self, "_run_policy", {}).items():
            if config.get("model.init_args") is not None:
                config[f"model.init_args.{name}"] = value

    def _subcommand_config(self) -> Any:
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    @override
    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_init = config.get("trainer") or {}
        plugins = _as_list(kwargs.get("plugins", trainer_init.get("plugins")))
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        if trainer_init.get("enable_checkpointing") is not False:
            callbacks = _as_list(kwargs.get("callbacks", trainer_init.get("callbacks")))
            if not any(isinstance(callback, InterruptCheckpoint) for callback in callbacks):
                kwargs["callbacks"] = [*callbacks, InterruptCheckpoint()]
        return super().instantiate_trainer(**kwargs)

    def fit(self, **kwargs: Any) -> None:
        """``trainer.fit`` with ``ckpt_path="last"`` resolved across the run's ``version_N``
        folders, and a summary and a non-zero exit status when SIGTERM or Ctrl-C stops it."""
        kwargs["ckpt_path"] = self._resolve_ckpt_path("fit", kwargs.get("ckpt_path"))
        try:
            self.trainer.fit(**kwargs)
        except SystemExit:  # Lightning's SIGTERMException, or its exit after a second Ctrl-C
            if self.trainer.interrupted and self.trainer.is_global_zero:
                print(_interrupted_summary(self.trainer))
            raise

    def validate(self, **kwargs: Any) -> Any:
        """``trainer.validate`` with ``ckpt_path="last"`` resolved across ``version_N`` folders."""
        kwargs["ckpt_path"] = self._resolve_ckpt_path("validate", kwargs.get("ckpt_path"))
        return self.trainer.validate(**kwargs)

    def test(self, **kwargs: Any) -> Any:
        """``trainer.test`` with ``ckpt_path="last"`` resolved across ``version_N`` folders."""
        kwargs["ckpt_path"] = self._resolve_ckpt_path("test", kwargs.get("ckpt_path"))
        return self.trainer.test(**kwargs)

    def predict(self, **kwargs: Any) -> Any:
        """``trainer.predict`` with ``ckpt_path="last"`` resolved across ``version_N`` folders."""
        kwargs["ckpt_path"] = self._resolve_ckpt_path("predict", kwargs.get("ckpt_path"))
        return self.trainer.predict(**kwargs)

    def _resolve_ckpt_path(self, subcommand: str, ckpt_path: Any) -> Any:
        if ckpt_path != "last":
            return ckpt_path
        trainer = self.trainer
        folders = _checkpoint_folders(trainer)
        found = find_last_checkpoint(folders, names=_last_names(trainer))
        where = _run_root(trainer)
        if found is None:
            if subcommand != "fit":
                raise ValueError(
                    f"`--ckpt_path last` found no last checkpoint under {where}; pass the"
                    " checkpoint file, e.g. `--ckpt_path <run>/version_N/checkpoints/last.ckpt`"
                )
            if trainer.is_global_zero:
                print(
                    f"--ckpt_path last: no last checkpoint under {where};"
                    " training starts from scratch"
                )
            return None
        _check_checkpoint(found, type(self.model))
        if trainer.is_global_zero:
            verb = "resuming from" if subcommand == "fit" else "loading"
            print(f"--ckpt_path last: {verb} {found}")
        return str(found)

    @override
    def instantiate_classes(self) -> None:
        # jsonargparse's link overwrites the target; remember what the user set so that a
        # contradiction is reported instead of silently replaced. A value equal to the model's
        # default, or to the default model's (jsonargparse carries those over when `--model`
        # switches class), is not taken as set by the user.
        config = self.config[self.subcommand] if self.subcommand else self.config
        init_args = config.get("model.init_args")
        model_cls = _import(config.get("model.class_path"))
        explicit = {}
        if init_args is not None and model_cls is not None:
            params = inspect.signature(model_cls.__init__).parameters
            carried = inspect.signature(ImageClassifier.__init__).parameters
            for name in _LINKED:
                value = init_args.get(name)
                if name in params and value not in (
                    None,
                    params[name].default,
                    carried[name].default,
                ):
                    explicit[name] = value
        super().instantiate_classes()
        for name, value in explicit.items():
            linked = getattr(self.datamodule, name, None)
            if linked is not None and linked != value:
                raise ValueError(
                    f"`model.init_args.{name}` is {value}, but the data module"
                    f" {type(self.datamodule).__name__} has {name}={linked}; the model takes"
                    " the data module's value, so leave the model's argument out"
                )

    def before_fit(self) -> None:
        """Fixes what the run's output will be called before any process starts."""
        # With `strategy="ddp_spawn"` the fit runs in child processes, and this one never
        # learns the log version they picked: it would name the next, empty one. Asking now
        # fixes the version, and the children receive it with the logger. CSV and TensorBoard
        # only: other loggers may create a remote run to answer.
        for logger in self.trainer.loggers:
            if isinstance(logger, (CSVLogger, TensorBoardLogger)):
                _ = logger.version
        _set_example_input(self.model, self.datamodule)

    @override
    def after_fit(self) -> None:
        # The model is tested as training left it: a OneCycle run ends annealed at `min_lr`, and
        # its final weights are the recipe's result. The checkpoint with the best validation
        # score is still saved and named, but picking it on a small validation set selects noise.
        trainer, datamodule = self.trainer, self.datamodule
        if trainer.interrupted:
            return
        results: list[dict[str, Any]] = []
        if datamodule is not None and is_overridden("test_dataloader", datamodule):
            results = trainer.test(self.model, datamodule=datamodule)
        log_dir = trainer.log_dir or trainer.default_root_dir
        _recover_checkpoint_paths(trainer)
        lines = ["", "lightning-recipes fit finished; test metrics of the final weights:"]
        for key, value in sorted((results[0] if results else {}).items()):
            lines.append(f"  {key}: {value:.4f}")
        lines.append(f"  logs:        {log_dir}")
        lines.extend(_checkpoint_lines(trainer))
        config = Path(log_dir) / "config.yaml"
        lines.append(f"  config:      {config if config.exists() else 'not saved'}")
        lines.extend(_schedule_lines(trainer))
        if trainer.is_global_zero:
            print("\n".join(lines))

    def lr_find(self, **kwargs: Any) -> LRFindResult:
        """``lightning-recipes lr_find``: the range test, then the fit config with its ``max_lr``.

        LightningCLI calls a CLI method of the subcommand's name instead of the trainer's; this
        one also writes ``lr_find_config.yaml`` so that the fit at the suggestion can be run
        (and repeated) with ``lightning-recipes fit --config``.
        """
        result = self.trainer.lr_find(**kwargs)
        config = self.config["lr_find"].clone()
        for name in self._subcommand_method_arguments["lr_find"]:
            config.pop(name, None)
        config["model.init_args.max_lr"] = result.suggestion
        groups = self.model.hparams.get("param_group_max_lr")
        if groups:
            config["model.init_args.param_group_max_lr"] = dict(groups)
        path = Path(self.trainer.default_root_dir) / "lr_find_config.yaml"
        if self.trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._subcommand_parsers["fit"].save(
                config, path, skip_check=True, overwrite=True, multifile=False
            )
            print(f"config with max_lr={result.suggestion:.4g}: {path}")
            print(f"train with: lightning-recipes fit --config {path}")
        return result


def _set_example_input(model: pl.LightningModule, datamodule: Any) -> None:
    """Gives the model summary a batch of one image, so it shows sizes and FLOPs, not 0."""
    if getattr(model, "example_input_array", None) is not None:
        return
    shape = getattr(datamodule, "image_shape", None)
    if shape is None:
        channels = getattr(datamodule, "in_channels", None)
        size = getattr(datamodule, "image_size", None)
        shape = (channels, size, size) if channels and size else None
    if shape is not None and all(isinstance(n, int) and n > 0 for n in shape):
        model.example_input_array = torch.zeros(1, *shape)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lightning-recipes`` and ``python -m lightning_recipes``.

    Upstream warnings known to be harmless are filtered here (and only here). A value that a
    class refuses while the command builds the model, data, trainer or callbacks ends the
    command with a short message and exit status 2, as jsonargparse's own argument errors do;
    :data:`TRACEBACK_ENV` set shows the full traceback instead.
    """
    with _harmless_upstream_output_filtered():
        try:
            RecipesCLI(
                OneCycleModule,
                pl.LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_kwargs={"overwrite": True},
                args=args,
                trainer_class=RecipesTrainer,
                auto_configure_optimizers=False,
                parser_class=_Parser,
                parser_kwargs=_parser_kwargs(),
            )
        except (ValueError, TypeError, MisconfigurationException) as error:
            cli = _instantiating_cli(error)
            if cli is None or os.environ.get(TRACEBACK_ENV, "0") not in ("", "0"):
                raise
            _exit_with_short_error(cli, error)


@contextlib.contextmanager
def _harmless_upstream_output_filtered() -> Iterator[None]:
    drop_info = _DropMessages(_HARMLESS_INFO)
    loggers = [logging.getLogger(name) for name in _RANK_ZERO_LOGGERS]
    previous = os.environ.get("PYTHONWARNINGS")
    with warnings.catch_warnings():
        for message, category in _HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [previous, *_CHILD_WARNING_FILTERS]))
        for logger in loggers:
            logger.addFilter(drop_info)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(drop_info)
            if previous is None:
                os.environ.pop("PYTHONWARNINGS", None)
            else:
                os.environ["PYTHONWARNINGS"] = previous


class _DropMessages(logging.Filter):
    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def _instantiating_cli(error: BaseException) -> LightningCLI | None:
    """The CLI whose ``instantiate_classes`` raised ``error``; None for errors of a run."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "instantiate_classes" and isinstance(owner, LightningCLI):
            return owner
    return None


def _exit_with_short_error(cli: LightningCLI, error: BaseException) -> NoReturn:
    root = error
    while root.__cause__ is not None:  # jsonargparse wraps the class's own error
        root = root.__cause__
    prog = f"lightning-recipes {cli.subcommand}" if cli.subcommand else "lightning-recipes"
    message = str(root).strip()
    owner = _refusing_object(root)
    lines = [f"{prog}: error: {message}"]
    lines += _where_to_fix(prog, owner, message) if owner is not None else []
    lines.append(f"  (set {TRACEBACK_ENV}=1 for the full traceback)")
    print("\n".join(lines), file=sys.stderr)
    raise SystemExit(_CONFIG_ERROR_STATUS)


def _refusing_object(error: BaseException) -> object | None:
    """The model, data module, trainer or callback whose ``__init__`` raised ``error``."""
    kinds = (pl.LightningModule, pl.LightningDataModule, pl.Trainer, Callback)
    for frame, _ in traceback.walk_tb(error.__traceback__):  # outermost first
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "__init__" and isinstance(owner, kinds):
            return owner
    return None


def _where_to_fix(prog: str, owner: object, message: str) -> list[str]:
    """Where the refused value is set, and the command that lists the class's arguments."""
    name = type(owner).__name__
    argument = re.search(r"`(\w+)", message)
    section, help_flag = None, None
    if isinstance(owner, pl.LightningModule):
        section, help_flag = "model.init_args", "--model.help"
    elif isinstance(owner, pl.LightningDataModule):
        section, help_flag = "data.init_args", "--data.help"
    elif isinstance(owner, pl.Trainer):
        section = "trainer"
    elif isinstance(owner, Callback):
        help_flag = "--trainer.callbacks.help"
    if argument and section:
        where = f"change --{section}.{argument[1]} (or {section}.{argument[1]} in the config)"
    elif isinstance(owner, Callback):
        arg = f"`{argument[1]}`" if argument else "the argument"
        where = f"change {arg} in its entry of trainer.callbacks (config or command line)"
    else:
        where = "change its arguments in the config or on the command line"
    lines = [f"  {name} refused the value: {where}"]
    if help_flag:
        lines.append(f"  {name}'s arguments: {prog} {help_flag} {name}")
    return lines
