"""The ``lightning-recipes`` command: a LightningCLI over any OneCycleModule and data module."""

from __future__ import annotations

import importlib
import inspect
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.model_helpers import is_overridden
from typing_extensions import override

from lightning_recipes.checkpointing import (
    AtomicCheckpointIO,
    InterruptCheckpoint,
    find_last_checkpoint,
    read_checkpoint,
)
from lightning_recipes.classifier import ImageClassifier
from lightning_recipes.module import OneCycleModule

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
        # LightningCLI reads an explicit `--ckpt_path` file right after parsing (to take the
        # model's hyperparameters from it): check it first, so that a damaged file or one of
        # another model class is reported as such and not as a pickle error or a silent switch.
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path in (None, "last", "best", "hpc", "registry") or not Path(ckpt_path).is_file():
            return
        model_cls = _import(config.get("model.class_path"))
        if model_cls is not None:
            _check_checkpoint(ckpt_path, model_cls)

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
        lines.extend(_checkpoint_lines(trainer))
        config = Path(log_dir) / "config.yaml"
        lines.append(f"  config:      {config if config.exists() else 'not saved'}")
        if trainer.is_global_zero:
            print("\n".join(lines))


def _import(class_path: str | None) -> type | None:
    if not class_path:
        return None
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name, None)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_checkpoint(path: str | Path, model_cls: type) -> None:
    """Read ``path`` (memory-mapped, so the tensors are not loaded) and check its model class."""
    try:
        checkpoint = read_checkpoint(path, map_location="cpu", weights_only=True, mmap=True)
    except ValueError as error:
        if "mmap" not in str(error):
            raise
        # A file in torch's legacy (pre-zip) format cannot be memory-mapped.
        checkpoint = read_checkpoint(path, map_location="cpu", weights_only=True)
    saved = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if not isinstance(saved, str):
        return  # not written through a LightningCLI: the weights' keys are checked on load
    try:
        saved_cls = _import(saved)
    except ImportError:
        saved_cls = None
    if saved_cls is model_cls:
        return
    configured = f"{model_cls.__module__}.{model_cls.__qualname__}"
    raise ValueError(
        f"Checkpoint {str(path)!r} was saved from the model class {saved}, but the model is"
        f" {configured}; pass `--model {saved}` with its arguments, or a checkpoint of a"
        f" {model_cls.__name__} run as `--ckpt_path`"
    )


def _run_root(trainer: pl.Trainer) -> Path:
    """The folder that holds a run's ``version_N`` folders (``save_dir/name`` of the first
    logger), or ``default_root_dir`` without a logger, as ``ModelCheckpoint`` resolves it."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = logger.save_dir or trainer.default_root_dir
        return Path(save_dir) / str(logger.name or "")
    return Path(trainer.default_root_dir)


def _checkpoint_folders(trainer: pl.Trainer) -> list[Path]:
    """Where the run's checkpoints are: the folders set on checkpoint callbacks, then every
    ``<version>/checkpoints`` of the run (or ``default_root_dir/checkpoints``)."""
    folders = [
        Path(callback.dirpath)
        for callback in trainer.callbacks
        if isinstance(callback, (ModelCheckpoint, InterruptCheckpoint)) and callback.dirpath
    ]
    root = _run_root(trainer)
    if trainer.loggers:
        folders += sorted(path for path in root.glob("*/checkpoints") if path.is_dir())
    else:
        folders.append(root / "checkpoints")
    return folders


def _last_names(trainer: pl.Trainer) -> tuple[str, ...]:
    names = {ModelCheckpoint.CHECKPOINT_NAME_LAST}
    for callback in trainer.callbacks:
        if isinstance(callback, InterruptCheckpoint):
            names.add(callback.filename)
    return tuple(sorted(names))


def _checkpoint_lines(
    trainer: pl.Trainer, interrupt: InterruptCheckpoint | None = None
) -> list[str]:
    """The summary's checkpoint line: the folder, the last and the best checkpoint, and the
    interrupt checkpoint when one was written."""
    checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    if not checkpoints and interrupt is None:
        return []
    # The last checkpoint is a `save_last` file, or what an unmonitored callback keeps (its
    # "best" is the latest epoch); the best is that of a monitored callback.
    last = next(
        (cb.last_model_path for cb in checkpoints if cb.last_model_path),
        next(
            (cb.best_model_path for cb in checkpoints if not cb.monitor and cb.best_model_path),
            "none",
        ),
    )
    best = next(
        (cb.best_model_path for cb in checkpoints if cb.monitor and cb.best_model_path), "none"
    )
    dirpath = next((cb.dirpath for cb in checkpoints if cb.dirpath), None)
    parts = [f"last: {last}", f"best: {best}"]
    if interrupt is not None:
        parts.insert(0, f"interrupted: {interrupt.saved_path or 'none'}")
        if dirpath is None and interrupt.saved_path is not None:
            dirpath = str(interrupt.saved_path.parent)
    return [f"  checkpoints: {dirpath} ({', '.join(parts)})"]


def _interrupted_summary(trainer: pl.Trainer) -> str:
    interrupt = next((cb for cb in trainer.callbacks if isinstance(cb, InterruptCheckpoint)), None)
    stopped_by = interrupt.signal if interrupt is not None else None
    what = stopped_by.name if isinstance(stopped_by, signal.Signals) else "an interrupt"
    lines = [
        "",
        f"lightning-recipes fit interrupted by {what} at epoch {trainer.current_epoch},"
        f" global step {trainer.global_step}; not tested.",
        f"  logs:        {trainer.log_dir or trainer.default_root_dir}",
        *_checkpoint_lines(trainer, interrupt),
    ]
    if interrupt is not None and interrupt.saved_path is not None:
        lines.append("  resume:      the same command with `--ckpt_path last`")
    else:
        lines.append("  resume:      no checkpoint of this moment was written")
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lightning-recipes`` and ``python -m lightning_recipes``."""
    RecipesCLI(
        OneCycleModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )
