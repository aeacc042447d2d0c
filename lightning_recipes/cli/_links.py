"""What the command's data module passes to its model: linked arguments and an example input."""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_recipes.classifier import ImageClassifier
from lightning_recipes.cli._runs import _import

# Data-module attributes copied into model arguments of the same name, when both exist.
_LINKED = ("num_classes", "in_channels")


def _explicit_links(config: Any) -> dict[str, Any]:
    """The linked model arguments the user set, before jsonargparse's link overwrites them.

    A value equal to the model's default, or to the default model's (jsonargparse carries
    those over when ``--model`` switches class), is not taken as set by the user.
    """
    init_args = config.get("model.init_args")
    model_cls = _import(config.get("model.class_path"))
    if init_args is None or model_cls is None:
        return {}
    params = inspect.signature(model_cls).parameters
    carried = inspect.signature(ImageClassifier).parameters
    explicit = {}
    for name in _LINKED:
        value = init_args.get(name)
        if name in params and value not in (None, params[name].default, carried[name].default):
            explicit[name] = value
    return explicit


def _check_links(explicit: dict[str, Any], datamodule: Any) -> None:
    """A linked model argument the user set that contradicts the data module is an error."""
    for name, value in explicit.items():
        linked = getattr(datamodule, name, None)
        if linked is not None and linked != value:
            raise ValueError(
                f"`model.init_args.{name}` is {value}, but the data module"
                f" {type(datamodule).__name__} has {name}={linked}; the model takes"
                " the data module's value, so leave the model's argument out"
            )


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
