"""The ``lightning-recipes`` command: a LightningCLI over any OneCycleModule and data module."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.model_helpers import is_overridden
from typing_extensions import override

from lightning_recipes.classifier import ImageClassifier
from lightning_recipes.lr_find import LRFindResult
from lightning_recipes.module import OneCycleModule
from lightning_recipes.trainer import RecipesTrainer

__all__ = ["RecipesCLI", "main"]

# Data-module attributes copied into model arguments of the same name, when both exist.
_LINKED = ("num_classes", "in_channels")


class RecipesCLI(LightningCLI):
    """LightningCLI in subclass mode: ``--model`` any :class:`OneCycleModule` subclass (default
    :class:`~lightning_recipes.ImageClassifier`), ``--data`` any ``LightningDataModule`` (default
    :class:`~lightning_recipes.DigitsDataModule`), by ``class_path``.

    ``num_classes`` and ``in_channels`` of the data module are passed to the model when the
    model takes them (``link_arguments``); a model value set in the config that contradicts the
    data module is an error rather than silently replaced. After ``fit``, the final weights (the
    end of the OneCycle) are tested when the data module has a test set, and a summary names the
    test accuracy, the log folder, the last and best checkpoints and the saved config.
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
        lines = ["", "lightning-recipes fit finished; test metrics of the final weights:"]
        for key, value in sorted((results[0] if results else {}).items()):
            lines.append(f"  {key}: {value:.4f}")
        lines.append(f"  logs:        {log_dir}")
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint):
            best = checkpoint.best_model_path or "none"
            last = checkpoint.last_model_path or "none"
            lines.append(f"  checkpoints: {checkpoint.dirpath} (last: {last}, best: {best})")
        config = Path(log_dir) / "config.yaml"
        lines.append(f"  config:      {config if config.exists() else 'not saved'}")
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


def _import(class_path: str | None) -> type | None:
    if not class_path:
        return None
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name, None)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lightning-recipes`` and ``python -m lightning_recipes``."""
    RecipesCLI(
        OneCycleModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        trainer_class=RecipesTrainer,
        auto_configure_optimizers=False,
    )
