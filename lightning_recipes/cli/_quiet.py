"""Upstream warnings and log lines that every run of the command printed and that say nothing.

They are filtered while :func:`lightning_recipes.cli.main` runs, never on import of the package.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator

from typing_extensions import override

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
