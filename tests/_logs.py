"""A trainer that logs every step to a CSVLogger, reading back what it wrote, and the command's
closing summary, for tests that check logged or printed values."""

from __future__ import annotations

import csv
import re
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger


def csv_trainer(tmp_path: Any, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    """A quiet one-epoch CPU trainer logging every step to a CSVLogger in ``tmp_path``."""
    defaults: dict[str, Any] = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "logger": CSVLogger(tmp_path),
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    return pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def csv_rows(trainer: pl.Trainer) -> list[dict[str, float]]:
    """Every row of the trainer's CSVLogger metrics file, empty cells left out."""
    with open(trainer.logger.experiment.metrics_file_path) as f:  # type: ignore[union-attr]
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def series(rows: list[dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    """The steps and values logged under ``key``."""
    picked = [(int(r["step"]), r[key]) for r in rows if key in r]
    return [s for s, _ in picked], [v for _, v in picked]


def cli_summary(stdout: str) -> dict[str, str]:
    """The lines the command's ``after_fit`` prints, as {key: value}."""
    start = stdout.index("lightning-recipes fit finished")
    summary = {}
    for line in stdout[start:].splitlines()[1:]:
        match = re.fullmatch(r"  (\S+):\s+(.*)", line)
        if match is None:
            break
        summary[match[1]] = match[2]
    return summary
