"""Two checkouts of the package, timed alternately on the same machine: is a change slower?

Each measurement runs in a fresh process whose ``PYTHONPATH`` starts with one checkout, the two
checkouts alternating, so that the machine's load falls on both alike. Two measurements:

- ``fit``: the Lightning fit of ``main_job.py`` (b), 30 epochs; prints the CPU time of each
  fit and the ratios new / old per pair;
- ``mixing-hook``: the whole ``on_train_batch_start`` of each mixing callback (per batch, or
  per sample with ``--per-sample``) on a 64x3x224x224 batch (``--shape``), as a multiple of
  ``x.clone()`` in the same process (median of 15 calls, median of 3 rounds). The children
  inherit the environment, so ``CACHING_MALLOC``'s variables (``benchmarks/mixing.py``) set on
  the command time them with memory reused;
- ``digits-hook``: the same hooks inside digits fits (``ImageClassifier``, batches of 64
  1x8x8 images, 6 epochs of 19 batches, as ``benchmarks/mixing.py --part fit``), one fit per
  callback: the mean time of a call, in microseconds (the mean: on these batches the
  callbacks draw the mixes of 32 batches in one call, which a median would leave out).
  Between the fit's other work the hook runs with cold caches, about 2-3 times slower than
  called in a loop, and this is the time a fit pays.

Usage (the old code in a worktree of the commit to compare with)::

    git worktree add /tmp/old <commit>
    python benchmarks/compare_code.py fit /tmp/old . --pairs 6
    python benchmarks/compare_code.py mixing-hook /tmp/old . --pairs 3
    python benchmarks/compare_code.py mixing-hook /tmp/old . --per-sample --shape 256x3x32x32
    python benchmarks/compare_code.py mixing-hook /tmp/old . --threads 2
    python benchmarks/compare_code.py digits-hook /tmp/old . --per-sample --pairs 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = """
import importlib.util, json, statistics, sys, time
import torch
root, what, shape, per_sample = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
torch.set_num_threads(int(sys.argv[5]))
import lightning_recipes as lr
assert lr.__file__.startswith(root), lr.__file__

def load(name):
    spec = importlib.util.spec_from_file_location(name, f"{root}/benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

if what == "fit":
    mj = load("main_job")
    wall, cpu, acc = mj.train_lightning(mj._config(), 30, 0)
    print(json.dumps({"cpu": cpu, "acc": acc}))
elif what == "digits-hook":
    # The fit is written out here, not taken from the checkout's benchmarks/mixing.py: an
    # older checkout's scripts may lack it, and both sides must run the same fit.
    import logging, warnings
    import lightning.pytorch as pl
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    def hook_times(callback):
        pl.seed_everything(0, verbose=False)
        times = []
        hook = callback.on_train_batch_start

        def timed(*args, **kwargs):
            start = time.perf_counter()
            hook(*args, **kwargs)
            times.append(time.perf_counter() - start)

        callback.on_train_batch_start = timed
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_epochs=6, limit_train_batches=19,
            limit_val_batches=0, num_sanity_val_steps=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[callback],
        )
        module = lr.ImageClassifier(num_classes=10, in_channels=1, max_lr=0.1)
        trainer.fit(module, lr.DigitsDataModule(batch_size=64))
        return statistics.fmean(times) * 1e6

    names = ["MixUp", "CutMix", "FMix", "RandomMix"]
    hook_times(lr.MixUp())  # warm-up
    print(json.dumps({n: hook_times(getattr(lr, n)(per_sample=per_sample)) for n in names}))
else:
    mb = load("mixing")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(*map(int, shape.split("x")), generator=g)
    y = torch.randint(0, 10, (x.shape[0],), generator=g)
    names = ["MixUp", "CutMix", "FMix", "RandomMix"]
    steps = {
        n: mb.callback_step(getattr(lr, n)(seed=1, per_sample=per_sample), x, y) for n in names
    }

    def median_time(f, n=15):
        for _ in range(3):
            f()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    ratios = {n: [] for n in names}
    for _ in range(3):
        clone = median_time(x.clone)
        for n, f in steps.items():
            ratios[n].append(median_time(f) / clone)
    print(json.dumps({n: statistics.median(v) for n, v in ratios.items()}))
"""


def _run(root: Path, what: str, shape: str, per_sample: bool, threads: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), what, shape, str(int(per_sample)), str(threads)],
        env=env,
        cwd=root,  # `python -c` puts the working folder first on sys.path
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    measured: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["fit", "mixing-hook", "digits-hook"])
    parser.add_argument("old", type=Path, help="checkout of the code before the change")
    parser.add_argument("new", type=Path, help="checkout of the code after it")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads in each child (default 1)"
    )
    parser.add_argument(
        "--shape", default="64x3x224x224", help="`mixing-hook`: the batch, e.g. 256x3x32x32"
    )
    parser.add_argument(
        "--per-sample",
        action="store_true",
        help="`mixing-hook`, `digits-hook`: the hooks with per_sample=True",
    )
    args = parser.parse_args()
    old_root, new_root = args.old.resolve(), args.new.resolve()
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for pair in range(args.pairs):
        # Alternate which side goes first, so neither always follows the other.
        order = [("old", old_root), ("new", new_root)]
        for side, root in order if pair % 2 == 0 else order[::-1]:
            results[side].append(_run(root, args.what, args.shape, args.per_sample, args.threads))
            print(f"pair {pair} {side}: {results[side][-1]}", flush=True)
    if args.what == "fit":
        old = [r["cpu"] for r in results["old"]]
        new = [r["cpu"] for r in results["new"]]
        ratios = [n / o for n, o in zip(new, old, strict=True)]
        print(f"CPU s, median: old {statistics.median(old):.2f}, new {statistics.median(new):.2f}")
        print(
            f"new / old per pair: median {statistics.median(ratios):.3f},"
            f" range {min(ratios):.3f}-{max(ratios):.3f}"
        )
        return
    for name in results["old"][0]:
        old = [r[name] for r in results["old"]]
        new = [r[name] for r in results["new"]]
        if args.what == "digits-hook":
            print(
                f"{name}: us per call in a digits fit, old {min(old):.0f}-{max(old):.0f},"
                f" new {min(new):.0f}-{max(new):.0f}; new / old of the medians"
                f" {statistics.median(new) / statistics.median(old):.2f}"
            )
        else:
            print(
                f"{name}: hook / clone, old {min(old):.2f}-{max(old):.2f},"
                f" new {min(new):.2f}-{max(new):.2f}"
            )


if __name__ == "__main__":
    main()
