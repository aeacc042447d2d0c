"""What interrupt-safe checkpointing costs per epoch of the digits job.

The digits job of ``configs/digits.yaml`` (``ImageClassifier`` small CNN, MixUp per sample,
``DigitsDataModule`` batch 64, OneCycle) is fitted, on one torch thread, in three variants:

- ``none``: no checkpointing at all (the baseline);
- ``lightning``: the shipped pair of ``ModelCheckpoint`` callbacks (best ``val/acc`` and
  ``last.ckpt`` every epoch) written by Lightning's default ``TorchCheckpointIO``;
- ``atomic``: the same pair and ``InterruptCheckpoint``, written by ``AtomicCheckpointIO``
  (temporary file in the checkpoint folder, ``fsync``, ``os.replace``);
- ``step``: ``atomic`` and the shipped configs' step checkpoint (``step.ckpt`` every 10
  optimizer steps, about two an epoch of this job), as the ``lightning-recipes`` command runs
  ``configs/digits.yaml``: what bounds the loss of a SIGKILL to 10 steps.

Variants are interleaved and each is repeated. The table gives the median wall and CPU
(process) time of a fit and their ratios to ``none``: every epoch saves, so a fit's ratio is
also the per-epoch ratio. On one thread the CPU-time ratio is the one other load on a shared
machine moves least, but it leaves out the time spent waiting for the disk (``fsync``); the
last columns measure the wall time inside ``CheckpointIO.save_checkpoint`` itself, per epoch
and as a share of an epoch without checkpointing (CPU time).

    python benchmarks/checkpoint_cost.py
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_recipes import (
    AtomicCheckpointIO,
    DigitsDataModule,
    ImageClassifier,
    InterruptCheckpoint,
    MixUp,
)

VARIANTS = ("none", "lightning", "atomic", "step")
STEP_EVERY = 10  # configs/digits.yaml


def _timed_io(io: TorchCheckpointIO, totals: dict[str, float]) -> TorchCheckpointIO:
    original = io.save_checkpoint

    @functools.wraps(original)
    def save(*args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            original(*args, **kwargs)
        finally:
            totals["save"] = totals.get("save", 0.0) + time.perf_counter() - start
            totals["saves"] = totals.get("saves", 0) + 1

    io.save_checkpoint = save  # type: ignore[method-assign]
    return io


def fit_once(variant: str, epochs: int, root: str) -> tuple[float, float, float, int]:
    """One seeded fit: (wall s, CPU s, wall s inside save_checkpoint, number of saves)."""
    pl.seed_everything(0, verbose=False)
    totals: dict[str, float] = {}
    callbacks: list[Callback] = [MixUp(alpha=0.2, per_sample=True, stop_fraction=0.8)]
    plugins: list[Any] = []
    if variant != "none":
        callbacks += [
            ModelCheckpoint(monitor="val/acc", mode="max", filename="epoch{epoch:02d}"),
            ModelCheckpoint(filename="last", save_top_k=1, enable_version_counter=False),
        ]
        io = TorchCheckpointIO() if variant == "lightning" else AtomicCheckpointIO()
        plugins.append(_timed_io(io, totals))
        if variant != "lightning":
            callbacks.append(InterruptCheckpoint())
        if variant == "step":
            callbacks.append(
                ModelCheckpoint(
                    filename="step",
                    every_n_train_steps=STEP_EVERY,
                    save_top_k=1,
                    enable_version_counter=False,
                )
            )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        log_every_n_steps=10,
        logger=CSVLogger(root, name=variant),
        callbacks=callbacks,
        plugins=plugins,
        enable_checkpointing=variant != "none",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = ImageClassifier(num_classes=10, in_channels=1, max_lr=0.2)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64, seed=0))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu, totals.get("save", 0.0), int(totals.get("saves", 0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    fits: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpus: dict[str, list[float]] = {v: [] for v in VARIANTS}
    saves: dict[str, list[float]] = {v: [] for v in VARIANTS}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as root:
        fit_once("none", 1, root)  # warm-up: imports, allocator, data
        for _ in range(args.repeats):
            for variant in VARIANTS:
                seconds, cpu, in_save, count = fit_once(variant, args.epochs, root)
                fits[variant].append(seconds)
                cpus[variant].append(cpu)
                saves[variant].append(in_save)
                counts[variant] = count
    load_after = os.getloadavg()[0]

    base = statistics.median(fits["none"])
    base_cpu = statistics.median(cpus["none"])
    epoch = base_cpu / args.epochs
    print(
        f"Digits job, {args.epochs} epochs, CPU ({platform.machine()}, {os.cpu_count()} cores),"
        f" torch {torch.__version__}, lightning {pl.__version__}, 1 thread; median of"
        f" {args.repeats} interleaved fits (1-minute load average {load_before:.1f} before,"
        f" {load_after:.1f} after). One epoch without checkpointing: {epoch:.3f} s of CPU time."
    )
    print()
    print(
        "| variant | median fit, wall (s) | wall ratio | median fit, CPU (s) | fits, CPU (s) |"
        " **CPU ratio** | saves | in save per epoch (ms) | in save, share of an epoch |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for variant in VARIANTS:
        median, median_cpu = statistics.median(fits[variant]), statistics.median(cpus[variant])
        runs = ", ".join(f"{s:.2f}" for s in cpus[variant])
        in_save = statistics.median(saves[variant]) / args.epochs
        share = f"{100 * in_save / epoch:.1f}%" if variant != "none" else "-"
        ms = f"{1000 * in_save:.1f}" if variant != "none" else "-"
        print(
            f"| {variant} | {median:.2f} | {median / base:.3f} | {median_cpu:.2f} | {runs} |"
            f" **{median_cpu / base_cpu:.3f}** | {counts.get(variant, 0)} | {ms} | {share} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
