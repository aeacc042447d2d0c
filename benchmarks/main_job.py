"""The main job's wall time and accuracy, and Lightning's overhead over a plain PyTorch loop.

    python benchmarks/main_job.py            # prints the table of benchmarks/RESULTS.md

(a) Runs the main job, ``lightning-recipes fit --config configs/digits.yaml``, as a subprocess
    ``--repeats`` times into a temporary folder, and reports the median wall time (imports,
    training, validation, the final test) and the median of the ``test/acc`` it prints.
(b) Trains the same network (the config's ImageClassifier, i.e. SmallCNN), with the same
    parameter groups, optimizer and OneCycle settings, on the same DigitsDataModule loaders
    for the same epochs, twice in this process: with a plain PyTorch loop (``OneCycleLR.step()``
    after every optimizer step, a validation pass after every epoch) and with
    ``Trainer.fit`` + ``OneCycleModule``. Runs alternate between the two; the ratio of the
    medians is the framework overhead (Lightning loops, hooks, logging, torchmetrics), as
    wall time and as process CPU time (less moved by other jobs on a shared machine).

Both parts use the same number of intra-op threads (``--threads``, also passed to the
subprocesses as ``OMP_NUM_THREADS``), so the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "digits.yaml"
COMMAND = "lightning-recipes fit --config configs/digits.yaml"


def run_main_job(folder: Path, threads: int) -> tuple[float, float]:
    """One run of the main job; returns (wall seconds, test accuracy)."""
    command = [
        sys.executable,
        "-m",
        "lightning_recipes",
        "fit",
        "--config",
        str(CONFIG),
        # Only where it writes changes: the runs go to a temporary folder.
        "--trainer.default_root_dir",
        str(folder),
        "--trainer.logger.init_args.save_dir",
        str(folder),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"the main job failed:\n{result.stdout}\n{result.stderr}")
    match = re.search(r"^\s*test/acc: (\d\.\d+)$", result.stdout, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no `test/acc:` line in the output:\n{result.stdout}")
    return wall, float(match[1])


def _config() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(CONFIG.read_text())


def _setup(config: dict[str, Any], seed: int) -> tuple[Any, Any]:
    import lightning.pytorch as pl

    from lightning_recipes import DigitsDataModule, ImageClassifier

    pl.seed_everything(seed, verbose=False)
    dm = DigitsDataModule(**config["data"]["init_args"])
    dm.setup("fit")
    model = ImageClassifier(
        num_classes=dm.num_classes, in_channels=dm.in_channels, **config["model"]["init_args"]
    )
    return dm, model


def train_plain(config: dict[str, Any], epochs: int, seed: int) -> tuple[float, float, float]:
    """Plain PyTorch; returns (wall seconds, CPU seconds, final validation accuracy)."""
    import torch
    import torch.nn.functional as F
    from torch.optim.lr_scheduler import OneCycleLR

    dm, model = _setup(config, seed)
    hp = model.hparams
    net = model.net
    train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()
    start, cpu_start = time.perf_counter(), time.process_time()
    optimizer = model.build_optimizer(model.onecycle_param_groups())
    scheduler = OneCycleLR(
        optimizer,
        max_lr=[group["max_lr"] for group in optimizer.param_groups],
        total_steps=epochs * len(train_loader),
        pct_start=hp.pct_start,
        div_factor=hp.div_factor,
        final_div_factor=hp.final_div_factor,
        three_phase=hp.three_phase,
        anneal_strategy=hp.anneal_strategy,
        cycle_momentum=hp.cycle_momentum,
        base_momentum=hp.base_momentum,
        max_momentum=hp.max_momentum,
    )
    smoothing = hp.label_smoothing
    val_acc = 0.0
    for _ in range(epochs):
        net.train()
        correct = torch.zeros((), dtype=torch.long)
        for x, y in train_loader:
            logits = net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += (logits.detach().argmax(1) == y).sum()  # train accuracy, no sync
        net.eval()
        hits, seen, val_loss = 0, 0, 0.0
        with torch.inference_mode():
            for x, y in val_loader:
                logits = net(x)
                val_loss += F.cross_entropy(logits, y, reduction="sum").item()
                hits += (logits.argmax(1) == y).sum().item()
                seen += len(y)
        val_acc = hits / seen
    return time.perf_counter() - start, time.process_time() - cpu_start, val_acc


def train_lightning(config: dict[str, Any], epochs: int, seed: int) -> tuple[float, float, float]:
    """Trainer + OneCycleModule; returns (wall seconds, CPU seconds, final validation accuracy)."""
    import lightning.pytorch as pl

    dm, model = _setup(config, seed)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=dm)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return wall, cpu, float(trainer.callback_metrics["val/acc"])


def _table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| measurement | median | runs |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--output", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()

    import lightning
    import torch

    # Lightning's per-fit banners and hints would bury the results.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    torch.set_num_threads(args.threads)
    config = _config()
    epochs = args.epochs or config["trainer"]["max_epochs"]
    fmt = ", ".join

    # (a) the main job, as a user runs it
    walls, accs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            wall, acc = run_main_job(Path(tmp) / f"run{i}", args.threads)
            walls.append(wall)
            accs.append(acc)
            print(f"main job run {i}: {wall:.1f} s, test/acc {acc:.4f}", flush=True)

    # (b) framework overhead, alternating the two so that load drift hits both alike
    plain, light = [], []
    for i in range(args.repeats):
        plain.append(train_plain(config, epochs, seed=i))
        light.append(train_lightning(config, epochs, seed=i))
        print(
            f"overhead run {i}: plain {plain[-1][0]:.1f} s (val/acc {plain[-1][2]:.4f}),"
            f" lightning {light[-1][0]:.1f} s (val/acc {light[-1][2]:.4f})",
            flush=True,
        )
    plain_s = statistics.median(run[0] for run in plain)
    light_s = statistics.median(run[0] for run in light)
    plain_cpu = statistics.median(run[1] for run in plain)
    light_cpu = statistics.median(run[1] for run in light)

    def ratio(column: int, pick: Any) -> str:
        return f"{pick(r[column] for r in light) / pick(r[column] for r in plain):.2f}"

    def row(name: str, values: list[float], spec: str, unit: str = "") -> tuple[str, str, str]:
        median = statistics.median(values)
        return name, f"{median:{spec}}{unit}", fmt(f"{v:{spec}}" for v in values)

    rows = [
        row("(a) main job wall time", walls, ".1f", " s"),
        row("(a) main job test/acc", accs, ".4f"),
        row("(b) plain PyTorch loop, wall", [run[0] for run in plain], ".2f", " s"),
        row("(b) Lightning + OneCycleModule, wall", [run[0] for run in light], ".2f", " s"),
        ("(b) **ratio lightning / plain, wall**", f"**{light_s / plain_s:.2f}**", "medians"),
        ("(b) ratio lightning / plain, wall", ratio(0, min), "minima"),
        row("(b) plain PyTorch loop, CPU", [run[1] for run in plain], ".2f", " s"),
        row("(b) Lightning + OneCycleModule, CPU", [run[1] for run in light], ".2f", " s"),
        ("(b) ratio lightning / plain, CPU", f"{light_cpu / plain_cpu:.2f}", "medians"),
        ("(b) ratio lightning / plain, CPU", ratio(1, min), "minima"),
        row("(b) plain final val/acc", [run[2] for run in plain], ".4f"),
        row("(b) Lightning final val/acc", [run[2] for run in light], ".4f"),
    ]
    report = "\n".join(
        [
            "# Main job benchmark",
            "",
            "Produced by `python benchmarks/main_job.py"
            + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
            + (f" --threads {args.threads}" if args.threads != 1 else "")
            + (f" --epochs {args.epochs}" if args.epochs else "")
            + "`.",
            "",
            f"- (a) `{COMMAND}`, {args.repeats} runs as subprocesses (wall time includes",
            "  imports, training, validation and the final test).",
            f"- (b) the same SmallCNN, OneCycle settings and DigitsDataModule loaders, {epochs}"
            " epochs, in one process: a plain PyTorch loop vs `Trainer.fit` (no progress bar,"
            " logger or checkpointing); medians of the alternating runs.",
            f"- CPU: {os.cpu_count()} cores ({platform.processor() or platform.machine()}),"
            f" torch {torch.__version__}, lightning {lightning.__version__},"
            f" {args.threads} intra-op thread(s) everywhere. The machine may be shared: compare"
            " ratios within one run, not absolute times across runs; the CPU-time ratio (one"
            " thread, process time) and the ratio of minima are the least moved by other load.",
            "",
            _table(rows),
            "",
        ]
    )
    print()
    print(report)
    if args.output is not None:
        args.output.write_text(report)
        print(f"written to {args.output}")


if __name__ == "__main__":
    main()
