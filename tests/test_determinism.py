"""``--seed_everything 42 --trainer.deterministic true`` twice: the same metrics and weights."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lightning_recipes.cli import main

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In-process CLI runs set the seed, the RNGs and torch's deterministic mode: undo all."""
    monkeypatch.setattr(sys, "argv", ["lightning-recipes"])
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    state = torch.random.get_rng_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.random.set_rng_state(state)


def _fit(folder: Path) -> tuple[str, dict]:
    """A short seeded, deterministic fit of the main config; its metrics file and last weights."""
    main(
        [
            "fit",
            "--config",
            str(DIGITS),
            "--seed_everything",
            "42",
            "--trainer.deterministic",
            "true",
            "--trainer.max_epochs",
            "2",
            "--trainer.limit_train_batches",
            "5",
            "--trainer.limit_val_batches",
            "2",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(folder),
            "--trainer.logger.init_args.save_dir",
            str(folder),
        ]
    )
    (metrics,) = folder.rglob("metrics.csv")
    (last,) = folder.rglob("last.ckpt")
    return metrics.read_text(), torch.load(last, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_seeded_deterministic_runs_are_identical(tmp_path: Path, isolated: None) -> None:
    first_metrics, first = _fit(tmp_path / "first")
    torch.manual_seed(1234)  # whatever ran in between, the seed decides
    second_metrics, second = _fit(tmp_path / "second")
    # The run happened: two epochs of 5 steps, validated, tested, with mixing logged.
    assert first["global_step"] == 10 and first["epoch"] == 1
    assert "val/acc" in first_metrics and "test/acc" in first_metrics
    assert "lam-MixUp" in first_metrics
    assert first_metrics == second_metrics
    first_weights, second_weights = first["state_dict"], second["state_dict"]
    assert first_weights.keys() == second_weights.keys()
    for name, tensor in first_weights.items():
        assert torch.equal(tensor, second_weights[name]), name
