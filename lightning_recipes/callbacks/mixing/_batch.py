"""Finding the inputs and targets in a training batch, and checking them.

The callbacks mix the batch in place: a list ``[x, y, ...]`` by index, or a dict by key, with
default keys tried in order when none is given. Every check reads metadata only, except the
label range: once per run on an accelerator, where it synchronises; on the CPU the callbacks'
one-hot targets check it on every batch.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, NamedTuple

import lightning.pytorch as pl
from torch import Tensor

from lightning_recipes._validation import (
    check_inplace,
    check_input,
    check_label_range,
    check_targets,
)

__all__ = ["BatchItems", "Key", "check_key", "module_num_classes", "read_batch"]

Key = int | str
# Keys tried, in order, when a dict batch is mixed and no key was given.
_INPUT_KEYS = ("input", "image", "images", "pixel_values", "x")
_TARGET_KEYS = ("target", "label", "labels", "y")


class BatchItems(NamedTuple):
    """Where the inputs and targets of a batch are, and what they hold, checked."""

    input_key: Key
    target_key: Key
    x: Tensor
    y: Tensor
    num_classes: int


def check_key(key: Any, name: str) -> Key | None:
    """``input_key`` / ``target_key``: None, an int (list batch) or a str (dict batch)."""
    if key is not None and (isinstance(key, bool) or not isinstance(key, int | str)):
        raise TypeError(
            f"`{name}` must be None, an int (list batch) or a str (dict batch), got {key!r}"
        )
    return key


def read_batch(
    batch: Any,
    keys: tuple[Key | None, Key | None],
    num_classes: int | None,
    *,
    owner: str,
    inplace: bool,
    check_layout: Callable[[Tensor, str], None],
    check_labels: bool,
) -> BatchItems:
    """The batch's inputs and targets, checked.

    Args:
        batch: The training batch, a list or a dict.
        keys: The ``input_key`` and ``target_key`` given, or None for the defaults.
        num_classes: The number of classes, if known.
        owner: The callback's class name, for the messages.
        inplace: Whether the input will be written to (a view is refused then).
        check_layout: Raises if the input has too few dims for the callback's methods.
        check_labels: Whether to check the range of integer labels on an accelerator (it
            synchronises, so the callbacks check the first batch only). On the CPU the
            callbacks' one-hot targets check it on every batch, for free.
    """
    input_key, target_key = _batch_keys(batch, *keys, owner=owner)
    x_name, y_name = f"batch[{input_key!r}]", f"batch[{target_key!r}]"
    x = check_input(batch[input_key], x_name)
    check_layout(x, x_name)
    check_inplace(x, inplace, x_name)
    y = batch[target_key]
    if isinstance(y, Tensor) and not y.is_floating_point() and num_classes is None:
        raise ValueError(
            f"`num_classes` is needed to turn the integer labels {y_name} into soft targets:"
            f" pass `num_classes` to {owner} or give the LightningModule a `num_classes`"
            " attribute or hyperparameter, got None"
        )
    classes = check_targets(y, x.shape[0], num_classes, y_name)
    if check_labels and not y.is_floating_point() and y.device.type != "cpu":
        check_label_range(y, classes, y_name)
    return BatchItems(input_key, target_key, x, y, classes)


def _batch_keys(
    batch: Any, input_key: Key | None, target_key: Key | None, *, owner: str
) -> tuple[Key, Key]:
    if isinstance(batch, list):
        keys = (0 if input_key is None else input_key, 1 if target_key is None else target_key)
        for arg, key in zip(("input_key", "target_key"), keys, strict=True):
            if not isinstance(key, int) or not -len(batch) <= key < len(batch):
                raise ValueError(
                    f"`{arg}` must be an index into the list batch of length {len(batch)},"
                    f" got {key!r}"
                )
        return keys
    if isinstance(batch, MutableMapping):
        found = (
            _first_key(batch, _INPUT_KEYS, "input_key") if input_key is None else input_key,
            _first_key(batch, _TARGET_KEYS, "target_key") if target_key is None else target_key,
        )
        for arg, key in zip(("input_key", "target_key"), found, strict=True):
            if key not in batch:
                raise ValueError(
                    f"`{arg}` must be a key of the dict batch {sorted(map(str, batch))},"
                    f" got {key!r}"
                )
        return found
    raise TypeError(
        f"{owner} mixes the batch in place, so the batch must be a list or a dict, got a"
        f" {type(batch).__name__}; return a list `[x, y]` or a dict from your Dataset or"
        " collate_fn (torch's default collate_fn already turns tuple samples into a list)"
    )


def _first_key(batch: MutableMapping[Any, Any], candidates: tuple[str, ...], arg: str) -> str:
    for key in candidates:
        if key in batch:
            return key
    raise ValueError(
        f"`{arg}` must be given for a dict batch without any of the keys {candidates}, got"
        f" a batch with keys {sorted(map(str, batch))}"
    )


def module_num_classes(pl_module: pl.LightningModule) -> int | None:
    """The LightningModule's ``num_classes`` attribute or hyperparameter, if it has one."""
    value = getattr(pl_module, "num_classes", None)
    if value is None:
        value = pl_module.hparams.get("num_classes")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
