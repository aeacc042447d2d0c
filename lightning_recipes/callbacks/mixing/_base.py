"""What every mixing callback shares: its options, batch access, randomness, the stop
schedule, logging and the grid. The public callbacks only say which methods they mix with."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from lightning_recipes._compat import callback_state_key, should_update_logs
from lightning_recipes._validation import (
    check_bool,
    check_int,
    check_label_range,
    check_label_smoothing,
    check_num_classes,
    check_probability,
)
from lightning_recipes.callbacks.mixing._ahead import DrawsAhead, Mix
from lightning_recipes.callbacks.mixing._batch import (
    BatchItems,
    Key,
    check_key,
    module_num_classes,
    read_batch,
)
from lightning_recipes.callbacks.mixing._draw import (
    Draw,
    Methods,
    apply_mix,
    draw_mix,
    finish_staged,
    stage,
)
from lightning_recipes.callbacks.mixing._grid import save_grid
from lightning_recipes.callbacks.mixing._kernels import Mixed
from lightning_recipes.callbacks.mixing._randomness import BatchRandomness, RandomSource, run_seed
from lightning_recipes.callbacks.mixing._schedule import StopSchedule
from lightning_recipes.functional.targets import _mix_soft_targets, _soft_targets

__all__ = ["MixingCallback", "errors_named"]


@contextlib.contextmanager
def errors_named(owner: object) -> Iterator[None]:
    """Prefixes a ``ValueError`` / ``TypeError`` raised inside with the class name of ``owner``.

    In a config with several callbacks a bare "`alpha` must be > 0" does not say whose, so each
    public callback runs its ``__init__`` and its batch checks inside this block. A message that
    already starts with the name (a subclass's ``__init__`` around its parent's) is kept.
    """
    name = type(owner).__name__
    try:
        yield
    except (ValueError, TypeError) as error:
        message = str(error)
        if message.startswith(f"{name}: "):
            raise
        raise type(error)(f"{name}: {message}").with_traceback(error.__traceback__) from None


class MixingCallback(Callback):
    """The base of :class:`MixUp`, :class:`CutMix`, :class:`FMix` and :class:`RandomMix`.

    It works in ``on_train_batch_start``, after the batch has reached the device: it finds the
    inputs and targets, draws the batch's randomness, lets the methods' kernels mix the inputs
    and puts the mixed inputs and float32 soft targets ``(batch, num_classes)`` into the batch.

    Args:
        methods: The methods to mix with (given by the subclass, not by the user).

    The keyword-only parameters are the options of :class:`~lightning_recipes.MixingOptions`,
    which describes each; their defaults are the ones here. The subclasses take them as
    ``**options: Unpack[MixingOptions]``, and ``tests/test_mixing_options.py`` keeps the two
    lists the same.
    """

    # The name in log keys (`lam-MixUp`), grid files and the seed of each batch's draws.
    _LOG_NAME: ClassVar[str]

    def __init__(
        self,
        methods: Methods,
        *,
        p: float = 1.0,
        per_sample: bool = False,
        label_smoothing: float = 0.0,
        num_classes: int | None = None,
        stop_epoch: int | None = None,
        stop_fraction: float | None = None,
        input_key: Key | None = None,
        target_key: Key | None = None,
        seed: int | None = None,
        save_grid: bool = False,
        grid_samples: int = 16,
        inplace: bool = False,
    ) -> None:
        super().__init__()
        self._methods = methods
        self.p = check_probability(p)
        self.per_sample = check_bool(per_sample, "per_sample")
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.num_classes = check_num_classes(num_classes)
        self._schedule = StopSchedule(stop_epoch, stop_fraction)
        self.stop_epoch, self.stop_fraction = stop_epoch, stop_fraction
        self.input_key = check_key(input_key, "input_key")
        self.target_key = check_key(target_key, "target_key")
        self.seed: int | None = check_int(seed, "seed", optional=True)
        self.save_grid = check_bool(save_grid, "save_grid")
        self.grid_samples: int = check_int(grid_samples, "grid_samples", minimum=1)
        self.inplace = check_bool(inplace, "inplace")
        # Run state. `_seed` and `_batches` are all the randomness depends on (with the rank),
        # and both go into checkpoints.
        self._seed: int | None = None
        self._batches = 0
        self._rank = 0
        self._classes: int | None = self.num_classes
        self._labels_checked = False
        self._grid_epoch = -1
        self._random = RandomSource()
        self._ahead = DrawsAhead()

    @property
    @override
    def state_key(self) -> str:
        return callback_state_key(self, input_key=self.input_key, target_key=self.target_key)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # The rank enters each draw, so DDP processes mix differently. A resumed run
        # overwrites the seed and the batch count from the checkpoint in `load_state_dict`,
        # which Lightning calls after `setup`.
        self._seed = self._run_seed()
        self._rank = trainer.global_rank
        self._classes = self.num_classes or module_num_classes(pl_module)
        self._labels_checked = False
        self._grid_epoch = -1
        self._ahead.clear()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._schedule.start(trainer, type(self).__name__)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        items = self._read(batch)
        targets = self._targets(items)
        count = self._batches
        self._batches += 1
        mixed = None
        if items.x.shape[0] > 1 and self._schedule.active(trainer):
            mixed = self._mix(items.x, count)
        else:
            self._ahead.clear()
        if mixed is None:
            batch[items.target_key] = targets
        else:
            batch[items.input_key] = mixed.x
            batch[items.target_key] = _mix_soft_targets(targets, mixed.weights, mixed.perm)
        # On-step values of other steps never reach a logger, so `self.log` (not free on the
        # hot path) is skipped for them, as Lightning's `LearningRateMonitor` does.
        if should_update_logs(trainer):
            # A tensor even when unmixed: Lightning would copy a Python number to the device.
            # The weights may be a strided view (per-sample lam is a column of the Beta
            # sampler's pairs), and a mean sums a view in another order than a contiguous
            # copy: `contiguous` keeps the logged mean's bits whatever the path made them.
            lam = (
                torch.ones((), device=items.x.device)
                if mixed is None
                else mixed.weights.contiguous().mean()
            )
            # `lam-<Callback>` like LearningRateMonitor's `lr-<Optimizer>`; a tensor, no sync.
            name, batch_size = f"lam-{self._LOG_NAME}", items.x.shape[0]
            pl_module.log(name, lam, on_step=True, on_epoch=False, batch_size=batch_size)
        if (
            self.save_grid
            and mixed is not None
            and trainer.current_epoch != self._grid_epoch
            and trainer.is_global_zero
        ):
            self._grid_epoch = trainer.current_epoch
            x, targets = batch[items.input_key], batch[items.target_key]
            save_grid(trainer, x, targets, self._LOG_NAME, self.grid_samples)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self._seed, "batches": self._batches}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._seed = state_dict["seed"]
        self._batches = state_dict["batches"]
        self._ahead.clear()

    def _read(self, batch: Any) -> BatchItems:
        """The batch's inputs and targets, checked, with errors naming the callback."""
        with errors_named(self):
            items = read_batch(
                batch,
                (self.input_key, self.target_key),
                self._classes,
                owner=type(self).__name__,
                inplace=self.inplace,
                check_layout=self._check_layout,
                check_labels=not self._labels_checked,
            )
        self._labels_checked = self._labels_checked or not items.y.is_floating_point()
        return items

    def _targets(self, items: BatchItems) -> Tensor:
        """The batch's float32 soft targets, before anything is mixed.

        On the CPU the range of integer labels is checked here, by the op that makes the
        one-hot rows itself, which refuses an index outside ``[0, num_classes)``: a separate
        check would add three ops to every batch (on small batches each op's fixed cost
        counts, ``benchmarks/RESULTS.md``), and its error is turned into the check's
        ``ValueError``.
        On an accelerator ``_read`` checks the first batch's labels (the op would only trip
        a device-side assert).
        """
        try:
            return _soft_targets(items.y, items.num_classes, self.label_smoothing)
        except (RuntimeError, IndexError):
            if items.y.is_floating_point() or items.y.device.type != "cpu":
                raise
            with errors_named(self):
                check_label_range(items.y, items.num_classes, f"batch[{items.target_key!r}]")
            raise

    def _check_layout(self, x: Tensor, name: str) -> None:
        """Raises if ``x`` (the batch item called ``name``) has too few dims for a method."""
        for kernel in self._methods.kernels:
            kernel.check_layout(x, name)

    def _randomness(self, device: torch.device, count: int) -> BatchRandomness:
        """The sources of the randomness of batch ``count``, reseeded from (seed, rank, batch
        count, callback)."""
        if self._seed is None:  # used outside `Trainer.fit`
            self._seed = self._run_seed()
        key = f"{self._seed}/{self._rank}/{count}/{self._LOG_NAME}"
        return self._random.for_batch(key, device)

    def _run_seed(self) -> int:
        """``seed`` if given, else the run's seed."""
        return run_seed() if self.seed is None else self.seed

    def _mix(self, x: Tensor, count: int) -> Mixed | None:
        """Samples the mix of batch ``count`` (or takes it from those drawn ahead, on small
        CPU batches: :mod:`~lightning_recipes.callbacks.mixing._ahead`), then applies it;
        None leaves the batch unmixed."""
        if self._ahead.pays(x):
            mix = self._ahead.take(count, x, lambda counts: self._draw_ahead(x, counts))
            return None if mix is None else mix(x, self.inplace)
        draw = self._draw(x, count)
        return None if draw is None else apply_mix(self._methods, x, draw, self.inplace)

    def _draw(self, x: Tensor, count: int) -> Draw | None:
        """Draws the coin of ``p``, the method, lam and partners of batch ``count``."""
        randomness = self._randomness(x.device, count)
        return draw_mix(self._methods, self.p, self.per_sample, x.shape[0], randomness, x.device)

    def _draw_ahead(self, x: Tensor, counts: Sequence[int]) -> list[Mix]:
        """The whole mixes of the batches ``counts`` of ``x``'s shape, drawn now (see
        ``_mix``): each batch's draws from its own reseeded sources, in turn, then finished
        together."""
        staged = []
        for count in counts:
            draw = self._draw(x, count)
            staged.append(None if draw is None else stage(self._methods, x, draw))
        return finish_staged(x, staged)
