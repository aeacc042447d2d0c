"""Fixtures for every test: global state that one test may change is put back."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

# `--doctest-modules` imports every module it collects; these are helpers and scripts (the DDP
# script trains on import), imported or started by the tests themselves.
collect_ignore_glob = ["_*.py"]


@pytest.fixture(autouse=True)
def _restore_logger_levels() -> Iterator[None]:
    # The benchmark scripts quiet Lightning's loggers in their `main()`, which some tests call.
    loggers = [logging.getLogger(name) for name in logging.root.manager.loggerDict]
    levels = {logger: logger.level for logger in loggers}
    yield
    for logger, level in levels.items():
        logger.setLevel(level)
