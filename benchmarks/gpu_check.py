"""One-GPU check: mixed-precision speed, mixing-callback cost and syncs, memory, loss scaling.

On one CUDA GPU, for torchvision ResNets (random weights, nothing downloaded) in
``ImageClassifier`` (channels-last) on synthetic batches of random tensors:

1. throughput of ``Trainer.fit`` under ``"32-true"``, ``"16-mixed"`` and ``"bf16-mixed"``, over
   steady-state steps only (warm-up steps are not timed), and its ratio to ``"32-true"``;
2. the cost of each mixing callback (MixUp, CutMix, FMix, RandomMix; per batch and per
   sample), three ways:

   a. GPU time: the execution time of ``on_train_batch_start``'s kernels (default and
      ``inplace=True``), on a batch of each fit's shape. A workload of float32 matmuls (about
      15 ms) is enqueued first, then a CUDA event, the call, and a second event: the host
      launches the hook's kernels while the GPU is still busy, so they queue behind the
      workload and the events enclose their execution back to back, without the host's
      launch gaps. Each call records whether the GPU was still on the workload when the call
      returned (``launches_hidden``; if not, that call's figure is an upper bound), and the
      workload's time in the call beside its time alone. Also printed as a share of the
      ``bf16-mixed`` fit's median step (``GPU/step``);
   b. CPU time: ``time.perf_counter`` around the same call; the stream is busy, so the call
      never waits for the GPU and this is the host's own work (Python, launches, allocator);
   c. fit cost: the steady-state step time of a ``bf16-mixed`` ``Trainer.fit`` with the
      callback against without it (default ``inplace=False``). One fit per size alternates
      windows of steps without any mixing callback and with each callback in turn (two
      rounds, the second in reverse order); each window with a callback is compared with the
      window just before it, at ResNet-50 and ResNet-18 on 128x3x224x224, then ResNet-18 on
      256x3x32x32 unless its estimated time would pass the budget. This is what a user pays:
      the hook's host time where it does not overlap the GPU's work, its kernels, and the
      soft-target loss. The targets (under 1% of a step per batch, under 3% per sample) are
      judged on this figure; the spread between windows without a callback is printed as the
      noise floor;

3. that no mixing callback synchronises the host with the device
   (``torch.cuda.set_sync_debug_mode("error")`` around the hook);
4. the peak GPU memory of each precision, and the syncs of one whole training step (with
   ``MixUp`` in the fit) and where they come from;
5. under ``"16-mixed"`` with a large initial loss scale (to provoke overflow skips), the loss-scale
   trajectory, the skipped steps (``LossScaleMonitor``) and that the OneCycle scheduler stepped
   exactly once per real parameter update (``on_skipped_step="hold"``);
6. the compiled guard and blend (``lightning_recipes.functional._fused``) on a 128x3x224x224
   batch, per kind of weight map (a float, a ratio per sample, a mask) and dtype: whether it
   was chosen (its first result equal to the torch ops' bit for bit), both paths' GPU time
   beside a clone's, the first call's time (the compilation) and the first call at a smaller
   batch (no recompilation: milliseconds, not seconds);
7. ``lightning-recipes fit --config configs/cifar10.yaml --trainer.precision 16-mixed`` on one
   device with ``FMix(per_sample=True, mask_sampler="fast")`` added, on a CIFAR-10 file of
   random pixels the check writes (in this process, with torchvision's checksums pointed at
   it; ``32-true`` in the dry run).

Without CUDA (``--dry-run``), the GPU time and the compiled blend are skipped with their reason;
the host time, the fit cost and the command's fit run at tiny sizes under ``32-true``.

Prints a plain-text table and writes every figure and setting to ``--output`` (JSON). Each
section (and each fit) runs on its own: a failure is recorded and the rest still runs.

    python benchmarks/gpu_check.py                  # one CUDA GPU, a few minutes
    python benchmarks/gpu_check.py --dry-run        # the same code paths on the CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import functools
import gc
import itertools
import json
import logging
import math
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
import torchvision
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader, Dataset

# The script runs from a plain checkout (`python benchmarks/gpu_check.py`) where the package may
# not be installed: the repository root goes first on the path so that this checkout's
# `lightning_recipes` is the one measured.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_recipes.callbacks.loss_scale import LossScaleMonitor
from lightning_recipes.callbacks.mixing import CutMix, FMix, MixUp, RandomMix
from lightning_recipes.classifier import ImageClassifier

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
NUM_CLASSES = 10
TARGET_PER_BATCH = 0.01
TARGET_PER_SAMPLE = 0.03
SCHEDULER_FIRST = "Detected call of `lr_scheduler.step()` before `optimizer.step()`"

MIXERS: dict[str, Callable[..., Callback]] = {
    "MixUp": lambda **kw: MixUp(**kw),
    "CutMix": lambda **kw: CutMix(**kw),
    "FMix": lambda **kw: FMix(**kw),
    "FMix-exact": lambda **kw: FMix(mask_sampler="exact", **kw),
    "RandomMix": lambda **kw: RandomMix({"mixup": 0.3, "cutmix": 0.3, "fmix": 0.4}, **kw),
}
# Per batch, RandomMix pastes a CutMix box in place: its own code path, checked for syncs too.
SYNC_MIXERS: dict[str, Callable[..., Callback]] = {
    **MIXERS,
    "RandomMix cutmix": lambda **kw: RandomMix({"cutmix": 1.0}, **kw),
}


@dataclass
class Size:
    """One model and input size: a torchvision backbone on square RGB images."""

    backbone: str
    image: int
    batch: int

    @property
    def name(self) -> str:
        return f"{self.backbone} {self.batch}x3x{self.image}x{self.image}"


@dataclass
class Settings:
    """Everything a run depends on; written to the JSON as it was used."""

    device: str
    sizes: list[Size]
    warmup_steps: int
    timed_steps: int
    pool_batches: int
    mix_warmup_calls: int
    mix_timed_calls: int
    saturate_ms: float
    fit_cost_sizes: list[Size]
    fit_cost_precision: str
    fit_cost_warmup_steps: int
    fit_cost_settle_steps: int
    fit_cost_window_steps: int
    fit_cost_rounds: int
    fit_start_s: float
    loss_scale_steps: int
    init_scale: float
    max_lr: float
    # None: no budget (the dry run's default, so its outcome never depends on the machine's speed).
    budget_s: float | None
    channels_last: bool = True
    cudnn_benchmark: bool = True
    precisions: tuple[str, ...] = PRECISIONS
    num_classes: int = NUM_CLASSES
    seed: int = 0
    notes: list[str] = field(default_factory=list)


def gpu_settings(budget_s: float) -> Settings:
    return Settings(
        device="cuda",
        sizes=[Size("resnet18", 32, 256), Size("resnet18", 224, 128), Size("resnet50", 224, 128)],
        warmup_steps=20,
        timed_steps=50,
        pool_batches=4,
        mix_warmup_calls=2,
        mix_timed_calls=10,
        # Longer than the slowest hook's host time, so its launches all queue behind it.
        saturate_ms=15.0,
        # In order: a size is skipped when its estimated time would pass the budget.
        fit_cost_sizes=[
            Size("resnet50", 224, 128),
            Size("resnet18", 224, 128),
            Size("resnet18", 32, 256),
        ],
        fit_cost_precision="bf16-mixed",
        fit_cost_warmup_steps=20,
        fit_cost_settle_steps=2,
        fit_cost_window_steps=15,
        fit_cost_rounds=2,
        fit_start_s=10.0,
        loss_scale_steps=300,
        init_scale=2.0**32,
        max_lr=0.05,
        budget_s=budget_s,
    )


def dry_run_settings(budget_s: float | None = None) -> Settings:
    return Settings(
        device="cpu",
        # float16 convolutions have no fast CPU kernels (a ResNet-18 step on 8 images takes
        # seconds), so the CPU run uses torchvision's smallest ShuffleNet: same code paths.
        sizes=[Size("shufflenet_v2_x0_5", 32, 8)],
        # torch's OneCycleLR divides by zero when pct_start * total_steps == 1 (4 steps at 0.25).
        warmup_steps=2,
        timed_steps=3,
        pool_batches=2,
        mix_warmup_calls=1,
        mix_timed_calls=2,
        saturate_ms=0.0,  # no CUDA stream to saturate
        fit_cost_sizes=[Size("shufflenet_v2_x0_5", 32, 8)],
        # bf16 autocast on the CPU only slows the dry run down; the code path is the same.
        fit_cost_precision="32-true",
        fit_cost_warmup_steps=2,
        fit_cost_settle_steps=0,
        fit_cost_window_steps=1,
        fit_cost_rounds=1,
        fit_start_s=0.0,
        loss_scale_steps=12,
        # On the CPU the first float16 steps at 2**16 overflow, later ones fit.
        init_scale=2.0**16,
        max_lr=0.05,
        budget_s=budget_s,
    )


# --------------------------------------------------------------------------- helpers


class _Clock:
    """Progress lines with the time since the start, flushed so a killed run shows its place."""

    def __init__(self, budget_s: float | None) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over_budget(self) -> bool:
        return self.budget_s is not None and self.elapsed() > self.budget_s

    def say(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)


class _SliceBatches(Dataset):
    """Whole batches as slices of a pool of random tensors already on the device.

    Slicing makes neither a copy nor a host-device transfer, so the fit measures the model's
    step and Lightning's loop rather than a data pipeline. (Per-sample indexing and collation of
    a ``TensorDataset`` would cost more than a small model's step on a fast GPU.)
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, steps: int) -> None:
        self.x, self.y, self.batch, self.steps = x, y, batch, steps
        self.pool = x.shape[0] // batch

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        start = (index % self.pool) * self.batch
        return [self.x[start : start + self.batch], self.y[start : start + self.batch]]


def _pool(size: Size, s: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=s.device).manual_seed(s.seed)
    n = size.batch * s.pool_batches
    x = torch.randn(n, 3, size.image, size.image, device=s.device, generator=g)
    y = torch.randint(0, s.num_classes, (n,), device=s.device, generator=g)
    return x, y


def _loader(x: torch.Tensor, y: torch.Tensor, batch: int, steps: int) -> DataLoader:
    return DataLoader(_SliceBatches(x, y, batch, steps), batch_size=None, shuffle=False)


def _precision(precision: str, s: Settings, init_scale: float | None = None) -> dict[str, Any]:
    """Trainer arguments for ``precision``.

    Lightning turns ``16-mixed`` on the CPU into ``bf16-mixed``; a ``MixedPrecision`` plugin with
    a CPU ``GradScaler`` keeps float16 and loss scaling there. A given ``init_scale`` also needs
    the plugin.
    """
    if precision == "16-mixed" and (s.device == "cpu" or init_scale is not None):
        kwargs = {} if init_scale is None else {"init_scale": init_scale}
        scaler = torch.amp.GradScaler(s.device, **kwargs)
        return {"plugins": [MixedPrecision("16-mixed", s.device, scaler=scaler)]}
    return {"precision": precision}


def _trainer(s: Settings, steps: int, callbacks: list[Callback], **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="gpu" if s.device == "cuda" else "cpu",
        devices=1,
        max_steps=steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        benchmark=s.cudnn_benchmark if s.device == "cuda" else None,
        callbacks=callbacks,
        **kwargs,
    )


def _model(size: Size, s: Settings, **kwargs: Any) -> ImageClassifier:
    pl.seed_everything(s.seed, verbose=False)
    return ImageClassifier(
        backbone=size.backbone,
        num_classes=s.num_classes,
        channels_last=s.channels_last,
        max_lr=s.max_lr,
        **kwargs,
    )


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


class _Marks:
    """Time stamps: CUDA events on the GPU (no sync when taken), ``perf_counter`` on the CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.device == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_s(self) -> list[float]:
        """Seconds between consecutive marks (synchronises once, at the end)."""
        if self.device == "cuda":
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(self.marks)]
        return [b - a for a, b in itertools.pairwise(self.marks)]


class _StepTimer(Callback):
    """Marks the start of batches ``warmup`` to ``warmup + timed``: ``timed`` whole steps.

    Each interval runs from one ``on_train_batch_start`` to the next, so it holds the forward,
    backward, optimizer and scheduler steps, Lightning's loop and the next batch's fetch.
    """

    def __init__(self, warmup: int, timed: int, device: str) -> None:
        self.warmup, self.timed = warmup, timed
        self.marks = _Marks(device)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.warmup <= batch_idx <= self.warmup + self.timed:
            self.marks.mark()


@contextlib.contextmanager
def _quiet() -> Iterator[list[warnings.WarningMessage]]:
    """Record warnings instead of printing them (the loss-scale section counts one kind)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        yield record


def _guarded(results: dict[str, Any], key: str, clock: _Clock, fn: Callable[[], Any]) -> Any | None:
    """Run ``fn``, store its result under ``key`` or, on failure, the error; never raise."""
    if clock.over_budget():
        results[key] = {"status": "skipped", "reason": f"time budget of {clock.budget_s} s spent"}
        clock.say(f"{key}: skipped (time budget spent)")
        return None
    try:
        value = fn()
    except Exception as err:  # recorded, and the next part still runs
        results[key] = {
            "status": "error",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
        }
        clock.say(f"{key}: FAILED {type(err).__name__}: {err}")
        return None
    results[key] = value
    return value


# --------------------------------------------------------------------------- sections


def environment(s: Settings) -> dict[str, Any]:
    cuda = s.device == "cuda"
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()})",
        "capability": list(torch.cuda.get_device_capability()) if cuda else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "lightning": lightning.__version__,
        "torchvision": torchvision.__version__,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cpu_threads": torch.get_num_threads(),
    }


def fit_run(size: Size, precision: str, s: Settings, clock: _Clock) -> dict[str, Any]:
    """One timed ``Trainer.fit``: steady-state step times and peak memory."""
    x, y = _pool(size, s)
    steps = s.warmup_steps + s.timed_steps + 1  # the last batch only closes the window
    timer = _StepTimer(s.warmup_steps, s.timed_steps, s.device)
    _free(s.device)
    if s.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = _model(size, s)
    trainer = _trainer(s, steps, [timer], **_precision(precision, s))
    with _quiet():
        trainer.fit(model, _loader(x, y, size.batch, steps))
    step_s = timer.marks.intervals_s()
    if len(step_s) != s.timed_steps:
        raise RuntimeError(f"timed {len(step_s)} steps, expected {s.timed_steps}")
    total = sum(step_s)
    out = {
        "status": "ok",
        "precision": precision,
        "steps": trainer.global_step,
        "timed_steps": len(step_s),
        "images_per_s": size.batch * len(step_s) / total,
        "step_ms_mean": 1e3 * total / len(step_s),
        "step_ms_median": 1e3 * statistics.median(step_s),
        "step_ms_min": 1e3 * min(step_s),
        "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
        "data_pool_mib": (x.numel() * x.element_size() + y.numel() * y.element_size()) / 2**20,
    }
    if s.device == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["peak_minus_data_pool_mib"] = out["peak_mib"] - out["data_pool_mib"]
    else:
        out["peak_mib"] = None
    clock.say(
        f"fit {size.name} {precision}: {out['images_per_s']:.0f} img/s,"
        f" median step {out['step_ms_median']:.2f} ms"
    )
    del model, trainer, x, y
    _free(s.device)
    return out


def throughput(s: Settings, clock: _Clock) -> dict[str, Any]:
    section: dict[str, Any] = {"status": "ok", "sizes": {}}
    for size in s.sizes:
        runs: dict[str, Any] = {}
        for precision in s.precisions:
            _guarded(runs, precision, clock, functools.partial(fit_run, size, precision, s, clock))
        base = runs.get("32-true", {}).get("images_per_s")
        for run in runs.values():
            if run.get("status") == "ok" and base:
                run["speedup_vs_32_true"] = run["images_per_s"] / base
        section["sizes"][size.name] = {**asdict(size), "runs": runs}
    return section


def memory(s: Settings, fits: dict[str, Any]) -> dict[str, Any]:
    """The peak memory of each fit, reset before each one (``max_memory_allocated``)."""
    if s.device != "cuda":
        return {"status": "skipped", "reason": "no CUDA device: no GPU memory to measure"}
    table: dict[str, Any] = {}
    for name, entry in fits.get("sizes", {}).items():
        table[name] = {
            precision: {k: run.get(k) for k in ("peak_mib", "peak_minus_data_pool_mib")}
            for precision, run in entry["runs"].items()
            if run.get("status") == "ok"
        }
    return {"status": "ok", "measure": "torch.cuda.max_memory_allocated", "sizes": table}


def _stub() -> tuple[SimpleNamespace, SimpleNamespace]:
    """Stand-ins for the trainer and module of a fit: what the mixing hooks read."""
    trainer = SimpleNamespace(global_rank=0, current_epoch=0, global_step=0, is_global_zero=True)
    module = SimpleNamespace(num_classes=NUM_CLASSES, hparams={}, log=lambda *a, **k: None)
    return trainer, module


def _set_up(factory: Callable[..., Callback], **kwargs: Any) -> tuple[Any, Any, Any]:
    callback = factory(seed=0, **kwargs)
    trainer, module = _stub()
    callback.setup(trainer, module, "fit")  # type: ignore[arg-type]
    return callback, trainer, module


def _step_ms(fits: dict[str, Any], size: Size) -> dict[str, float]:
    runs = fits.get("sizes", {}).get(size.name, {}).get("runs", {})
    return {p: r["step_ms_median"] for p, r in runs.items() if r.get("status") == "ok"}


def _mixer_keys() -> Iterator[tuple[str, str, bool, bool]]:
    """(row key, callback name, per_sample, inplace) of every mixing row."""
    for name in MIXERS:
        for per_sample in (False, True):
            for inplace in (False, True):
                key = f"{name} {'sample' if per_sample else 'batch'}"
                yield key + (" inplace" if inplace else ""), name, per_sample, inplace


class _Saturator:
    """Back-to-back float32 matmuls that keep the CUDA stream busy for about ``target_ms``.

    Enqueued before a hook call, they hold the stream while the host launches the hook's
    kernels, which queue behind them: an event recorded after the workload and one after the
    call then enclose the kernels' execution alone, with no launch gaps.
    """

    def __init__(self, target_ms: float, n: int = 4096) -> None:
        g = torch.Generator(device="cuda").manual_seed(0)
        self.a = torch.randn(n, n, device="cuda", generator=g)
        self.b = torch.randn(n, n, device="cuda", generator=g)
        self.c = torch.empty(n, n, device="cuda")
        self.shape = f"{n}x{n} @ {n}x{n} float32"
        self.repeats = 10
        self()  # warm-up: cuBLAS handle and workspace
        one_ms = statistics.median(self.alone_ms(3)) / self.repeats
        self.repeats = max(1, math.ceil(target_ms / one_ms))

    def __call__(self) -> None:
        for _ in range(self.repeats):
            torch.mm(self.a, self.b, out=self.c)

    def alone_ms(self, times: int) -> list[float]:
        """The workload's own time on an idle GPU, ``times`` times."""
        out = []
        for _ in range(times):
            torch.cuda.synchronize()
            start = _event()
            self()
            end = _event()
            end.synchronize()
            out.append(start.elapsed_time(end))
        return out

    def empty_window_ms(self, times: int) -> list[float]:
        """Two events recorded back to back behind the workload: the floor of a GPU time."""
        out = []
        for _ in range(times):
            self()
            start = _event()
            end = _event()
            end.synchronize()
            out.append(start.elapsed_time(end))
        return out


def _event() -> torch.cuda.Event:
    """A timing event, recorded on the current stream now."""
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def mixing_cost(s: Settings, fits: dict[str, Any], clock: _Clock) -> dict[str, Any]:
    """GPU time and host time of each mixing hook on a batch of each fit's shape."""
    section: dict[str, Any] = {
        "status": "ok",
        "cpu_time": "time.perf_counter around the on_train_batch_start call"
        + (
            ", with the CUDA stream busy so that nothing waits for the GPU"
            if s.device == "cuda"
            else ""
        ),
        "gpu_share_against": f"the {s.fit_cost_precision} fit's median step at that size",
        "sizes": {},
    }
    saturator = None
    if s.device != "cuda":
        section["gpu_time"] = {
            "status": "skipped",
            "reason": "no CUDA device: the GPU time of a hook's kernels needs CUDA events",
        }
    else:
        saturator = _Saturator(s.saturate_ms)
        section["gpu_time"] = {
            "status": "ok",
            "method": "CUDA events after a saturating workload and after the call",
            "workload": f"{saturator.repeats} x {saturator.shape}",
            "workload_alone_ms": statistics.median(saturator.alone_ms(5)),
            "empty_window_ms": statistics.median(saturator.empty_window_ms(5)),
        }
    for size in s.sizes:
        if clock.over_budget():
            section["sizes"][size.name] = {"status": "skipped", "reason": "time budget spent"}
            continue
        step = _step_ms(fits, size).get(s.fit_cost_precision)
        x, y = _pool(size, s)
        x = x[: size.batch].clone()
        y = y[: size.batch].clone()
        rows: dict[str, Any] = {}
        for key, name, per_sample, inplace in _mixer_keys():
            hook = functools.partial(
                _time_hook, MIXERS[name], per_sample, inplace, x, y, s, saturator
            )
            row = _guarded(rows, key, clock, hook)
            if row is not None:
                gpu = row["gpu_ms"]
                row["gpu_share_of_step"] = None if gpu is None or not step else gpu / step
        section["sizes"][size.name] = {"status": "ok", "step_ms": step, "rows": rows}
        clock.say(f"mixing hooks timed at {size.name}")
        _free(s.device)
    return section


def _time_hook(
    factory: Callable[..., Callback],
    per_sample: bool,
    inplace: bool,
    x: torch.Tensor,
    y: torch.Tensor,
    s: Settings,
    saturator: _Saturator | None,
) -> dict[str, Any]:
    """Host time and (with CUDA) GPU time of ``on_train_batch_start`` on a fresh ``[x, y]``.

    With CUDA, each call comes after the saturating workload: the host launches the hook's
    kernels while the GPU still runs the workload, so the events around the call time the
    kernels' execution back to back, and the host time holds no wait for the GPU. Whether the
    GPU was still busy when the call returned is recorded per call (``launches_hidden``); the
    workload's time in each call is recorded beside its time alone, to compare.
    """
    callback, trainer, module = _set_up(factory, per_sample=per_sample, inplace=inplace)
    cpu_ms: list[float] = []
    gpu_ms: list[float] = []
    workload_ms: list[float] = []
    hidden = 0
    for call in range(s.mix_warmup_calls + s.mix_timed_calls):
        batch = [x.clone(), y]  # a tensor of its own: in-place mixing writes into it
        if saturator is not None:
            torch.cuda.synchronize()
            before = _event()
            saturator()
            start = _event()
        host_start = time.perf_counter()
        callback.on_train_batch_start(trainer, module, batch, call)  # type: ignore[arg-type]
        host = time.perf_counter() - host_start
        if saturator is not None:
            busy = not start.query()  # the GPU had not reached the call's first kernel yet
            end = _event()
            end.synchronize()
        if batch[1].shape != (x.shape[0], NUM_CLASSES):
            raise RuntimeError(f"soft targets of shape {tuple(batch[1].shape)}")
        if call < s.mix_warmup_calls:
            continue
        cpu_ms.append(1e3 * host)
        if saturator is not None:
            gpu_ms.append(start.elapsed_time(end))
            workload_ms.append(before.elapsed_time(start))
            hidden += busy
    out: dict[str, Any] = {
        "status": "ok",
        "calls": len(cpu_ms),
        "cpu_ms": statistics.median(cpu_ms),
        "cpu_ms_min": min(cpu_ms),
        "gpu_ms": None,
    }
    if saturator is not None:
        out.update(
            gpu_ms=statistics.median(gpu_ms),
            gpu_ms_min=min(gpu_ms),
            gpu_ms_max=max(gpu_ms),
            launches_hidden=hidden,
            workload_in_call_ms=statistics.median(workload_ms),
        )
    return out


class _Interleaved(Callback):
    """Marks every batch's start, then runs the hook of the callback scheduled for the batch.

    One fit holds windows of steps without a mixing callback and with each one in turn, so
    every callback is compared with the steps just before it, in the same process, model and
    data, with cuDNN's algorithms and the allocator's cache already warm.
    """

    def __init__(
        self, callbacks: dict[str, Callback], schedule: list[str | None], device: str
    ) -> None:
        self.callbacks, self.schedule = callbacks, schedule
        self.marks = _Marks(device)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for callback in self.callbacks.values():
            callback.setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for callback in self.callbacks.values():
            callback.on_train_start(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.marks.mark()
        name = self.schedule[batch_idx] if batch_idx < len(self.schedule) else None
        if name is not None:
            self.callbacks[name].on_train_batch_start(trainer, pl_module, batch, batch_idx)


@dataclass
class _Window:
    callback: str | None
    round: int
    steps: range  # indices of the timed steps


def _schedule(names: list[str], s: Settings) -> tuple[list[str | None], list[_Window]]:
    """Warm-up, then per round and callback a window without and one with the callback.

    Odd rounds take the callbacks in reverse order, so a slow drift of the GPU's clock does not
    favour the callbacks that come late. The first ``settle`` steps of a window are not timed:
    the first call of a callback checks the label range (a sync), and a switch changes the
    loss's target shape.
    """
    schedule: list[str | None] = [None] * s.fit_cost_warmup_steps
    windows = []
    for round_ in range(s.fit_cost_rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            for callback in (None, name):
                start = len(schedule) + s.fit_cost_settle_steps
                schedule += [callback] * (s.fit_cost_settle_steps + s.fit_cost_window_steps)
                windows.append(
                    _Window(callback, round_, range(start, start + s.fit_cost_window_steps))
                )
    return schedule, windows


def fit_cost(s: Settings, fits: dict[str, Any], clock: _Clock) -> dict[str, Any]:
    """What a mixing callback costs a fit: step time with it against without it, one fit a size."""
    names = [key for key, _, _, inplace in _mixer_keys() if not inplace]
    schedule, _ = _schedule(names, s)
    section: dict[str, Any] = {
        "status": "ok",
        "precision": s.fit_cost_precision,
        "callbacks": names,
        "inplace": False,
        "not_measured": "inplace=True (its GPU time is in mixing_cost), to keep the run short",
        "targets": {"per_batch": TARGET_PER_BATCH, "per_sample": TARGET_PER_SAMPLE},
        "cost": "mean step with the callback / mean step of the window just before it without"
        " any - 1, over all rounds",
        "steps_per_fit": len(schedule) + 1,
        "sizes": {},
    }
    for size in s.fit_cost_sizes:
        step_ms = _step_ms(fits, size).get(s.fit_cost_precision, 0.0)
        # A fifth more than the throughput fit's steps, for the mixing and the soft targets.
        estimate = s.fit_start_s + 1.2e-3 * step_ms * (len(schedule) + 1)
        if s.budget_s is not None and clock.elapsed() + estimate > s.budget_s:
            reason = f"its estimated {estimate:.0f} s would pass the time budget of {s.budget_s} s"
            section["sizes"][size.name] = {"status": "skipped", "reason": reason}
            clock.say(f"fit cost {size.name}: skipped, {reason}")
            continue
        run = functools.partial(_fit_cost_run, size, names, s, clock)
        _guarded(section["sizes"], size.name, clock, run)
    return section


def _fit_cost_run(size: Size, names: list[str], s: Settings, clock: _Clock) -> dict[str, Any]:
    schedule, windows = _schedule(names, s)
    callbacks = {}
    for key in names:
        name, mode = key.split()
        callbacks[key] = MIXERS[name](seed=0, per_sample=mode == "sample")
    interleaved = _Interleaved(callbacks, schedule, s.device)
    steps = len(schedule) + 1  # the last batch only closes the last window
    x, y = _pool(size, s)
    _free(s.device)
    trainer = _trainer(s, steps, [interleaved], **_precision(s.fit_cost_precision, s))
    with _quiet():
        trainer.fit(_model(size, s), _loader(x, y, size.batch, steps))
    step_s = interleaved.marks.intervals_s()  # step i: from batch i's start to batch i+1's
    if len(step_s) != len(schedule):
        raise RuntimeError(f"timed {len(step_s)} steps, expected {len(schedule)}")
    means = [statistics.fmean(step_s[i] for i in w.steps) for w in windows]
    base_means = [m for m, w in zip(means, windows, strict=True) if w.callback is None]
    rows: dict[str, Any] = {}
    for key in names:
        # Each window with the callback against the window without any just before it.
        pairs = [(means[i], means[i - 1]) for i, w in enumerate(windows) if w.callback == key]
        with_ms = statistics.fmean(p[0] for p in pairs)
        without_ms = statistics.fmean(p[1] for p in pairs)
        target = TARGET_PER_SAMPLE if key.endswith("sample") else TARGET_PER_BATCH
        rows[key] = {
            "status": "ok",
            "step_ms": 1e3 * with_ms,
            "baseline_step_ms": 1e3 * without_ms,
            "ratio": with_ms / without_ms,
            "cost": with_ms / without_ms - 1,
            "cost_per_round": [a / b - 1 for a, b in pairs],
            "target": target,
            "met": with_ms / without_ms - 1 < target,
        }
    out = {
        "status": "ok",
        "steps": trainer.global_step,
        "timed_steps_per_window": s.fit_cost_window_steps,
        "baseline_step_ms": 1e3 * statistics.fmean(base_means),
        # How much windows without any callback differ from each other: the noise floor.
        "baseline_window_spread": (max(base_means) - min(base_means))
        / statistics.fmean(base_means),
        "rows": rows,
    }
    clock.say(
        f"fit cost {size.name} {s.fit_cost_precision}: baseline step"
        f" {out['baseline_step_ms']:.2f} ms, baseline windows spread"
        f" {100 * out['baseline_window_spread']:.2f}%"
    )
    del trainer, x, y
    _free(s.device)
    return out


def sync_check(s: Settings, clock: _Clock) -> dict[str, Any]:
    """``set_sync_debug_mode("error")`` around each hook call after a first (checked) batch."""
    if s.device != "cuda":
        return {"status": "skipped", "reason": "no CUDA device: host-device syncs need one"}
    size = s.sizes[0]
    x, y = _pool(size, s)
    x, y = x[: size.batch].clone(), y[: size.batch].clone()
    rows: dict[str, Any] = {}
    for name, factory in SYNC_MIXERS.items():
        for per_sample in (False, True):
            for inplace in (False, True):
                key = f"{name} per_sample={per_sample} inplace={inplace}"
                callback, trainer, module = _set_up(factory, per_sample=per_sample, inplace=inplace)
                # The first batch checks the label range once, which syncs by design.
                callback.on_train_batch_start(trainer, module, [x.clone(), y], 0)
                batch = [x.clone(), y]
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    callback.on_train_batch_start(trainer, module, batch, 1)
                    rows[key] = {"passed": True, "error": None}
                except RuntimeError as err:
                    rows[key] = {"passed": False, "error": str(err)}
                finally:
                    torch.cuda.set_sync_debug_mode("default")
                rows[key]["mixed"] = tuple(batch[1].shape) == (size.batch, NUM_CLASSES)
    failed = [k for k, r in rows.items() if not r["passed"]]
    clock.say(f"sync check: {len(rows) - len(failed)}/{len(rows)} passed")
    return {
        "status": "ok",
        "batch": size.name,
        "all_passed": not failed,
        "failed": failed,
        "rows": rows,
    }


class _SyncCounter(Callback):
    """Records the host-device syncs of one steady-state training step (sync debug ``"warn"``).

    The window runs from batch ``step``'s ``on_train_batch_start`` to the next one's: the
    step's forward, backward, optimizer and scheduler steps, Lightning's loop and logging, and
    the hooks of the other callbacks.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self.syncs: list[str] = []
        self._catch: warnings.catch_warnings | None = None
        self._record: list[warnings.WarningMessage] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.step:
            torch.cuda.synchronize()
            self._catch = warnings.catch_warnings(record=True)
            self._record = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        elif batch_idx == self.step + 1:
            self.stop()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stop()

    def stop(self) -> None:
        """Leave sync debugging; also called after a fit that failed inside the window."""
        if self._catch is None:
            return
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(None, None, None)
        self._catch = None
        self.syncs = [
            f"{w.filename}:{w.lineno}"
            for w in self._record
            if "synchronizing" in str(w.message).lower()
        ]


def step_syncs(s: Settings, clock: _Clock) -> dict[str, Any]:
    """Where a whole training step of ``ImageClassifier`` with ``MixUp`` synchronises."""
    if s.device != "cuda":
        return {"status": "skipped", "reason": "no CUDA device: host-device syncs need one"}
    size = s.sizes[0]
    x, y = _pool(size, s)
    out: dict[str, Any] = {
        "status": "ok",
        "batch": size.name,
        "callbacks": ["MixUp()"],
        "window": "one steady-state step, on_train_batch_start to the next",
        "precisions": {},
    }
    step = 5
    for precision in ("32-true", "16-mixed"):
        counter = _SyncCounter(step)
        trainer = _trainer(s, step + 2, [MixUp(seed=0), counter], **_precision(precision, s))
        with _quiet():
            try:
                trainer.fit(_model(size, s), _loader(x, y, size.batch, step + 2))
            finally:
                counter.stop()
        out["precisions"][precision] = {
            "syncs": len(counter.syncs),
            "where": dict(collections.Counter(counter.syncs)),
        }
        clock.say(f"syncs in one {precision} training step: {len(counter.syncs)}")
    return out


class _UpdateCounter(Callback):
    """Counts real parameter updates (an optimizer step post hook) and the scale of each step.

    ``GradScaler`` does not call ``optimizer.step()`` on a step whose gradients overflowed, so
    the hook counts only real updates. The scale is read after each step (a sync per step; this
    section is not timed).
    """

    def __init__(self) -> None:
        self.updates = 0
        self.scales: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.optimizers[0].register_step_post_hook(self._count)

    def _count(self, *args: Any) -> None:
        self.updates += 1

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        self.scales.append(float(trainer.precision_plugin.scaler.get_scale()))  # type: ignore[attr-defined]


def loss_scale(s: Settings, clock: _Clock) -> dict[str, Any]:
    size = s.sizes[0]
    x, y = _pool(size, s)
    steps = s.loss_scale_steps
    monitor, counter = LossScaleMonitor(), _UpdateCounter()
    model = _model(size, s, on_skipped_step="hold")
    trainer = _trainer(
        s, steps, [monitor, counter], **_precision("16-mixed", s, init_scale=s.init_scale)
    )
    with _quiet() as record:
        trainer.fit(model, _loader(x, y, size.batch, steps))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    skipped = monitor.skipped_steps
    scaler = trainer.precision_plugin.scaler  # type: ignore[attr-defined]
    out = {
        "status": "ok",
        "batch": size.name,
        "precision": "16-mixed",
        "on_skipped_step": "hold",
        "init_scale": s.init_scale,
        "init_scale_note": "set large on purpose, so that the first steps overflow and are skipped",
        "growth_interval": scaler.get_growth_interval(),
        "steps": trainer.global_step,
        "scale_start": s.init_scale,
        "scale_min": min(counter.scales),
        "scale_end": counter.scales[-1],
        "scale_after_each_step": counter.scales,
        "skipped_steps": skipped,
        "real_updates": counter.updates,
        "scheduler_last_epoch": scheduler.last_epoch,
        "scheduler_step_count": scheduler._step_count,
        "scheduler_steps_equal_real_updates": scheduler.last_epoch == counter.updates,
        "real_updates_equal_steps_minus_skipped": counter.updates == trainer.global_step - skipped,
        "skips_provoked": skipped > 0,
        "scheduler_before_optimizer_warnings": sum(
            SCHEDULER_FIRST in str(w.message) for w in record
        ),
        "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
    }
    clock.say(
        f"loss scale: {skipped} of {trainer.global_step} steps skipped, scale"
        f" {s.init_scale:g} -> {out['scale_end']:g}; scheduler steps {scheduler.last_epoch},"
        f" real updates {counter.updates}"
    )
    return out


# --------------------------------------------------------------------------- report


def fused_blend(s: Settings, clock: _Clock) -> dict[str, Any]:
    """The compiled guard and blend (``lightning_recipes.functional._fused``): per kind of
    weight map and dtype on a 128x3x224x224 batch, whether the compiled path was chosen (its
    first result equal to the torch ops' bit for bit), both paths' GPU time, and the first
    call at a smaller batch (a recompilation would take seconds)."""
    if s.device != "cuda":
        return {"status": "skipped", "reason": "compiled only on CUDA (no CUDA device)"}
    from lightning_recipes.functional import _fused
    from lightning_recipes.functional.blend import _blend_finite

    batch, size = 128, 224
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows: dict[str, Any] = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(batch, 3, size, size, device="cuda", generator=gen).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        kinds: dict[str, Any] = {
            "float": 0.3,
            "ratio": torch.rand(batch, 1, 1, 1, device="cuda", generator=gen),
            "mask": (torch.rand(batch, 1, size, size, device="cuda", generator=gen) > 0.5).float(),
        }
        for kind, weight in kinds.items():
            name = f"{kind} {str(dtype).removeprefix('torch.')}"
            rows[name] = _fused_row(_fused, _blend_finite, x, weight, gen)
            clock.say(
                f"fused blend {name}: chosen {rows[name]['compiled_chosen']},"
                f" {rows[name]['eager_gpu_ms']:.3f} -> {rows[name]['compiled_gpu_ms']:.3f} ms"
            )
    return {"status": "ok", "batch": f"{batch}x3x{size}x{size} channels-last", "rows": rows}


def _fused_row(
    fused: Any, blend_finite: Callable[..., Any], x: torch.Tensor, weight: Any, gen: Any
) -> dict[str, Any]:
    """One kind of call: the compiled path's choice, equality and time, and a smaller batch."""
    batch = x.shape[0]
    perm = torch.randperm(batch, device="cuda", generator=gen)
    weights = torch.rand(batch, device="cuda", generator=gen)

    def call(n: int = batch) -> Any:
        w = weight[:n] if isinstance(weight, torch.Tensor) and weight.shape[0] > 1 else weight
        return blend_finite(x[:n], perm[:n] % n, w, weights[:n], inplace=False)

    start = time.perf_counter()
    compiled = call()
    torch.cuda.synchronize()
    first_s = time.perf_counter() - start
    shape = tuple(d == 1 for d in weight.shape) if isinstance(weight, torch.Tensor) else None
    key = ("cuda", x.dtype, x.ndim, shape)
    with _patched(fused, "_DEVICES", ()):
        eager = call()
        eager_ms = _gpu_ms(call)
    compiled_ms = _gpu_ms(call)
    start = time.perf_counter()
    call(batch - 3)  # the smaller last batch of an epoch: no recompilation
    torch.cuda.synchronize()
    return {
        "compiled_chosen": key in fused._checked,
        "rejected": key in fused._rejected,
        "equal_to_eager": bool(torch.equal(compiled[0].nan_to_num(), eager[0].nan_to_num())),
        "first_call_s": first_s,
        "eager_gpu_ms": eager_ms,
        "compiled_gpu_ms": compiled_ms,
        "clone_gpu_ms": _gpu_ms(x.clone),
        "smaller_batch_first_call_s": time.perf_counter() - start,
    }


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _gpu_ms(fn: Callable[[], Any], calls: int = 10) -> float:
    """Median GPU time of ``fn`` over ``calls`` calls, CUDA events around each."""
    fn()
    times = []
    for _ in range(calls):
        start, end = _event(), _event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(float(start.elapsed_time(end)))
    return float(statistics.median(times))


def _write_cifar(root: Path, per_batch: int) -> None:
    """A CIFAR-10 python-format tree of random pixels under ``root``, and torchvision's
    checksums of this process pointed at its files (nothing is downloaded)."""
    import hashlib
    import pickle

    import numpy as np

    cifar = torchvision.datasets.CIFAR10
    folder = root / cifar.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def write(name: str, entry: dict[str, Any]) -> str:
        data = pickle.dumps(entry)
        (folder / name).write_bytes(data)
        return hashlib.md5(data).hexdigest()

    sums = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, NUM_CLASSES, size=per_batch).tolist()
        sums[name] = write(name, {"data": pixels, "labels": labels, "batch_label": name})
    meta = write("batches.meta", {"label_names": [f"c{i}" for i in range(NUM_CLASSES)]})
    cifar.train_list = [[n, sums[n]] for n, _ in cifar.train_list]
    cifar.test_list = [["test_batch", sums["test_batch"]]]
    cifar.meta = {**cifar.meta, "md5": meta}


def _restore_cifar(saved: tuple[Any, Any, Any]) -> None:
    cifar = torchvision.datasets.CIFAR10
    cifar.train_list, cifar.test_list, cifar.meta = saved


def cli_fit(s: Settings, clock: _Clock) -> dict[str, Any]:
    """``lightning-recipes fit --config configs/cifar10.yaml --trainer.precision 16-mixed``
    with ``FMix(per_sample=True, mask_sampler="fast")`` added, on one device, on a CIFAR-10
    file this check writes (``32-true`` on the CPU), in this process."""
    import tempfile

    from lightning_recipes.cli import main as cli_main

    precision = "16-mixed" if s.device == "cuda" else "32-true"
    steps = 20 if s.device == "cuda" else 2
    cifar = torchvision.datasets.CIFAR10
    saved = cifar.train_list, cifar.test_list, cifar.meta
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as restore:
        restore.callback(lambda: _restore_cifar(saved))
        root = Path(tmp)
        _write_cifar(root / "data", per_batch=400)
        argv = [
            "fit",
            "--config",
            str(Path(__file__).resolve().parents[1] / "configs" / "cifar10.yaml"),
            "--trainer.accelerator",
            "gpu" if s.device == "cuda" else "cpu",
            "--trainer.devices",
            "1",
            "--trainer.strategy",
            "auto",
            "--trainer.precision",
            precision,
            "--trainer.sync_batchnorm",
            "false",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            str(steps),
            "--trainer.limit_val_batches",
            "2",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.default_root_dir",
            str(root / "runs"),
            "--trainer.logger.init_args.save_dir",
            str(root / "runs"),
            "--trainer.callbacks+=lightning_recipes.FMix",
            "--trainer.callbacks.per_sample",
            "true",
            "--trainer.callbacks.mask_sampler",
            "fast",
            "--data.init_args.root",
            str(root / "data"),
            "--data.init_args.num_workers",
            "0",
            "--data.init_args.batch_size",
            "64",
            "--data.init_args.val_size",
            "200",
        ]
        start = time.perf_counter()
        cli_main(argv)
        elapsed = time.perf_counter() - start
        metrics = sorted((root / "runs").rglob("metrics.csv"))
        checkpoints = sorted(p.name for p in (root / "runs").rglob("*.ckpt"))
        text = metrics[-1].read_text() if metrics else ""
    clock.say(f"cli fit {precision}: {elapsed:.1f} s, checkpoints {checkpoints}")
    return {
        "status": "ok",
        "precision": precision,
        "argv": argv,
        "elapsed_s": elapsed,
        "train_steps": steps,
        "logged_lam_fmix": "lam-FMix" in text,
        "checkpoints": checkpoints,
    }


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _percent(fraction: float | None, spec: str = ".2f") -> str:
    return "-" if fraction is None else f"{100 * fraction:{spec}}%"


def _reason(entry: dict[str, Any]) -> str:
    return f"{entry.get('status')} ({entry.get('reason', entry.get('error'))})"


def _mixing_table(results: dict[str, Any]) -> list[str]:
    """One row per size and callback: GPU time, host time and the cost to a fit."""
    mix = results.get("mixing_cost", {})
    cost = results.get("fit_cost", {})
    gpu = mix.get("gpu_time", {})
    precision = cost.get("precision", "-")
    lines = [
        "",
        "Mixing callbacks, on_train_batch_start on a batch of the fit's shape",
        "  GPU ms: the hook's kernels, timed behind a saturating GPU workload (no launch gaps)",
        "  CPU ms: the call on the host (with CUDA: the stream busy, nothing waits for the GPU)",
        f"  GPU/step: GPU ms / the {precision} fit's median step",
        f"  fit cost: {precision} step time with the callback / without it - 1, in one fit"
        " (inplace=False only)",
        "  targets, judged on fit cost: per batch < 1%, per sample < 3%",
    ]
    if gpu.get("status") == "ok":
        timed = [
            row
            for entry in mix.get("sizes", {}).values()
            for row in entry.get("rows", {}).values()
            if row.get("status") == "ok"
        ]
        in_calls = [row["workload_in_call_ms"] for row in timed]
        lines.append(
            f"  saturating workload {gpu['workload']}: {gpu['workload_alone_ms']:.2f} ms alone,"
            f" {_fmt(statistics.median(in_calls) if in_calls else None, '.2f')} ms (median) before"
            f" the calls; two events back to back behind it: {gpu['empty_window_ms']:.4f} ms;"
            f" GPU still busy when the call returned: {sum(r['launches_hidden'] for r in timed)}"
            f" of {sum(r['calls'] for r in timed)} calls"
        )
    else:
        lines.append(f"  GPU ms: {_reason(gpu)}")
    header = f"{'model and batch':<28} {'callback':<24} {'GPU ms':>7} {'GPU/step':>8}"
    header += f" {'CPU ms':>7} {'fit cost':>9}  met"
    lines.append(header)
    for name, entry in mix.get("sizes", {}).items():
        fit = cost.get("sizes", {}).get(name, {})
        if fit.get("status") == "ok":
            lines.append(
                f"{name}: {precision} step without a callback {fit['baseline_step_ms']:.2f} ms;"
                f" windows without one differ by up to {100 * fit['baseline_window_spread']:.2f}%"
            )
        elif fit:
            lines.append(f"{name}: fit cost {_reason(fit)}")
        if entry.get("status") != "ok":
            lines.append(f"{name:<28} {_reason(entry)}")
            continue
        for key, row in entry.get("rows", {}).items():
            if row.get("status") != "ok":
                lines.append(f"{name:<28} {key:<24} {row.get('status')}")
                continue
            hidden = row.get("launches_hidden", row["calls"]) == row["calls"]
            share = row.get("gpu_share_of_step")
            e2e = fit.get("rows", {}).get(key, {})
            met = {True: "met", False: "MISSED", None: "-"}[e2e.get("met")]
            lines.append(
                f"{name:<28} {key:<24} {_fmt(row['gpu_ms'], '.3f'):>7}{' ' if hidden else '*'}"
                f"{_percent(share):>8} {row['cpu_ms']:>7.3f} {_percent(e2e.get('cost'), '+.2f'):>9}"
                f"  {met}"
            )
    if any(
        row.get("launches_hidden", row.get("calls")) != row.get("calls")
        for entry in mix.get("sizes", {}).values()
        for row in entry.get("rows", {}).values()
    ):
        lines.append(
            "  * some calls returned after the GPU had finished the workload: an upper bound"
        )
    return lines


def table(results: dict[str, Any]) -> str:
    lines = []
    env = results.get("environment", {})
    lines.append(
        f"{env.get('device')} | torch {env.get('torch')} | lightning {env.get('lightning')}"
        f" | torchvision {env.get('torchvision')} | {env.get('date_utc')}"
    )
    fits = results.get("throughput", {})
    lines.append("")
    lines.append("Throughput (steady-state steps of Trainer.fit, ImageClassifier channels-last)")
    header = f"{'model and batch':<28} {'precision':<11} {'img/s':>9} {'vs 32':>6}"
    header += f" {'median ms':>10} {'peak MiB':>9}"
    lines.append(header)
    for name, entry in fits.get("sizes", {}).items():
        for precision, run in entry["runs"].items():
            if run.get("status") != "ok":
                lines.append(f"{name:<28} {precision:<11} {run.get('status')}")
                continue
            lines.append(
                f"{name:<28} {precision:<11} {run['images_per_s']:>9.0f}"
                f" {_fmt(run.get('speedup_vs_32_true'), '.2f'):>6}"
                f" {run['step_ms_median']:>10.2f} {_fmt(run.get('peak_mib'), '.0f'):>9}"
            )
    lines.extend(_mixing_table(results))
    sync = results.get("sync_check", {})
    lines.append("")
    if sync.get("status") == "ok":
        passed = sum(r["passed"] for r in sync["rows"].values())
        lines.append(
            f"Sync check (set_sync_debug_mode('error')): {passed}/{len(sync['rows'])} pass"
        )
        lines.extend(f"  FAILED {key}" for key in sync["failed"])
    else:
        lines.append(f"Sync check: {sync.get('status')} ({sync.get('reason', sync.get('error'))})")
    steps = results.get("step_syncs", {})
    if steps.get("status") == "ok":
        lines.append(f"Syncs in one training step of ImageClassifier + MixUp, {steps['batch']}:")
        for precision, entry in steps["precisions"].items():
            where = ", ".join(f"{k} x{n}" for k, n in entry["where"].items())
            lines.append(f"  {precision}: {entry['syncs']}" + (f" ({where})" if where else ""))
    else:
        lines.append(
            f"Step syncs: {steps.get('status')} ({steps.get('reason', steps.get('error'))})"
        )
    ls = results.get("loss_scale", {})
    lines.append("")
    if ls.get("status") == "ok":
        lines.append(
            f"Loss scale, 16-mixed, {ls['batch']}, {ls['steps']} steps, init_scale"
            f" {ls['init_scale']:g} (large on purpose, to provoke skips)"
        )
        lines.append(
            f"  scale start {ls['scale_start']:g}, min {ls['scale_min']:g}, end"
            f" {ls['scale_end']:g}; skipped steps {ls['skipped_steps']}"
        )
        ok = "yes" if ls["scheduler_steps_equal_real_updates"] else "NO"
        lines.append(
            f"  scheduler steps (last_epoch) {ls['scheduler_last_epoch']} == real updates"
            f" {ls['real_updates']}: {ok}"
        )
    else:
        lines.append(f"Loss scale: {ls.get('status')} ({ls.get('reason', ls.get('error'))})")
    fused = results.get("fused_blend", {})
    lines.append("")
    if fused.get("status") == "ok":
        lines.append(f"Compiled guard + blend, {fused['batch']} (GPU ms, median of 10)")
        lines.append(
            f"{'kind':<16} {'chosen':>7} {'equal':>6} {'eager':>8} {'compiled':>9}"
            f" {'clone':>7} {'first s':>8} {'smaller s':>10}"
        )
        for name, row in fused["rows"].items():
            lines.append(
                f"{name:<16} {row['compiled_chosen']!s:>7} {row['equal_to_eager']!s:>6}"
                f" {row['eager_gpu_ms']:>8.3f} {row['compiled_gpu_ms']:>9.3f}"
                f" {row['clone_gpu_ms']:>7.3f} {row['first_call_s']:>8.2f}"
                f" {row['smaller_batch_first_call_s']:>10.3f}"
            )
    else:
        lines.append(
            f"Compiled blend: {fused.get('status')} ({fused.get('reason', fused.get('error'))})"
        )
    cli = results.get("cli_fit", {})
    if cli.get("status") == "ok":
        lines.append(
            f"lightning-recipes fit, {cli['precision']}, FMix per sample (fast sampler), CIFAR-10"
            f" file written by the check: {cli['train_steps']} steps in {cli['elapsed_s']:.1f} s,"
            f" lam logged {cli['logged_lam_fmix']}, checkpoints {cli['checkpoints']}"
        )
    else:
        lines.append(f"CLI fit: {cli.get('status')} ({cli.get('reason', cli.get('error'))})")
    errors = [k for k, v in results.items() if isinstance(v, dict) and v.get("status") == "error"]
    if errors:
        lines.append("")
        lines.append(f"Sections that failed (see the JSON): {', '.join(errors)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="gpu_check.json", help="JSON file to write")
    parser.add_argument(
        "--dry-run", action="store_true", help="the same code paths on the CPU, tiny sizes"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no new part after this many seconds (default 270 on a GPU; none with"
        " --dry-run, which runs every part whatever the machine's speed)",
    )
    args = parser.parse_args(argv)
    # Lightning's per-fit banners ("GPU available: ...") would bury the progress lines.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --dry-run for the CPU code paths")
    if args.dry_run:
        s = dry_run_settings(args.budget_s)
    else:
        s = gpu_settings(270.0 if args.budget_s is None else args.budget_s)
    clock = _Clock(s.budget_s)
    if s.device == "cuda":
        # cuDNN picks the fastest convolution algorithm per shape during the warm-up steps.
        torch.backends.cudnn.benchmark = s.cudnn_benchmark
    s.notes = [
        "Timed: steady-state steps only, from one on_train_batch_start to the next"
        f" ({s.warmup_steps} warm-up steps untimed); "
        + ("CUDA events." if s.device == "cuda" else "time.perf_counter (no CUDA)."),
        "Data: random tensors on the device, sliced into batches (no loader cost).",
        "ImageClassifier(channels_last=True): weights and inputs in channels-last format.",
        f"cudnn.benchmark = {s.cudnn_benchmark}" if s.device == "cuda" else "CPU: no cuDNN.",
    ]
    results: dict[str, Any] = {
        "settings": asdict(s),
        "dry_run": args.dry_run,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    clock.say(f"gpu_check on {s.device}: {', '.join(z.name for z in s.sizes)}")
    _guarded(results, "environment", clock, lambda: environment(s))
    fits = _guarded(results, "throughput", clock, lambda: throughput(s, clock)) or {}
    _guarded(results, "memory", clock, lambda: memory(s, fits))
    _guarded(results, "mixing_cost", clock, lambda: mixing_cost(s, fits, clock))
    _guarded(results, "sync_check", clock, lambda: sync_check(s, clock))
    _guarded(results, "step_syncs", clock, lambda: step_syncs(s, clock))
    _guarded(results, "fit_cost", clock, lambda: fit_cost(s, fits, clock))
    _guarded(results, "loss_scale", clock, lambda: loss_scale(s, clock))
    _guarded(results, "fused_blend", clock, lambda: fused_blend(s, clock))
    _guarded(results, "cli_fit", clock, lambda: cli_fit(s, clock))
    results["elapsed_s"] = clock.elapsed()
    try:
        text = table(results)
    except Exception:  # the figures are in the JSON, which is written all the same
        text = f"The table failed; the figures are in the JSON.\n{traceback.format_exc()}"
    results["table"] = text
    print(text, flush=True)
    Path(args.output).write_text(json.dumps(results, indent=2, default=str))
    clock.say(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
