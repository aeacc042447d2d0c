"""Short errors of the command: a value a class refuses while the command builds it ends the
command with one message and exit status 2, as jsonargparse's own argument errors do."""

from __future__ import annotations

import re
import sys
import traceback
from typing import NoReturn

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI

#: Set this environment variable (to anything but ``0`` or empty) to see the full traceback of
#: a configuration error instead of its short message.
TRACEBACK_ENV = "LIGHTNING_RECIPES_TRACEBACK"
# Exit status of a wrong command line or config: jsonargparse's own for unknown or
# ill-typed arguments, so every configuration error exits the same way.
_CONFIG_ERROR_STATUS = 2


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
