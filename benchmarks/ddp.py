"""The digits job in 2-process CPU DDP against 1 process: optimizer steps per second.

    python benchmarks/ddp.py                 # prints the table of benchmarks/RESULTS.md

Runs ``lightning-recipes fit --config configs/digits.yaml`` as a subprocess with
``--trainer.accelerator cpu --trainer.devices 1`` and with ``--trainer.devices 2
--trainer.strategy ddp`` (gloo), alternating, ``--repeats`` times each, every process on one
intra-op thread (``OMP_NUM_THREADS=1``). A :class:`StepTimer` callback, added with
``--trainer.callbacks+=benchmarks.ddp.StepTimer``, times the training batches of every epoch
but the first (imports, process start, the first epoch's warm-up, data loading and the validation
passes are left out) and writes what rank 0 measured to a JSON file.

Reported per setting, as medians over the repeats: optimizer steps per second, images per
second (steps x 64 x processes, since ``batch_size`` is per process) and, for DDP, both as a
ratio to one process. Two processes make half the steps of one per epoch, each on a batch of
64, so the steps-per-second ratio is below 1 even when DDP pays: the images-per-second ratio
is the speed-up, the steps-per-second ratio what the all-reduce costs each step. Also reported:
the time inside ``InterruptCheckpoint.on_train_batch_end`` a step, where the processes agree
whether any of them received SIGTERM (one scalar all-reduce; nothing with one process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_recipes import InterruptCheckpoint

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "digits.yaml"
BATCH_SIZE = 64  # configs/digits.yaml, per process


class StepTimer(Callback):
    """Sums the time of the training batches of epochs ``>= 1`` (start of the batch to its end:
    forward, backward, the all-reduce, the optimizer step, the callbacks) and counts their
    optimizer steps; rank 0 writes ``{"steps", "seconds", ...}`` to ``out`` at the end."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.seconds = 0.0
        self.steps = 0
        self.check_seconds = 0.0  # inside InterruptCheckpoint.on_train_batch_end
        self._start: tuple[float, int] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, InterruptCheckpoint):
                hook = callback.on_train_batch_end

                def timed(trainer: pl.Trainer, *args: Any, hook: Any = hook) -> None:
                    started = time.perf_counter()
                    hook(trainer, *args)
                    if trainer.current_epoch >= 1:
                        self.check_seconds += time.perf_counter() - started

                callback.on_train_batch_end = timed  # type: ignore[method-assign]

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.current_epoch >= 1:
            self._start = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._start is not None:
            started, step = self._start
            self.seconds += time.perf_counter() - started
            self.steps += trainer.global_step - step
            self._start = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.is_global_zero:
            record = {
                "steps": self.steps,
                "seconds": self.seconds,
                "check_seconds": self.check_seconds,
                "world_size": trainer.world_size,
                "threads": torch.get_num_threads(),
            }
            Path(self.out).write_text(json.dumps(record))


def run(devices: int, epochs: int, folder: Path) -> dict[str, Any]:
    """One fit of the digits job; returns what rank 0's StepTimer measured."""
    out = folder / f"timer-{devices}-{time.monotonic_ns()}.json"
    command = [
        sys.executable,
        "-m",
        "lightning_recipes",
        "fit",
        "--config",
        str(CONFIG),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        str(devices),
        "--trainer.strategy",
        "ddp" if devices > 1 else "auto",
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.default_root_dir",
        str(folder),
        "--trainer.logger.init_args.save_dir",
        str(folder),
        "--trainer.callbacks+=benchmarks.ddp.StepTimer",
        "--trainer.callbacks.out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the fit failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="timed: all but the first")
    args = parser.parse_args()

    measured: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for devices in (1, 2):  # alternate, so drifts of a shared machine hit both
                measured[devices].append(run(devices, args.epochs, Path(tmp)))

    rows, checks = {}, {}
    for devices, records in measured.items():
        assert all(r["world_size"] == devices and r["threads"] == 1 for r in records)
        steps_per_s = statistics.median(r["steps"] / r["seconds"] for r in records)
        rows[devices] = (steps_per_s, steps_per_s * BATCH_SIZE * devices, records[0]["steps"])
        checks[devices] = (
            statistics.median(1e6 * r["check_seconds"] / r["steps"] for r in records),
            statistics.median(100 * r["check_seconds"] / r["seconds"] for r in records),
        )

    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores;")
    print(
        f"digits job, epochs 1-{args.epochs - 1} timed, median of {args.repeats} fits each,"
        " 1 thread per process\n"
    )
    header = ("processes", "timed steps", "steps/s", "images/s", "steps/s ratio", "images/s ratio")
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|")
    base_steps, base_images, _ = rows[1]
    for devices, (steps_per_s, images_per_s, steps) in rows.items():
        print(
            f"| {devices} | {steps} | {steps_per_s:.1f} | {images_per_s:.0f}"
            f" | {steps_per_s / base_steps:.2f} | {images_per_s / base_images:.2f} |"
        )
    print()
    for devices, (per_step, share) in checks.items():
        print(
            f"{devices} process(es): InterruptCheckpoint's per-batch check {per_step:.0f} us a"
            f" step, {share:.2f}% of the timed batches"
        )


if __name__ == "__main__":
    main()
