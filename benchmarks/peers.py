"""Peers side by side: the digits job with timm's and torchvision's mixing and a fastai-style
OneCycle, wired by hand into Lightning, against this package's callbacks and `OneCycleModule`.

The job is the network of `configs/digits.yaml` (`ImageClassifier`, `backbone="small_cnn"`,
SGD with Nesterov momentum, OneCycle to `max_lr=0.2`) on `DigitsDataModule` (batch size 64).
Every variant of a group trains the same epochs, batches, seeds and data order; the mixing
variants all draw one lam per batch (MixUp alpha 0.2, CutMix alpha 1.0, probability 1, no
label smoothing) and train on soft targets with `F.cross_entropy`.

- MixUp / CutMix: ours (`MixUp` / `CutMix` callbacks) against timm's `Mixup` (`mode="batch"`)
  called in `training_step`, and torchvision's v2 `MixUp` / `CutMix` called in the training
  loader's `collate_fn` and, separately, in `training_step`: the two places their
  documentation shows.
- OneCycle: a `OneCycleModule` subclass against a plain `LightningModule` whose
  `configure_optimizers` builds torch's `OneCycleLR` with `"interval": "step"` (fastai's
  schedule stepped per batch). The LR and momentum of every optimizer step must be equal.

Printed: test accuracy (mean +- sd over the seeds), the wall and CPU time of `Trainer.fit` as
ratios to ours (median and range over the seeds of the ratio within a seed; the variants of a
seed run back to back in an order rotated each seed, so load on the machine falls on them
alike; with one torch thread, CPU time is the figure least moved by other processes), and the
lines of user code each variant needs, counted here from the source of the functions and
classes below that hold it.

    python benchmarks/peers.py            # 5 seeds x 30 epochs, as configs/digits.yaml: 50 fits
    python benchmarks/peers.py --quick    # 1 seed, 1 epoch of 8 batches: a smoke run
"""

from __future__ import annotations

import argparse
import ast
import inspect
import logging
import statistics
import textwrap
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from timm.data import Mixup
from torch import Tensor
from torch.optim import SGD
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader, default_collate
from torchvision.transforms import v2
from typing_extensions import override

from lightning_recipes import CutMix, DigitsDataModule, ImageClassifier, MixUp, OneCycleModule
from lightning_recipes.backbones import build_backbone

MIXUP_ALPHA = 0.2
CUTMIX_ALPHA = 1.0
MAX_LR = 0.2
CLASSES = 10
# The model of configs/digits.yaml; OneCycleModule's defaults give the rest of the schedule
# (pct_start 0.25, div_factor 25, final_div_factor 1e4, momentum 0.85-0.95, cosine).
NET = {
    "backbone": "small_cnn",
    "num_classes": CLASSES,
    "in_channels": 1,
    "max_lr": MAX_LR,
    "optimizer": "sgd",
    "weight_decay": 5e-4,
    "label_smoothing": 0.0,
}


# --------------------------------------------------------------------------- user code
# What a user writes for each variant, and nothing else: its lines are counted by
# `user_lines`. Decorators, docstrings, comments and blank lines are not counted.


def ours_mixup() -> list[Callback]:
    return [MixUp(alpha=MIXUP_ALPHA)]


def ours_cutmix() -> list[Callback]:
    return [CutMix(alpha=CUTMIX_ALPHA)]


def timm_mixup() -> Mixup:
    return Mixup(
        mixup_alpha=MIXUP_ALPHA, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=CLASSES
    )


def timm_cutmix() -> Mixup:
    return Mixup(
        mixup_alpha=0.0, cutmix_alpha=CUTMIX_ALPHA, label_smoothing=0.0, num_classes=CLASSES
    )


class TimmMixing(ImageClassifier):
    """timm's `Mixup` (one lam per batch by default) applied in `training_step`."""

    def __init__(self, mixing: Mixup, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mixing = mixing

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = self.mixing(*batch)  # timm needs an even batch: the loader drops the last
        return super().training_step([x, y], batch_idx)


def torchvision_mixup() -> v2.Transform:
    return v2.MixUp(alpha=MIXUP_ALPHA, num_classes=CLASSES)


def torchvision_cutmix() -> v2.Transform:
    return v2.CutMix(alpha=CUTMIX_ALPHA, num_classes=CLASSES)


class TorchvisionMixing(DigitsDataModule):
    """torchvision's v2 `MixUp` / `CutMix` in the training loader's `collate_fn`."""

    def __init__(self, mixing: v2.Transform, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mixing = mixing

    @override
    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()
        loader.collate_fn = lambda samples: self.mixing(*default_collate(samples))
        return loader


class TorchvisionStep(ImageClassifier):
    """torchvision's v2 `MixUp` / `CutMix` applied in `training_step`."""

    def __init__(self, mixing: v2.Transform, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mixing = mixing

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return super().training_step(list(self.mixing(*batch)), batch_idx)


class _DigitsSteps(pl.LightningModule):
    """The steps both OneCycle variants share (not counted): the SmallCNN on soft or hard
    targets, test accuracy logged as `test/acc`."""

    def _build(self) -> None:
        self.net = build_backbone("small_cnn", CLASSES, 1)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test/acc", (self(x).argmax(dim=1) == y).float().mean(), batch_size=len(y))


class OursOneCycle(_DigitsSteps, OneCycleModule):
    def __init__(self) -> None:
        super().__init__(max_lr=MAX_LR, weight_decay=5e-4)
        self._build()


class FastaiOneCycle(_DigitsSteps):
    def __init__(self) -> None:
        super().__init__()
        self._build()

    @override
    def configure_optimizers(self) -> Any:
        # No weight decay on biases and norm parameters (fastai's `bn_wd=False`), as ours.
        decay = [p for p in self.parameters() if p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay}]
        optimizer = SGD(groups, lr=MAX_LR, momentum=0.95, nesterov=True)
        scheduler = OneCycleLR(
            optimizer,
            max_lr=MAX_LR,
            total_steps=int(self.trainer.estimated_stepping_batches),
            pct_start=0.25,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


# --------------------------------------------------------------------------- harness


def user_lines(*objects: Any) -> int:
    """Non-blank source lines of ``objects`` that are not comments, docstrings or decorators."""
    total = 0
    for obj in objects:
        source = textwrap.dedent(inspect.getsource(obj))
        docstrings: set[int] = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    docstrings.update(range(first.lineno, (first.end_lineno or 0) + 1))
        for number, line in enumerate(source.splitlines(), start=1):
            text = line.strip()
            if text and not text.startswith(("#", "@")) and number not in docstrings:
                total += 1
    return total


Build = Callable[[], tuple[pl.LightningModule, pl.LightningDataModule, list[Callback]]]


@dataclass
class Variant:
    group: str
    name: str
    ours: bool
    build: Build
    code: tuple[Any, ...]
    accuracy: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    steps: list[list[tuple[float, ...]]] = field(default_factory=list)


def variants() -> list[Variant]:
    def data() -> DigitsDataModule:
        return DigitsDataModule(batch_size=64, seed=0)

    return [
        Variant(
            "MixUp",
            "ours: `MixUp` callback",
            True,
            lambda: (ImageClassifier(**NET), data(), ours_mixup()),
            (ours_mixup,),
        ),
        Variant(
            "MixUp",
            'timm `Mixup(mode="batch")` in `training_step`',
            False,
            lambda: (TimmMixing(timm_mixup(), **NET), data(), []),
            (timm_mixup, TimmMixing),
        ),
        Variant(
            "MixUp",
            "torchvision v2 `MixUp` in `collate_fn`",
            False,
            lambda: (
                ImageClassifier(**NET),
                TorchvisionMixing(torchvision_mixup(), batch_size=64, seed=0),
                [],
            ),
            (torchvision_mixup, TorchvisionMixing),
        ),
        Variant(
            "MixUp",
            "torchvision v2 `MixUp` in `training_step`",
            False,
            lambda: (TorchvisionStep(torchvision_mixup(), **NET), data(), []),
            (torchvision_mixup, TorchvisionStep),
        ),
        Variant(
            "CutMix",
            "ours: `CutMix` callback",
            True,
            lambda: (ImageClassifier(**NET), data(), ours_cutmix()),
            (ours_cutmix,),
        ),
        Variant(
            "CutMix",
            'timm `Mixup(mode="batch")` in `training_step`',
            False,
            lambda: (TimmMixing(timm_cutmix(), **NET), data(), []),
            (timm_cutmix, TimmMixing),
        ),
        Variant(
            "CutMix",
            "torchvision v2 `CutMix` in `collate_fn`",
            False,
            lambda: (
                ImageClassifier(**NET),
                TorchvisionMixing(torchvision_cutmix(), batch_size=64, seed=0),
                [],
            ),
            (torchvision_cutmix, TorchvisionMixing),
        ),
        Variant(
            "CutMix",
            "torchvision v2 `CutMix` in `training_step`",
            False,
            lambda: (TorchvisionStep(torchvision_cutmix(), **NET), data(), []),
            (torchvision_cutmix, TorchvisionStep),
        ),
        Variant(
            "OneCycle",
            "ours: `OneCycleModule` subclass",
            True,
            lambda: (OursOneCycle(), data(), []),
            (OursOneCycle,),
        ),
        Variant(
            "OneCycle",
            'fastai-style: torch `OneCycleLR`, `"interval": "step"`',
            False,
            lambda: (FastaiOneCycle(), data(), []),
            (FastaiOneCycle,),
        ),
    ]


class StepTrace(Callback):
    """The LR and momentum of every param group at every optimizer step, as the step uses them."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, ...]] = []

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        self.steps.append(
            tuple(v for g in optimizer.param_groups for v in (g["lr"], g["momentum"]))
        )


def run_one(variant: Variant, seed: int, epochs: int, batches: int | None) -> None:
    pl.seed_everything(seed, verbose=False)
    model, data, callbacks = variant.build()
    trace = StepTrace()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, trace],
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, data)
    variant.wall.append(time.perf_counter() - start)
    variant.cpu.append(time.process_time() - cpu_start)
    variant.accuracy.append(float(trainer.test(model, data, verbose=False)[0]["test/acc"]))
    if len(trace.steps) != trainer.estimated_stepping_batches:
        raise RuntimeError(
            f"{variant.name}: {len(trace.steps)} optimizer steps traced, expected"
            f" {trainer.estimated_stepping_batches}"
        )
    variant.steps.append(trace.steps)


def run(
    seeds: int, epochs: int, batches: int | None, log: Callable[[str], None] = print
) -> list[Variant]:
    """Fits every variant with every seed; the order of the variants rotates with the seed."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    table = variants()
    run_one(variants()[0], 0, 1, 2)  # warm-up: imports, first-call allocations
    for seed in range(seeds):
        shift = seed % len(table)
        for variant in table[shift:] + table[:shift]:
            run_one(variant, seed, epochs, batches)
            log(
                f"seed {seed} {variant.group:8} {variant.name:55} acc {variant.accuracy[-1]:.4f}"
                f"  wall {variant.wall[-1]:.2f} s  CPU {variant.cpu[-1]:.2f} s"
            )
    return table


def schedule_mismatch(table: list[Variant]) -> str | None:
    """Where the fastai-style OneCycle's LR or momentum first differs from ours, or ``None``."""
    ours, fastai = (v for v in table if v.group == "OneCycle")
    for seed, (a, b) in enumerate(zip(ours.steps, fastai.steps, strict=True)):
        if len(a) != len(b):
            return f"seed {seed}: {len(b)} optimizer steps against {len(a)}"
        for step, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return f"seed {seed}, optimizer step {step}: (lr, momentum) {y} against {x}"
    return None


def report(table: list[Variant], seeds: int, epochs: int, batches: int | None) -> str:
    def spread(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.2f} +- {100 * sd:.2f}"

    def middle(ratios: list[float]) -> str:
        if len(ratios) == 1:
            return f"{ratios[0]:.2f}"
        return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"

    rows = []
    for variant in table:
        base = next(v for v in table if v.group == variant.group and v.ours)
        ratios = [w / b for w, b in zip(variant.wall, base.wall, strict=True)]
        cpu_ratios = [c / b for c, b in zip(variant.cpu, base.cpu, strict=True)]
        rows.append(
            f"| {variant.group} | {variant.name} | {spread(variant.accuracy)} |"
            f" {statistics.median(variant.wall):.2f} | {middle(ratios)} | {middle(cpu_ratios)} |"
            f" {user_lines(*variant.code)} |"
        )
    steps = len(table[-1].steps[0])
    mismatch = schedule_mismatch(table)
    check = (
        f"equal at all {steps} optimizer steps of each of the {seeds} seed(s)"
        if mismatch is None
        else f"**differ**: {mismatch}"
    )
    length = f"{epochs} epoch(s)" + ("" if batches is None else f" of {batches} batches")
    return "\n".join(
        [
            f"torch {torch.__version__}, lightning {pl.__version__}, {torch.get_num_threads()}"
            f" thread(s); {seeds} seed(s), {length} of 64 per fit",
            "",
            "| group | variant | test accuracy % (mean +- sd) | fit wall s (median) |"
            " wall / ours, median (range) | CPU time / ours, median (range) |"
            " lines of user code |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "OneCycle, fastai-style against `OneCycleModule`: the LR and momentum of every"
            f" param group {check}.",
        ]
    )


def main(argv: list[str] | None = None) -> list[Variant]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch of 8 batches")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    # One thread: on a shared machine more threads than idle cores skew the wall ratios.
    torch.set_num_threads(1)
    seeds, epochs, batches = (1, 1, 8) if args.quick else (args.seeds, args.epochs, None)
    table = run(seeds, epochs, batches)
    print(report(table, seeds, epochs, batches))
    mismatch = schedule_mismatch(table)
    if mismatch is not None:
        raise SystemExit(f"the fastai-style OneCycle differs from OneCycleModule: {mismatch}")
    return table


if __name__ == "__main__":
    main()
