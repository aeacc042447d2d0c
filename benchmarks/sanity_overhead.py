"""What TrainingSanityChecks and LRMonitor cost on a digits fit.

The same seeded digits fit (``ImageClassifier`` small CNN, ``DigitsDataModule``, as in
``configs/digits.yaml``) runs with no monitoring callback, with ``TrainingSanityChecks`` (every
rule on), and with ``TrainingSanityChecks`` plus ``LRMonitor`` (logging every 10 steps as the
config does, PNG at the end). Variants are interleaved and each is repeated; the table gives the
median fit time and its ratio to the baseline, and, measured inside the callbacks, the time spent
in their hooks as a share of the fit (a figure that does not depend on the noise of a shared
machine).

    python benchmarks/sanity_overhead.py
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from lightning_recipes.callbacks.lr_monitor import LRMonitor
from lightning_recipes.callbacks.sanity import TrainingSanityChecks
from lightning_recipes.classifier import ImageClassifier
from lightning_recipes.data import DigitsDataModule

ALL_RAISE = dict.fromkeys(TrainingSanityChecks().modes, "raise")


# Hooks that run once per fit (or per stage); every other hook runs per batch or per epoch.
_ONCE = ("setup", "teardown", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end")


def _timed(callback: Callback, totals: dict[str, float]) -> Callback:
    """Wrap every hook the callback's class overrides with a wall-clock accumulator.

    ``totals["loop"]`` collects per-batch and per-epoch hooks, ``totals["once"]`` the rest.
    """
    for hook in dir(Callback):
        if not hook.startswith(("on_", "setup", "teardown")):
            continue
        if getattr(type(callback), hook) is getattr(Callback, hook):
            continue
        original = getattr(callback, hook)
        kind = "once" if hook in _ONCE else "loop"

        @functools.wraps(original)
        def wrapper(
            *args: Any, _f: Callable[..., Any] = original, _k: str = kind, **kwargs: Any
        ) -> Any:
            start = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                totals[_k] = totals.get(_k, 0.0) + time.perf_counter() - start

        setattr(callback, hook, wrapper)
    return callback


def _callbacks(variant: str) -> list[Callback]:
    if variant == "baseline":
        return []
    checks = TrainingSanityChecks(**ALL_RAISE)  # type: ignore[arg-type]
    if variant == "sanity":
        return [checks]
    return [checks, LRMonitor()]  # logs at the trainer's log_every_n_steps, PNG at the end


def fit_once(
    variant: str, epochs: int, batch_size: int, root: str
) -> tuple[float, dict[str, float], int]:
    """One seeded fit: (fit seconds, seconds inside the callbacks by kind, optimizer steps)."""
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(backbone="small_cnn", num_classes=10, in_channels=1, max_lr=0.2)
    data = DigitsDataModule(batch_size=batch_size, seed=0)
    totals: dict[str, float] = {}
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(root, name=variant),
        log_every_n_steps=10,
        callbacks=[_timed(cb, totals) for cb in _callbacks(variant)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    start = time.perf_counter()
    trainer.fit(model, data)
    elapsed = time.perf_counter() - start
    return elapsed, totals, trainer.global_step


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per fit (the config: 30)")
    parser.add_argument("--repeats", type=int, default=3, help="fits per variant (median)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads; 1 keeps the timing steady on a shared machine",
    )
    parser.add_argument("--output", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    variants = ("baseline", "sanity", "sanity+lr_monitor")
    times: dict[str, list[float]] = {v: [] for v in variants}
    loop: dict[str, list[float]] = {v: [] for v in variants}
    once: dict[str, list[float]] = {v: [] for v in variants}
    steps = 0
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as root:
        fit_once("baseline", 1, args.batch_size, root)  # warm-up: imports, data, allocator
        for repeat in range(args.repeats):
            # Rotate the order so that no variant always runs first after a pause.
            order = variants[repeat % 3 :] + variants[: repeat % 3]
            for variant in order:
                elapsed, hooks, steps = fit_once(variant, args.epochs, args.batch_size, root)
                times[variant].append(elapsed)
                loop[variant].append(hooks.get("loop", 0.0) / elapsed)
                once[variant].append(hooks.get("once", 0.0))
                print(
                    f"  {variant:<18} fit {elapsed:6.2f} s, in per-batch/epoch hooks"
                    f" {hooks.get('loop', 0.0):.3f} s, in once-per-fit hooks"
                    f" {hooks.get('once', 0.0):.3f} s",
                    flush=True,
                )

    load_after = os.getloadavg()[0]
    base = statistics.median(times["baseline"])
    command = "python benchmarks/sanity_overhead.py " + " ".join(argv or sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}`",
        "",
        f"Digits, ImageClassifier(small_cnn), batch {args.batch_size}, {args.epochs} epochs"
        f" ({steps} optimizer steps), CPU, torch {torch.__version__}, lightning {pl.__version__},"
        f" {torch.get_num_threads()} threads, {os.cpu_count()} cores (1-minute load average"
        f" {load_before:.1f} before, {load_after:.1f} after); median of {args.repeats}"
        " interleaved fits. The hook columns are measured inside the callbacks; on a loaded"
        " machine they are the figure to trust, while the fit-time ratio moves with whatever"
        " else runs.",
        "",
        "| callbacks | median fit (s) | fits (s) | ratio to baseline"
        " | per-batch/epoch hooks (share of fit) | once-per-fit hooks (s) | all hooks (share) |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        median = statistics.median(times[variant])
        runs = ", ".join(f"{t:.2f}" for t in times[variant])
        if variant == "baseline":
            hooks = "- | - | -"
        else:
            total = [
                share + seconds / fit
                for share, seconds, fit in zip(
                    loop[variant], once[variant], times[variant], strict=True
                )
            ]
            hooks = (
                f"{statistics.median(loop[variant]):.2%} | {statistics.median(once[variant]):.3f}"
                f" | {statistics.median(total):.2%}"
            )
        lines.append(f"| {variant} | {median:.2f} | {runs} | {median / base:.3f} | {hooks} |")
    table = "\n".join(lines)
    print()
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write("# Cost of TrainingSanityChecks and LRMonitor on a digits fit\n\n")
            f.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
