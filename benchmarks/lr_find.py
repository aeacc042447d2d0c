"""The LR range test on the digits job: its cost, and the accuracy of each rule's ``max_lr``.

    python benchmarks/lr_find.py                 # 5 seeds, 10 epochs per fit (about 10 minutes)
    python benchmarks/lr_find.py --seeds 2 --epochs 3   # a quick look

For each seed, on the main job's model and data (``configs/digits.yaml``: ImageClassifier,
SmallCNN, SGD, OneCycle, MixUp per sample, batch 64):

(a) times :func:`lightning_recipes.lr_find` (100 sweep steps from 1e-7 to 10, Lightning's
    defaults for the sweep's length) and one training epoch of the same trainer, and reports
    the ratio of the two (wall and process CPU time);
(b) trains ``--epochs`` epochs at the ``max_lr`` of each suggestion rule (``valley``,
    ``steep``, ``minimum``) and at the config's hand-picked value, and reports the test
    accuracy of the final weights: mean and standard deviation over the seeds.

One torch thread (``--threads``), so that the ratios are not moved by other load.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "digits.yaml"
RULES = ("valley", "steep", "minimum")


def _build(seed: int, epochs: int, folder: Path, max_lr: float | None = None) -> tuple[Any, ...]:
    import lightning.pytorch as pl

    from lightning_recipes import DigitsDataModule, ImageClassifier, MixUp

    config = yaml.safe_load(CONFIG.read_text())
    pl.seed_everything(seed, verbose=False)
    model_args = dict(config["model"]["init_args"])
    if max_lr is not None:
        model_args["max_lr"] = max_lr
    dm = DigitsDataModule(**config["data"]["init_args"])
    model = ImageClassifier(num_classes=10, in_channels=1, **model_args)
    mixup_args = next(
        cb["init_args"]
        for cb in config["trainer"]["callbacks"]
        if cb["class_path"].endswith("MixUp")
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        default_root_dir=folder,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[MixUp(**mixup_args)],
    )
    return model, trainer, dm


def _timed(fn: Any) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def run(seeds: int, epochs: int, folder: Path) -> dict[str, Any]:
    from lightning_recipes import lr_find

    ratios_wall, ratios_cpu = [], []
    accuracy: dict[str, list[float]] = {rule: [] for rule in (*RULES, "config")}
    suggestions: dict[str, list[float]] = {rule: [] for rule in RULES}
    for seed in range(seeds):
        model, trainer, dm = _build(seed, 1, folder)
        find_wall, find_cpu, result = _timed(partial(lr_find, model, trainer, dm))
        model, trainer, dm = _build(seed, 1, folder)
        epoch_wall, epoch_cpu, _ = _timed(partial(trainer.fit, model, datamodule=dm))
        ratios_wall.append(find_wall / epoch_wall)
        ratios_cpu.append(find_cpu / epoch_cpu)
        for rule in RULES:
            suggestions[rule].append(result.suggestions[rule])
        for rule in (*RULES, "config"):
            lr = None if rule == "config" else result.suggestions[rule]
            model, trainer, dm = _build(seed, epochs, folder, max_lr=lr)
            trainer.fit(model, datamodule=dm)
            test = trainer.test(model, datamodule=dm, verbose=False)[0]
            accuracy[rule].append(test["test/acc"])
        print(
            f"seed {seed}: lr_find {find_wall:.1f} s, epoch {epoch_wall:.1f} s;"
            f" suggestions {', '.join(f'{r}={suggestions[r][-1]:.3g}' for r in RULES)};"
            f" test acc {', '.join(f'{r}={accuracy[r][-1]:.4f}' for r in accuracy)}",
            flush=True,
        )
    return {
        "ratio_wall": ratios_wall,
        "ratio_cpu": ratios_cpu,
        "accuracy": accuracy,
        "suggestions": suggestions,
    }


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        figures = run(args.seeds, args.epochs, Path(folder))
    print()
    print(f"lr_find (100 steps) / one epoch, {args.seeds} seeds, {args.threads} thread(s):")
    print(f"  wall {_mean_sd(figures['ratio_wall'])}   CPU {_mean_sd(figures['ratio_cpu'])}")
    print()
    print(f"test accuracy after {args.epochs} epochs, mean ± sd over {args.seeds} seeds:")
    print("  max_lr from        suggested max_lr (median)   test accuracy")
    config_lr = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["max_lr"]
    for rule, values in figures["accuracy"].items():
        lr = statistics.median(figures["suggestions"][rule]) if rule in RULES else config_lr
        name = f"{rule} rule" if rule in RULES else "config (hand-picked)"
        print(f"  {name:<20} {lr:<27.3g} {_mean_sd(values)}")


if __name__ == "__main__":
    main()
