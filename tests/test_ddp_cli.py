"""Several processes: the callbacks under ``ddp_spawn``, and ``lightning-recipes fit`` under DDP.

DDP runs go through the console command in a subprocess, as a user runs them, with a timeout
so that a hang fails the test instead of stalling the suite. A ``RankRecorder`` (in
``tests/_ddp_helpers.py``), added by ``--trainer.callbacks+=``, writes what each process saw.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import CutMix, FMix, MixUp, RandomMix

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
DIGITS = REPO / "configs" / "digits.yaml"
TIMEOUT = 240


def _mixers() -> list[Callback]:
    return [
        MixUp(alpha=0.4, per_sample=True, seed=3, num_classes=4),
        CutMix(seed=4, num_classes=4),
        FMix(per_sample=True, seed=5, num_classes=4),
        RandomMix(
            {"mixup": 0.3, "cutmix": 0.3, "fmix": 0.4}, per_sample=True, seed=6, num_classes=4
        ),
    ]


# ------------------------------------------------------------------ pickling for ddp_spawn
class _BatchRecorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(64, 4)
        self.inputs: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.inputs.append(x.detach().clone())
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _mixed_inputs(callback: Callback, steps: int, folder: Path) -> list[torch.Tensor]:
    """The inputs ``training_step`` receives in a short fit with ``callback``."""
    images = torch.arange(8 * 64, dtype=torch.float32).reshape(8, 1, 8, 8)
    data = TensorDataset(images, torch.arange(8) % 4)
    module = _BatchRecorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
        callbacks=[callback],
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    return module.inputs


def _unpickle_in_child(index: int, callbacks: list[Callback], out: str) -> None:
    # Reaching this line means the spawned process rebuilt every callback.
    Path(out, "child.txt").write_text(" ".join(type(c).__name__ for c in callbacks))


def test_mixing_callbacks_reach_a_spawned_process(tmp_path: Path) -> None:
    # `ddp_spawn` sends the callbacks through torch's multiprocessing pickler; a
    # `torch.Generator` does not survive it, and the child died unpickling.
    callbacks = _mixers()
    mp.start_processes(
        _unpickle_in_child, args=(callbacks, str(tmp_path)), nprocs=1, start_method="spawn"
    )
    assert (tmp_path / "child.txt").read_text() == "MixUp CutMix FMix RandomMix"


@pytest.mark.parametrize("index", range(4), ids=["MixUp", "CutMix", "FMix", "RandomMix"])
def test_a_pickled_mixer_draws_what_the_original_draws(tmp_path: Path, index: int) -> None:
    original = _mixers()[index]
    # Half-way through a run, as a spawned process or a resumed one would continue it.
    first = _mixed_inputs(original, 2, tmp_path / "a")
    copy = pickle.loads(pickle.dumps(original))
    assert copy.state_dict() == original.state_dict() == {"seed": original.seed, "batches": 2}
    later = _mixed_inputs(original, 2, tmp_path / "b")
    from_copy = _mixed_inputs(copy, 2, tmp_path / "c")
    assert all(torch.equal(a, b) for a, b in zip(later, from_copy, strict=True))
    # The scenario: inputs were mixed, and differently from the first two batches.
    clean = torch.arange(8 * 64, dtype=torch.float32).reshape(8, 1, 8, 8)[:4]
    assert not torch.equal(first[0], clean)
    assert not torch.equal(later[0], first[0])
