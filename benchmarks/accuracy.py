"""Accuracy study on the embedded digits: LR schedules and mixing, at equal epoch budgets.

    python benchmarks/accuracy.py            # the full study (about 17 minutes on 2 CPU cores)
    python benchmarks/accuracy.py --quick    # 1 seed, tiny budgets: a smoke run of seconds

On :class:`~lightning_recipes.DigitsDataModule` (1,797 real 8x8 digits; 1,257 for training,
180 for validation, 360 for testing), with the SmallCNN backbone, SGD with Nesterov momentum
and weight decay 5e-4 (not on norms and biases) everywhere:

1. **Tuning.** For each schedule, a grid of learning rates (``--lr-grid``) is tried at one
   budget (``--tune-epochs``) with ``--tune-seeds`` seeds (seeds not used later) on the clean
   training set; the rate with the best mean *validation* accuracy (ties: lower validation
   loss) is kept for every run of that schedule. The test set is never used to choose.
2. **Schedules** (clean, full training set, no mixing): OneCycle
   (:class:`~lightning_recipes.ImageClassifier`, peak at the tuned rate) against a constant
   rate and against linear warm-up (the first 10% of the steps, from 0) then cosine decay to 0,
   both plain ``pl.LightningModule`` wrappers of the same backbone and loss.
3. **Mixing** (OneCycle at its tuned rate, every callback at its defaults: ``alpha=1``, every
   batch mixed): none against MixUp, CutMix, FMix and RandomMix (MixUp or CutMix, half each),
   per batch and per sample (``--mixers``), on the clean full training set; and none against
   the four per batch (``--hard-mixers``) on harder variants (``--conditions``): a
   stratified 25% and 10% of the training set (batch 16 instead of 64, so that an epoch
   still has several steps), and 20% of the training labels flipped to another class.
   Subsets and noisy labels are drawn from each run's seed; validation and test sets are
   never touched.

Every configuration runs at each budget (``--budgets``, in epochs) with ``--seeds`` seeds;
the seed sets the initialisation, the data order, the mixing and the subset / noise. The
final weights are scored on the test set: accuracy, cross-entropy loss and the expected
calibration error (``torchmetrics`` ``MulticlassCalibrationError``, 15 bins, L1). The
script prints markdown tables (mean +- standard deviation over the seeds) and writes
``accuracy.png`` (test accuracy against budget) and ``accuracy.json`` (every run) to
``--output-dir``. Fits run in ``--workers`` processes with one torch thread each.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SCHEDULES = ("onecycle", "constant", "cosine")
MIXERS = (
    "none",
    "mixup",
    "mixup/sample",
    "cutmix",
    "cutmix/sample",
    "fmix",
    "fmix/sample",
    "randommix",
    "randommix/sample",
)
# name -> (fraction of the training set kept, fraction of training labels flipped)
CONDITIONS = {
    "full": (1.0, 0.0),
    "25%": (0.25, 0.0),
    "10%": (0.10, 0.0),
    "noise20": (1.0, 0.2),
}
NUM_CLASSES = 10
WARMUP_FRACTION = 0.1
ECE_BINS = 15
FULL = {
    "budgets": [2, 5, 15],
    "seeds": 5,
    "lr_grid": [0.03, 0.1, 0.3, 1.0],
    "tune_epochs": 5,
    "tune_seeds": 2,
    "conditions": ["full", "25%", "10%", "noise20"],
    "mixers": list(MIXERS),
    "hard_mixers": ["none", "mixup", "cutmix", "fmix", "randommix"],
}
QUICK = {
    "budgets": [1, 2],
    "seeds": 1,
    "lr_grid": [0.1, 0.3],
    "tune_epochs": 1,
    "tune_seeds": 1,
    "conditions": ["full", "10%", "noise20"],
    "mixers": ["none", "mixup/sample"],
    "hard_mixers": ["none", "cutmix"],
}
TUNE_SEED_OFFSET = 1000  # tuning seeds are 1000, 1001, ...: never an evaluation seed


# --------------------------------------------------------------------------- data and models


def _data_module(condition: str, seed: int) -> Any:
    """The digits module; for a harder condition, its training split subsampled / relabelled."""
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    from lightning_recipes import DigitsDataModule

    fraction, noise = CONDITIONS[condition]
    dm = DigitsDataModule(batch_size=64 if fraction == 1.0 else 16, seed=0)
    dm.setup("fit")
    if fraction == 1.0 and noise == 0.0:
        return dm
    x, y = dm._splits["train"].tensors
    rng = np.random.default_rng([seed, 7])
    labels = y.numpy()
    if fraction < 1.0:
        # Stratified: the same fraction of every class, so a class never vanishes.
        keep = np.concatenate(
            [
                rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False)
                for idx in (np.flatnonzero(labels == c) for c in range(NUM_CLASSES))
            ]
        )
        keep.sort()
        x, labels = x[torch.from_numpy(keep)], labels[keep]
    labels = labels.copy()
    if noise > 0.0:
        flip = rng.choice(len(labels), size=round(noise * len(labels)), replace=False)
        # A shift of 1..9 modulo 10: the new label is never the true one.
        labels[flip] = (labels[flip] + rng.integers(1, NUM_CLASSES, size=len(flip))) % NUM_CLASSES
    dm._splits["train"] = TensorDataset(x.contiguous(), torch.from_numpy(labels))
    return dm


def _baseline(schedule: str, lr: float) -> Any:
    """A constant-LR or warm-up + cosine classifier: the same backbone, loss and optimizer."""
    import lightning.pytorch as pl
    import torch
    import torch.nn.functional as F

    from lightning_recipes.backbones import build_backbone

    class Baseline(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_backbone("small_cnn", NUM_CLASSES, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self) -> Any:
            decay = [p for p in self.parameters() if p.ndim > 1]
            no_decay = [p for p in self.parameters() if p.ndim <= 1]
            optimizer = torch.optim.SGD(
                [
                    {"params": decay, "weight_decay": 5e-4},
                    {"params": no_decay, "weight_decay": 0.0},
                ],
                lr=lr,
                momentum=0.9,
                nesterov=True,
            )
            if schedule == "constant":
                return optimizer
            total = int(self.trainer.estimated_stepping_batches)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, functools.partial(warmup_cosine, total=total)
            )
            return [optimizer], [{"scheduler": scheduler, "interval": "step"}]

    return Baseline()


def warmup_cosine(step: int, total: int) -> float:
    """The LR factor of optimizer step ``step`` of ``total``: linear warm-up, then cosine to 0.

    The warm-up takes the first ``WARMUP_FRACTION`` of the steps (at least one) and reaches 1
    on its last step; the cosine starts at 1 on the next and would reach 0 one step after the
    last.
    """
    warmup = max(1, round(WARMUP_FRACTION * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _mixer(name: str) -> Any:
    from lightning_recipes import CutMix, FMix, MixUp, RandomMix

    if name == "none":
        return None
    method, _, mode = name.partition("/")
    kinds = {"mixup": MixUp, "cutmix": CutMix, "fmix": FMix, "randommix": RandomMix}
    return kinds[method](per_sample=mode == "sample", num_classes=NUM_CLASSES)


def _scores(model: Any, x: Any, y: Any) -> dict[str, float]:
    import torch
    import torch.nn.functional as F
    from torchmetrics.functional.classification import multiclass_calibration_error

    model.eval()
    with torch.no_grad():
        logits = model(x)
    probs = logits.softmax(dim=1)
    return {
        "acc": float((logits.argmax(dim=1) == y).float().mean()),
        # Mean top-class probability: above "acc" is over-confidence, below under-confidence.
        "conf": float(probs.max(dim=1).values.mean()),
        "loss": float(F.cross_entropy(logits, y)),
        "ece": float(
            multiclass_calibration_error(probs, y, NUM_CLASSES, n_bins=ECE_BINS, norm="l1")
        ),
    }


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration and score its final weights on ``spec["split"]``."""
    import lightning.pytorch as pl

    from lightning_recipes import ImageClassifier

    start = time.perf_counter()
    pl.seed_everything(spec["seed"], verbose=False)
    dm = _data_module(spec["condition"], spec["seed"])
    if spec["schedule"] == "onecycle":
        model = ImageClassifier(num_classes=NUM_CLASSES, in_channels=1, max_lr=spec["lr"])
    else:
        model = _baseline(spec["schedule"], spec["lr"])
    mixer = _mixer(spec["mixer"])
    trainer = pl.Trainer(
        max_epochs=spec["epochs"],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[mixer] if mixer is not None else [],
    )
    trainer.fit(model, datamodule=dm)
    x, y = dm._splits[spec["split"]].tensors
    return {**spec, **_scores(model, x, y), "seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------- running


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    _quiet()


def _cost(spec: dict[str, Any]) -> float:
    fraction, _ = CONDITIONS[spec["condition"]]
    mix = 1.2 if spec["mixer"].endswith("/sample") else 1.0
    return 2.0 + spec["epochs"] * max(fraction, 0.35) * mix  # a fit's fixed cost, then epochs


def run_all(specs: list[dict[str, Any]], workers: int, label: str) -> list[dict[str, Any]]:
    """Run ``specs`` (largest first, to balance the workers); progress lines on stderr."""
    order = sorted(specs, key=_cost, reverse=True)
    results: list[dict[str, Any]] = []
    start = time.perf_counter()

    def progress(result: dict[str, Any]) -> None:
        results.append(result)
        done = len(results)
        if done == len(order) or done % max(1, len(order) // 10) == 0:
            print(
                f"[{label}] {done}/{len(order)} fits, {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    if workers == 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _quiet()
            for spec in order:
                progress(run_one(spec))
        finally:
            torch.set_num_threads(threads)
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
            for result in pool.map(run_one, order):
                progress(result)
    return results


def _tune(args: argparse.Namespace) -> tuple[dict[str, float], list[dict[str, Any]]]:
    specs = [
        {
            "stage": "tune",
            "condition": "full",
            "schedule": schedule,
            "mixer": "none",
            "lr": lr,
            "epochs": args.tune_epochs,
            "seed": TUNE_SEED_OFFSET + s,
            "split": "val",
        }
        for schedule in SCHEDULES
        for lr in args.lr_grid
        for s in range(args.tune_seeds)
    ]
    results = run_all(specs, args.workers, "tuning")
    best: dict[str, float] = {}
    for schedule in SCHEDULES:

        def key(lr: float, schedule: str = schedule) -> tuple[float, float]:
            runs = [r for r in results if r["schedule"] == schedule and r["lr"] == lr]
            loss = statistics.fmean(r["loss"] for r in runs)
            return (
                statistics.fmean(r["acc"] for r in runs),
                -loss if math.isfinite(loss) else -1e9,
            )

        best[schedule] = max(args.lr_grid, key=key)
    return best, results


def _study_specs(args: argparse.Namespace, lrs: dict[str, float]) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    for epochs in args.budgets:
        for seed in range(args.seeds):
            common = {"stage": "test", "epochs": epochs, "seed": seed, "split": "test"}
            for schedule in SCHEDULES:
                specs.append(
                    {
                        **common,
                        "condition": "full",
                        "schedule": schedule,
                        "mixer": "none",
                        "lr": lrs[schedule],
                    }
                )
            for condition in args.conditions:
                for mixer in args.mixers if condition == "full" else args.hard_mixers:
                    if condition == "full" and mixer == "none":
                        continue  # the OneCycle run above
                    specs.append(
                        {
                            **common,
                            "condition": condition,
                            "schedule": "onecycle",
                            "mixer": mixer,
                            "lr": lrs["onecycle"],
                        }
                    )
    return specs


# --------------------------------------------------------------------------- reporting


def _rows(results: list[dict[str, Any]], conditions: Sequence[str]) -> list[tuple[str, str, str]]:
    """(condition, schedule, mixer) of every table row, in reading order."""
    rows = [("full", s, "none") for s in SCHEDULES]
    for condition in conditions:
        rows += [(condition, "onecycle", m) for m in MIXERS if (condition, m) != ("full", "none")]
    present = {(r["condition"], r["schedule"], r["mixer"]) for r in results}
    return [row for row in rows if row in present]


def summarise(results: list[dict[str, Any]], conditions: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and standard deviation over the seeds of each (row, budget)."""
    summary = []
    budgets = sorted({r["epochs"] for r in results})
    for condition, schedule, mixer in _rows(results, conditions):
        for epochs in budgets:
            runs = [
                r
                for r in results
                if (r["condition"], r["schedule"], r["mixer"], r["epochs"])
                == (condition, schedule, mixer, epochs)
            ]
            if not runs:
                continue
            entry: dict[str, Any] = {
                "condition": condition,
                "schedule": schedule,
                "mixer": mixer,
                "epochs": epochs,
                "n": len(runs),
            }
            for metric in ("acc", "loss", "ece"):
                values = [r[metric] for r in runs]
                entry[metric] = statistics.fmean(values)
                entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            summary.append(entry)
    return summary


def _label(condition: str, schedule: str, mixer: str) -> str:
    if mixer == "none":
        return f"{schedule}, no mixing"
    method, _, mode = mixer.partition("/")
    return f"{schedule} + {method} per {mode or 'batch'}"


def tables(summary: list[dict[str, Any]], lrs: dict[str, float]) -> str:
    """Markdown: test accuracy (%), test loss and ECE (%), each mean +- std, rows by budget."""
    budgets = sorted({e["epochs"] for e in summary})
    keys = list(dict.fromkeys((e["condition"], e["schedule"], e["mixer"]) for e in summary))
    by = {(e["condition"], e["schedule"], e["mixer"], e["epochs"]): e for e in summary}
    n = max((e["n"] for e in summary), default=0)
    out = []
    for metric, title, scale, digits in (
        ("acc", "test accuracy (%)", 100.0, 2),
        ("loss", "test loss (cross entropy)", 1.0, 3),
        ("ece", "test expected calibration error (%, 15 bins)", 100.0, 2),
    ):
        head = " | ".join(f"{b} epochs" for b in budgets)
        out.append(f"**{title}**, mean +- std over {n} seeds\n")
        out.append(f"| data | method | {head} |")
        out.append("|---|---|" + "---|" * len(budgets))
        for condition, schedule, mixer in keys:
            cells = []
            for b in budgets:
                e = by.get((condition, schedule, mixer, b))
                if e is None:
                    cells.append("-")
                    continue
                mean, std = scale * e[metric], scale * e[f"{metric}_std"]
                cells.append(f"{mean:.{digits}f} +- {std:.{digits}f}")
            out.append(
                f"| {condition} | {_label(condition, schedule, mixer)} | {' | '.join(cells)} |"
            )
        out.append("")
    out.append(
        "Learning rates chosen on the validation set: "
        + ", ".join(f"{s} {lr:g}" for s, lr in lrs.items())
    )
    return "\n".join(out)


_TITLES = {
    "full": "full",
    "25%": "25% of train",
    "10%": "10% of train",
    "noise20": "20% labels flipped",
}
_COLOURS = {
    "onecycle": "black",
    "constant": "tab:purple",
    "cosine": "tab:brown",
    "mixup": "tab:blue",
    "cutmix": "tab:orange",
    "fmix": "tab:green",
    "randommix": "tab:red",
}


def plot(summary: list[dict[str, Any]], conditions: Sequence[str], path: Path) -> None:
    """Test accuracy against budget: schedules on clean data, then mixing per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("full", "schedules (full, clean)", lambda e: e["mixer"] == "none")]
    panels += [
        (c, f"OneCycle + mixing, {_TITLES[c]}", lambda e: e["schedule"] == "onecycle")
        for c in conditions
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, (condition, title, keep) in zip(axes[0], panels, strict=True):
        chosen = [e for e in summary if e["condition"] == condition and keep(e)]
        for key in dict.fromkeys((e["schedule"], e["mixer"]) for e in chosen):
            line = sorted(
                (e for e in chosen if (e["schedule"], e["mixer"]) == key), key=lambda e: e["epochs"]
            )
            label = key[0] if title.startswith("schedules") else key[1]
            ax.errorbar(
                [e["epochs"] for e in line],
                [100 * e["acc"] for e in line],
                yerr=[100 * e["acc_std"] for e in line],
                label=label,
                linestyle="--" if key[1].endswith("/sample") else "-",
                marker="o",
                markersize=3,
                capsize=2,
                linewidth=2 if key == ("onecycle", "none") else 1,
                # One colour per schedule / method in every panel; per sample is dashed.
                color=_COLOURS.get(key[0] if key[1] == "none" else key[1].partition("/")[0]),
            )
        ax.set_xscale("log")
        budgets = sorted({e["epochs"] for e in chosen})
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epochs")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=7)
    if len(panels) > 1:
        axes[0][1].legend(fontsize=6, ncol=1)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, tiny budgets (seconds)")
    parser.add_argument("--budgets", type=int, nargs="+", help="epoch budgets")
    parser.add_argument("--seeds", type=int, help="evaluation seeds per configuration")
    parser.add_argument("--lr-grid", type=float, nargs="+", help="learning rates to tune over")
    parser.add_argument("--tune-epochs", type=int, help="budget of the tuning fits")
    parser.add_argument("--tune-seeds", type=int, help="seeds per tuned learning rate")
    parser.add_argument(
        "--conditions", nargs="+", choices=list(CONDITIONS), help="training sets for mixing"
    )
    parser.add_argument(
        "--mixers", nargs="+", choices=MIXERS, help="mixing compared on the clean full set"
    )
    parser.add_argument(
        "--hard-mixers", nargs="+", choices=MIXERS, help="mixing compared on the harder sets"
    )
    parser.add_argument("--workers", type=int, help="processes (default 2; 1 with --quick)")
    parser.add_argument("--output-dir", type=Path, default=REPO / "benchmarks" / "accuracy_out")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; returns what it writes to ``accuracy.json``."""
    args = _parser().parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.workers is None:
        args.workers = 1 if args.quick else 2
    for name in ("seeds", "tune_epochs", "tune_seeds", "workers"):
        if getattr(args, name) < 1:
            raise ValueError(
                f"`--{name.replace('_', '-')}` must be >= 1, got {getattr(args, name)}"
            )
    if min(args.budgets) < 1:
        raise ValueError(f"`--budgets` must all be >= 1, got {args.budgets}")
    args.output_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    lrs, tuning = _tune(args)
    print(f"tuned learning rates: {lrs}", file=sys.stderr, flush=True)
    results = run_all(_study_specs(args, lrs), args.workers, "study")
    wall = time.perf_counter() - start
    summary = summarise(results, args.conditions)
    text = tables(summary, lrs)
    print(text)
    print(f"\n{len(tuning) + len(results)} fits in {wall / 60:.1f} minutes, {args.workers} workers")

    import lightning
    import torch

    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": {"torch": torch.__version__, "lightning": lightning.__version__},
        "cpu_count": os.cpu_count(),
        "wall_s": wall,
        "tuned_lr": lrs,
        "tuning": tuning,
        "runs": results,
        "summary": summary,
        "table": text,
    }
    (args.output_dir / "accuracy.json").write_text(json.dumps(report, indent=1))
    plot(summary, args.conditions, args.output_dir / "accuracy.png")
    return report


if __name__ == "__main__":
    main()
