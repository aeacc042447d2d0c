"""Reading back what a CSVLogger wrote, for tests that check logged values."""

from __future__ import annotations

import csv

import lightning.pytorch as pl


def csv_rows(trainer: pl.Trainer) -> list[dict[str, float]]:
    """Every row of the trainer's CSVLogger metrics file, empty cells left out."""
    with open(trainer.logger.experiment.metrics_file_path) as f:  # type: ignore[union-attr]
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def series(rows: list[dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    """The steps and values logged under ``key``."""
    picked = [(int(r["step"]), r[key]) for r in rows if key in r]
    return [s for s, _ in picked], [v for _, v in picked]
