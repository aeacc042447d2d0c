"""``RecipesCLI`` and ``main``: the LightningCLI behind the ``lightning-recipes`` command."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.model_helpers import is_overridden
from typing_extensions import override

from lightning_recipes._compat import (
    cli_method_arguments,
    cli_subcommand_parser,
    no_hpc_checkpoint_loaded,
)
from lightning_recipes.checkpointing import (
    AtomicCheckpointIO,
    InterruptCheckpoint,
    find_last_checkpoint,
)
from lightning_recipes.cli._errors import (
    TRACEBACK_ENV,
    _exit_with_short_error,
    _instantiating_cli,
)
from lightning_recipes.cli._links import (
    _LINKED,
    _check_links,
    _explicit_links,
    _set_example_input,
)
from lightning_recipes.cli._parser import _Parser, _parser_kwargs
from lightning_recipes.cli._quiet import _harmless_upstream_output_filtered
from lightning_recipes.cli._runs import (
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
from lightning_recipes.cli._trainer import RecipesTrainer
from lightning_recipes.lr_find import LRFindResult
from lightning_recipes.module import OneCycleModule

__all__ = ["TRACEBACK_ENV", "RecipesCLI", "main"]

# OneCycleModule arguments that say how to treat this run rather than what was trained: with
# `--ckpt_path`, LightningCLI replaces the model's arguments by the checkpoint's, but for these
# the value of this run (command line, config or default) is kept.
_RUN_POLICY = ("on_schedule_mismatch", "on_skipped_step")


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
    (Ctrl-C). ``--ckpt_path last`` resumes from the newest ``last``, ``interrupted`` or step
    checkpoint, or ``hpc_ckpt_<N>`` (Lightning's, before a SLURM requeue), of the same run
    (logger ``save_dir``/``name``, across its ``version_N`` folders, or ``default_root_dir``);
    when there is none, ``fit`` says so and starts from scratch and
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
        config = self.config[self.subcommand] if self.subcommand else self.config
        # What the user set, before jsonargparse's link overwrites it: a contradiction is an error.
        explicit = _explicit_links(config)
        super().instantiate_classes()
        _check_links(explicit, self.datamodule)

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

    def after_fit(self) -> None:
        """Tests the final weights and prints where the run's output went."""
        # The model is tested as training left it: a OneCycle run ends annealed at `min_lr`, and
        # its final weights are the recipe's result. The checkpoint with the best validation
        # score is still saved and named, but picking it on a small validation set selects noise.
        trainer, datamodule = self.trainer, self.datamodule
        if trainer.interrupted:
            return
        results: list[Mapping[str, float]] = []
        if datamodule is not None and is_overridden("test_dataloader", datamodule):
            with no_hpc_checkpoint_loaded():  # on SLURM, Lightning would load a requeue's one
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
        # `main` builds the CLI with `trainer_class=RecipesTrainer`, whose method this is.
        result: LRFindResult = cast(RecipesTrainer, self.trainer).lr_find(**kwargs)
        config = self.config["lr_find"].clone()
        for name in cli_method_arguments(self, "lr_find"):
            config.pop(name, None)
        config["model.init_args.max_lr"] = result.suggestion
        groups = self.model.hparams.get("param_group_max_lr")
        if groups:
            config["model.init_args.param_group_max_lr"] = dict(groups)
        path = Path(self.trainer.default_root_dir) / "lr_find_config.yaml"
        if self.trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            cli_subcommand_parser(self, "fit").save(
                config, path, skip_check=True, overwrite=True, multifile=False
            )
            print(f"config with max_lr={result.suggestion:.4g}: {path}")
            print(f"train with: lightning-recipes fit --config {path}")
        return result


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
