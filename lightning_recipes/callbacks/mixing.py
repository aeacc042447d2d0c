"""Mixed-sample augmentation callbacks: :class:`MixUp`, :class:`CutMix`, :class:`FMix` and
:class:`RandomMix`.

Papers: Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018
(https://arxiv.org/abs/1710.09412); Yun et al., "CutMix: Regularization Strategy to Train
Strong Classifiers with Localizable Features", ICCV 2019 (https://arxiv.org/abs/1905.04899);
Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation", 2020
(https://arxiv.org/abs/2002.12047).

The callbacks only decide *when* to mix and draw the randomness; the mixing itself is
:mod:`lightning_recipes.functional`. They work in ``on_train_batch_start``, after the batch has
reached the device, and replace the input and the targets inside the (list or dict) batch, so
``training_step`` receives the mixed inputs and float32 soft targets of shape
``(batch, num_classes)``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import random
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_recipes._compat import should_update_logs
from lightning_recipes._validation import (
    check_alpha,
    check_bool,
    check_decay_power,
    check_inplace,
    check_input,
    check_label_range,
    check_label_smoothing,
    check_max_soft,
    check_num_classes,
    check_probability,
    check_real,
    check_spatial_dims,
    check_targets,
    resolve_spatial_dims,
)
from lightning_recipes.functional.blend import _blend_finite
from lightning_recipes.functional.cutmix import _cutmix_mask, _paste_box, cutmix
from lightning_recipes.functional.fmix import _fmix_mask, fmix
from lightning_recipes.functional.mixup import _mixup_weight, mixup
from lightning_recipes.functional.sampling import _sample_beta, sample_lam, sample_partners
from lightning_recipes.functional.targets import _mix_soft_targets, _soft_targets

__all__ = ["CutMix", "FMix", "MixUp", "RandomMix"]

Key = int | str
# Keys tried, in order, when a dict batch is mixed and no key was given.
_INPUT_KEYS = ("input", "image", "images", "pixel_values", "x")
_TARGET_KEYS = ("target", "label", "labels", "y")
_METHODS = ("mixup", "cutmix", "fmix")


class _Generators(NamedTuple):
    """The sources of one batch's randomness, all reseeded from the same per-batch seed.

    ``python`` draws the per-batch numbers (the coin of ``p``, lam, RandomMix's method): a
    Python float from it costs a microsecond, from a tensor op some 30 and more; ``cpu``
    draws the CutMix box of a per-batch lam (the functional core takes a ``torch.Generator``);
    ``device`` draws everything else on the data's device. On the CPU ``cpu`` and ``device``
    are the same generator.
    """

    python: random.Random
    cpu: torch.Generator
    device: torch.Generator


class _Mixed(NamedTuple):
    """A mixed input, the weight of each sample itself ``(batch,)`` and the partners."""

    x: Tensor
    weights: Tensor
    perm: Tensor


@contextlib.contextmanager
def _errors_named(name: str) -> Iterator[None]:
    """Prefixes the message of a ``ValueError`` / ``TypeError`` raised inside with ``name``."""
    try:
        yield
    except (ValueError, TypeError) as error:
        message = str(error)
        if message.startswith(f"{name}: "):  # a subclass's __init__ around its parent's
            raise
        raise type(error)(f"{name}: {message}").with_traceback(error.__traceback__) from None


def _naming_errors(init: Callable[..., None]) -> Callable[..., None]:
    """``__init__`` whose argument errors start with the class name of the instance."""

    @functools.wraps(init)  # keeps the signature that LightningCLI / jsonargparse read
    def wrapped(self: _MixCallback, *args: Any, **kwargs: Any) -> None:
        with _errors_named(type(self).__name__):
            init(self, *args, **kwargs)

    return wrapped


class _MixCallback(Callback):
    """What the mixing callbacks share: batch access, randomness, schedule, logging.

    Subclasses implement :meth:`_apply` (one method) or override :meth:`_mix`.
    """

    _LOG_NAME: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Argument errors name the callback ("CutMix: `alpha` must be > 0, got -1.0"): in a
        # config with several callbacks a bare "`alpha` must be > 0" does not say whose.
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _naming_errors(cls.__dict__["__init__"])  # type: ignore[misc]

    def __init__(
        self,
        *,
        p: float,
        per_sample: bool,
        label_smoothing: float,
        num_classes: int | None,
        stop_epoch: int | None,
        stop_fraction: float | None,
        input_key: Key | None,
        target_key: Key | None,
        seed: int | None,
        save_grid: bool,
        grid_samples: int,
        inplace: bool,
    ) -> None:
        super().__init__()
        self.p = check_probability(p)
        self.inplace = check_bool(inplace, "inplace")
        self.per_sample = check_bool(per_sample, "per_sample")
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.num_classes = check_num_classes(num_classes)
        if stop_epoch is not None and stop_fraction is not None:
            raise ValueError(
                "`stop_epoch` and `stop_fraction` are two ways to set the same end point; pass"
                f" one, got stop_epoch={stop_epoch} and stop_fraction={stop_fraction}"
            )
        if stop_epoch is not None and (
            isinstance(stop_epoch, bool) or not isinstance(stop_epoch, int) or stop_epoch < 0
        ):
            raise ValueError(f"`stop_epoch` must be None or an integer >= 0, got {stop_epoch!r}")
        if stop_fraction is not None and not 0.0 < check_real(stop_fraction, "stop_fraction") <= 1:
            raise ValueError(f"`stop_fraction` must be None or in (0, 1], got {stop_fraction}")
        self.stop_epoch = stop_epoch
        self.stop_fraction = stop_fraction
        for name, key in (("input_key", input_key), ("target_key", target_key)):
            if key is not None and (isinstance(key, bool) or not isinstance(key, int | str)):
                raise TypeError(
                    f"`{name}` must be None, an int (list batch) or a str (dict batch), got {key!r}"
                )
        self.input_key = input_key
        self.target_key = target_key
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"`seed` must be None or an int, got {seed!r}")
        self.seed = seed
        self.save_grid = check_bool(save_grid, "save_grid")
        if isinstance(grid_samples, bool) or not isinstance(grid_samples, int) or grid_samples < 1:
            raise ValueError(f"`grid_samples` must be an integer >= 1, got {grid_samples!r}")
        self.grid_samples = grid_samples

        # Run state. `_seed` and `_batches` are all the randomness depends on (with the rank),
        # and both go into checkpoints.
        self._seed: int | None = None
        self._batches = 0
        self._rank = 0
        self._classes: int | None = num_classes
        self._labels_checked = False
        self._stop_step = math.inf
        self._grid_epoch = -1
        self._random = random.Random()
        self._cpu_generator = torch.Generator()
        self._device_generator: torch.Generator | None = None

    # ------------------------------------------------------------------ Lightning hooks

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(input_key=self.input_key, target_key=self.target_key)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # The run's seed (`seed_everything` exports it to every process) unless one was given;
        # the rank enters each draw, so DDP processes mix differently. A resumed run
        # overwrites both from the checkpoint in `load_state_dict`, which Lightning calls
        # after `setup`.
        if self.seed is not None:
            self._seed = self.seed
        else:
            self._seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        self._rank = trainer.global_rank
        self._classes = self.num_classes or _module_num_classes(pl_module)
        self._labels_checked = False
        self._grid_epoch = -1

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_step = math.inf
        if self.stop_fraction is not None:
            total = trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError(
                    f"{type(self).__name__}: `stop_fraction` needs a run of known length (set"
                    f" `max_epochs` or `max_steps`), got estimated_stepping_batches={total}"
                )
            self._stop_step = self.stop_fraction * total

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        with _errors_named(type(self).__name__):
            input_key, target_key, x, y, num_classes = self._read(batch)
        generator = self._generator_for(x.device)
        self._batches += 1
        mixed = self._mix(x, generator) if x.shape[0] > 1 and self._active(trainer) else None
        # The targets were checked in `_read`, so the unchecked target functions do.
        targets = _soft_targets(y, num_classes, self.label_smoothing)
        if mixed is None:
            batch[target_key] = targets
        else:
            batch[input_key] = mixed.x
            batch[target_key] = _mix_soft_targets(targets, mixed.weights, mixed.perm)
        if _should_log(trainer):
            # A tensor even when unmixed: Lightning would copy a Python number to the device.
            lam = torch.ones((), device=x.device) if mixed is None else mixed.weights.mean()
            # `lam-<Callback>` like LearningRateMonitor's `lr-<Optimizer>`; a tensor, no sync.
            pl_module.log(
                f"lam-{self._LOG_NAME}", lam, on_step=True, on_epoch=False, batch_size=x.shape[0]
            )
        if (
            self.save_grid
            and mixed is not None
            and trainer.current_epoch != self._grid_epoch
            and trainer.is_global_zero
        ):
            self._grid_epoch = trainer.current_epoch
            self._log_grid(trainer, batch[input_key], batch[target_key])

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self._seed, "batches": self._batches}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._seed = state_dict["seed"]
        self._batches = state_dict["batches"]

    def __getstate__(self) -> dict[str, Any]:
        # `strategy="ddp_spawn"` sends the callbacks to each process through torch's
        # multiprocessing pickler, which cannot rebuild a `torch.Generator` there (the child
        # dies unpickling it). The generators hold nothing worth keeping: `_generator_for`
        # reseeds them from (seed, rank, batch count) before every batch.
        state = self.__dict__.copy()
        state["_cpu_generator"] = None
        state["_device_generator"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cpu_generator = torch.Generator()

    # ------------------------------------------------------------------ mixing

    def _check_layout(self, x: Tensor, name: str) -> None:
        """Raises if ``x`` has too few dims for the callback's method(s)."""

    def _mix(self, x: Tensor, generator: _Generators) -> _Mixed | None:
        """Draws the randomness and mixes ``x``, or returns ``None`` to leave the batch
        unmixed."""
        raise NotImplementedError

    def _per_sample_lam(
        self, alpha: float | Tensor, batch_size: int, generator: torch.Generator
    ) -> Tensor:
        """lam per sample, on the generator's device; 1 (unmixed) with probability ``1 - p``."""
        device = generator.device
        if isinstance(alpha, Tensor):  # one alpha per sample (RandomMix)
            lam = _sample_beta(alpha.unsqueeze(-1).expand(batch_size, 2).contiguous(), generator)
        else:
            lam = sample_lam(alpha, (batch_size,), generator=generator, device=device)
        if self.p < 1.0:
            keep = torch.rand(batch_size, generator=generator, device=device) < self.p
            lam = torch.where(keep, lam, 1.0)
        return lam

    def _skip_batch(self, generator: _Generators) -> bool:
        """The per-batch coin of ``p``, drawn on the host: reading it costs no sync."""
        return self.p < 1.0 and generator.python.random() >= self.p

    # ------------------------------------------------------------------ helpers

    def _read(self, batch: Any) -> tuple[Key, Key, Tensor, Tensor, int]:
        """The keys, inputs, targets and number of classes of a batch, checked; metadata only,
        except the label range (free on the CPU, once per run on an accelerator)."""
        input_key, target_key = self._keys(batch)
        x_name, y_name = f"batch[{input_key!r}]", f"batch[{target_key!r}]"
        x = check_input(batch[input_key], x_name)
        self._check_layout(x, x_name)
        check_inplace(x, self.inplace, x_name)
        y = batch[target_key]
        if isinstance(y, Tensor) and not y.is_floating_point() and self._classes is None:
            raise ValueError(
                f"`num_classes` is needed to turn the integer labels {y_name} into soft targets:"
                f" pass `num_classes` to {type(self).__name__} or give the LightningModule a"
                " `num_classes` attribute or hyperparameter, got None"
            )
        num_classes = check_targets(y, x.shape[0], self._classes, y_name)
        if not y.is_floating_point() and (y.device.type == "cpu" or not self._labels_checked):
            check_label_range(y, num_classes, y_name)
            self._labels_checked = True
        return input_key, target_key, x, y, num_classes

    def _keys(self, batch: Any) -> tuple[Key, Key]:
        name = type(self).__name__
        if isinstance(batch, list):
            keys = (
                0 if self.input_key is None else self.input_key,
                1 if self.target_key is None else self.target_key,
            )
            for arg, key in zip(("input_key", "target_key"), keys, strict=True):
                if not isinstance(key, int) or not -len(batch) <= key < len(batch):
                    raise ValueError(
                        f"`{arg}` must be an index into the list batch of length {len(batch)},"
                        f" got {key!r}"
                    )
            return keys
        if isinstance(batch, MutableMapping):
            input_key = self.input_key
            if input_key is None:
                input_key = _first_key(batch, _INPUT_KEYS, "input_key")
            target_key = self.target_key
            if target_key is None:
                target_key = _first_key(batch, _TARGET_KEYS, "target_key")
            for arg, key in (("input_key", input_key), ("target_key", target_key)):
                if key not in batch:
                    raise ValueError(
                        f"`{arg}` must be a key of the dict batch {sorted(map(str, batch))},"
                        f" got {key!r}"
                    )
            return input_key, target_key
        raise TypeError(
            f"{name} mixes the batch in place, so the batch must be a list or a dict, got a"
            f" {type(batch).__name__}; return a list `[x, y]` or a dict from your Dataset or"
            " collate_fn (torch's default collate_fn already turns tuple samples into a list)"
        )

    def _generator_for(self, device: torch.device) -> _Generators:
        """Reseeds the generators for this batch from (seed, rank, batch count, callback)."""
        if self._seed is None:  # used outside `Trainer.fit`
            self._seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        key = f"{self._seed}/{self._rank}/{self._batches}/{self._LOG_NAME}".encode()
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
        self._random.seed(seed)
        self._cpu_generator.manual_seed(seed)
        if device.type == "cpu":
            return _Generators(self._random, self._cpu_generator, self._cpu_generator)
        if self._device_generator is None or self._device_generator.device != device:
            self._device_generator = torch.Generator(device=device)
        self._device_generator.manual_seed(seed)
        return _Generators(self._random, self._cpu_generator, self._device_generator)

    def _active(self, trainer: pl.Trainer) -> bool:
        if self.stop_epoch is not None and trainer.current_epoch >= self.stop_epoch:
            return False
        return trainer.global_step < self._stop_step

    def _log_grid(self, trainer: pl.Trainer, x: Tensor, targets: Tensor) -> None:
        from lightning_recipes.callbacks._mixing_grid import render_grid

        if x.ndim != 4:
            rank_zero_warn(
                f"{type(self).__name__}(save_grid=True) draws 2-D images of shape (batch,"
                f" channels, height, width), got shape {tuple(x.shape)}; no grid is saved."
            )
            return
        epoch = trainer.current_epoch
        figure = render_grid(
            x[: self.grid_samples], targets[: self.grid_samples], f"{self._LOG_NAME}, epoch {epoch}"
        )
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "mix_grids"
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / f"{self._LOG_NAME}-epoch={epoch:03d}.png", dpi=100)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_figure"):  # TensorBoard
            experiment.add_figure(f"mix_grid-{self._LOG_NAME}", figure, trainer.global_step)


class _SingleMix(_MixCallback):
    """A callback applying one method; subclasses give ``alpha`` and :meth:`_apply`."""

    alpha: float

    @override
    def _mix(self, x: Tensor, generator: _Generators) -> _Mixed | None:
        batch_size = x.shape[0]
        if self.per_sample:
            lam: float | Tensor = self._per_sample_lam(self.alpha, batch_size, generator.device)
        elif self._skip_batch(generator):
            return None
        else:
            lam = generator.python.betavariate(self.alpha, self.alpha)
        perm = sample_partners(batch_size, generator=generator.device, device=x.device)
        return _Mixed(*self._apply(x, lam, perm, generator), perm)

    def _apply(
        self, x: Tensor, lam: float | Tensor, perm: Tensor, generator: _Generators
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class MixUp(_SingleMix):
    """Mixes training batches with MixUp: ``lam * x_i + (1 - lam) * x_perm(i)``.

    ``lam ~ Beta(alpha, alpha)``, drawn once per batch or, with ``per_sample=True``, per
    sample. Integer labels become float32 soft targets ``(batch, num_classes)`` whose rows sum
    to 1; one-hot, soft and multi-hot float targets are mixed as they are. Each sample is mixed
    with a different one (a random cycle through the batch), so odd batch sizes work; a batch
    of one passes through unmixed (its targets still become soft). Inputs keep their dtype and
    memory format; validation, test and predict batches are never touched.

    Args:
        alpha: Concentration of ``Beta(alpha, alpha)``, > 0; 1 (default, uniform) as in
            timm and torchvision. The paper uses 0.1 to 0.4 on ImageNet, 1 on CIFAR-10.
        p: Probability that a batch is mixed (that a sample is, with ``per_sample=True``).
            Unmixed batches still get soft targets, so ``training_step`` sees one format.
        per_sample: Draw lam (and CutMix boxes, FMix masks) per sample instead of per
            batch, vectorised on the device.
        label_smoothing: Target smoothing ``t * (1 - s) + s / C``, the definition of
            ``F.cross_entropy``; 0 (default) changes no target silently.
        num_classes: Number of classes, needed for integer labels; default: the
            LightningModule's ``num_classes`` attribute or hyperparameter.
        stop_epoch: Mix only in epochs before this one (0-based), so the last epochs train
            on clean data.
        stop_fraction: Mix only during this fraction of the optimizer steps
            (``trainer.estimated_stepping_batches``); exclusive with ``stop_epoch``.
        input_key: Index (list batch) or key (dict batch) of the inputs; default 0, or the
            first of ``"input"``, ``"image"``, ``"images"``, ``"pixel_values"``, ``"x"``.
        target_key: Index or key of the targets; default 1, or the first of ``"target"``,
            ``"label"``, ``"labels"``, ``"y"``.
        seed: Seed of the mixing; default the run's seed (``seed_everything``). Each process
            combines it with its rank; the state is saved in checkpoints.
        save_grid: Once per epoch, save a PNG grid of mixed training images with the top
            classes of their soft targets to ``<log_dir>/mix_grids`` (and add it to a
            TensorBoard logger). Costs one device-to-host copy per epoch.
        grid_samples: Images in the grid.
        inplace: Write the mixed inputs into the batch's own input tensor, as timm's
            ``Mixup`` does, instead of a new tensor. Per-batch CutMix then copies only the
            box (about half the time of the default); for the other methods the cost is the
            same. Only for batches with a tensor of their own, which torch's default
            ``collate_fn`` and the copy to an accelerator give; a view of another tensor
            (e.g. a slice of a Dataset's stored images) is refused with an error.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[MixUp(alpha=0.4, stop_fraction=0.9)], logger=False)
    """

    _LOG_NAME = "MixUp"

    def __init__(
        self,
        alpha: float = 1.0,
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
        super().__init__(
            p=p,
            per_sample=per_sample,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
            stop_epoch=stop_epoch,
            stop_fraction=stop_fraction,
            input_key=input_key,
            target_key=target_key,
            seed=seed,
            save_grid=save_grid,
            grid_samples=grid_samples,
            inplace=inplace,
        )
        self.alpha = check_alpha(alpha)

    @override
    def _apply(
        self, x: Tensor, lam: float | Tensor, perm: Tensor, generator: _Generators
    ) -> tuple[Tensor, Tensor]:
        return mixup(x, lam, perm, inplace=self.inplace)


class CutMix(_SingleMix):
    """Mixes training batches with CutMix: a box of the partner is pasted into each sample.

    The box covers ``1 - lam`` of the input, ``lam ~ Beta(alpha, alpha)``, and is clipped at
    the border; the targets are weighted by the area actually pasted (``correct_lam``).
    Works on 1-D, 2-D and 3-D inputs ``(batch, channels, *spatial)``.

    Args:
        alpha: Concentration of ``Beta(alpha, alpha)``, > 0; the paper uses 1.
        correct_lam: Weight targets by the clipped box's area (default) rather than the
            sampled lam.
        spatial_dims: Number of trailing spatial dims; default ``x.ndim - 2``.

    The other arguments (``p``, ``per_sample``, ``label_smoothing``, ``num_classes``,
    ``stop_epoch``, ``stop_fraction``, ``input_key``, ``target_key``, ``seed``, ``save_grid``,
    ``grid_samples``, ``inplace``) are as for :class:`MixUp`.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[CutMix(alpha=1.0, per_sample=True)], logger=False)
    """

    _LOG_NAME = "CutMix"

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        correct_lam: bool = True,
        spatial_dims: int | None = None,
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
        super().__init__(
            p=p,
            per_sample=per_sample,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
            stop_epoch=stop_epoch,
            stop_fraction=stop_fraction,
            input_key=input_key,
            target_key=target_key,
            seed=seed,
            save_grid=save_grid,
            grid_samples=grid_samples,
            inplace=inplace,
        )
        self.alpha = check_alpha(alpha)
        self.correct_lam = check_bool(correct_lam, "correct_lam")
        self.spatial_dims = check_spatial_dims(spatial_dims)

    @override
    def _check_layout(self, x: Tensor, name: str) -> None:
        resolve_spatial_dims(x, self.spatial_dims, "cutmix", name)

    @override
    def _apply(
        self, x: Tensor, lam: float | Tensor, perm: Tensor, generator: _Generators
    ) -> tuple[Tensor, Tensor]:
        return cutmix(
            x,
            lam,
            perm,
            generator=generator.device if isinstance(lam, Tensor) else generator.cpu,
            correct_lam=self.correct_lam,
            spatial_dims=self.spatial_dims,
            inplace=self.inplace,
        )


class FMix(_SingleMix):
    """Mixes training batches with FMix: a binarised low-frequency Fourier mask per batch or
    per sample selects which parts come from the partner.

    The mask has exactly ``round(lam * N)`` ones, ``lam ~ Beta(alpha, alpha)``, and the targets
    are weighted by its mean. Works on 1-D (audio, sequences), 2-D and 3-D inputs of any size.

    Args:
        alpha: Concentration of ``Beta(alpha, alpha)``, > 0; the paper uses 1.
        decay_power: Decay ``d`` of the ``1 / f**d`` spectrum, > 0; the paper's default 3.
        max_soft: Soft edge of the mask as a fraction of its size, in [0, 0.5]; 0 (default)
            gives binary masks.
        spatial_dims: Number of trailing spatial dims; default ``x.ndim - 2``: 1 for audio
            ``(batch, channels, time)``, 3 for volumes ``(batch, channels, D, H, W)``.

    The other arguments (``p``, ``per_sample``, ``label_smoothing``, ``num_classes``,
    ``stop_epoch``, ``stop_fraction``, ``input_key``, ``target_key``, ``seed``, ``save_grid``,
    ``grid_samples``, ``inplace``) are as for :class:`MixUp`.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[FMix(alpha=1.0, decay_power=3.0)], logger=False)
    """

    _LOG_NAME = "FMix"

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        decay_power: float = 3.0,
        max_soft: float = 0.0,
        spatial_dims: int | None = None,
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
        super().__init__(
            p=p,
            per_sample=per_sample,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
            stop_epoch=stop_epoch,
            stop_fraction=stop_fraction,
            input_key=input_key,
            target_key=target_key,
            seed=seed,
            save_grid=save_grid,
            grid_samples=grid_samples,
            inplace=inplace,
        )
        self.alpha = check_alpha(alpha)
        self.decay_power = check_decay_power(decay_power)
        self.max_soft = check_max_soft(max_soft)
        self.spatial_dims = check_spatial_dims(spatial_dims)

    @override
    def _check_layout(self, x: Tensor, name: str) -> None:
        resolve_spatial_dims(x, self.spatial_dims, "fmix", name)

    @override
    def _apply(
        self, x: Tensor, lam: float | Tensor, perm: Tensor, generator: _Generators
    ) -> tuple[Tensor, Tensor]:
        return fmix(
            x,
            lam,
            perm,
            decay_power=self.decay_power,
            max_soft=self.max_soft,
            generator=generator.device,
            spatial_dims=self.spatial_dims,
            inplace=self.inplace,
        )


class RandomMix(_MixCallback):
    """Picks MixUp, CutMix or FMix at random for each batch (or each sample) and applies it.

    With ``per_sample=True`` every sample gets its own method and lam in one vectorised step:
    the weight maps of all methods in ``probs`` are computed for the whole batch and each
    sample takes its own, so no sample-dependent shapes (and no device sync) arise.

    Args:
        probs: Probability of each method, by name (``"mixup"``, ``"cutmix"``, ``"fmix"``),
            summing to 1; default ``{"mixup": 0.5, "cutmix": 0.5}``, timm's usual choice.
        alpha: ``Beta(alpha, alpha)`` concentration, one for all methods or one per name
            (e.g. ``{"mixup": 0.8, "cutmix": 1.0}``); missing names get 1.
        correct_lam: See :class:`CutMix`.
        decay_power: See :class:`FMix`.
        max_soft: See :class:`FMix`.
        spatial_dims: Number of trailing spatial dims; default ``x.ndim - 2``.

    The other arguments (``p``, ``per_sample``, ``label_smoothing``, ``num_classes``,
    ``stop_epoch``, ``stop_fraction``, ``input_key``, ``target_key``, ``seed``, ``save_grid``,
    ``grid_samples``, ``inplace``) are as for :class:`MixUp`.

    Example:
        >>> import lightning.pytorch as pl
        >>> mix = RandomMix({"mixup": 0.5, "cutmix": 0.3, "fmix": 0.2}, alpha={"mixup": 0.8})
        >>> trainer = pl.Trainer(callbacks=[mix], logger=False)
    """

    _LOG_NAME = "RandomMix"

    def __init__(
        self,
        probs: dict[str, float] | None = None,
        *,
        alpha: float | dict[str, float] = 1.0,
        correct_lam: bool = True,
        decay_power: float = 3.0,
        max_soft: float = 0.0,
        spatial_dims: int | None = None,
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
        super().__init__(
            p=p,
            per_sample=per_sample,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
            stop_epoch=stop_epoch,
            stop_fraction=stop_fraction,
            input_key=input_key,
            target_key=target_key,
            seed=seed,
            save_grid=save_grid,
            grid_samples=grid_samples,
            inplace=inplace,
        )
        probs = {"mixup": 0.5, "cutmix": 0.5} if probs is None else dict(probs)
        unknown = sorted(set(probs) - set(_METHODS))
        if unknown:
            raise ValueError(f"`probs` keys must be among {_METHODS}, got {unknown}")
        for name, value in probs.items():
            if check_real(value, f"probs[{name!r}]") < 0:
                raise ValueError(f"`probs[{name!r}]` must be >= 0, got {value}")
        if abs(sum(probs.values()) - 1.0) > 1e-6:
            raise ValueError(f"`probs` must sum to 1, got {sum(probs.values())} for {probs}")
        self.probs = probs
        self.methods = tuple(m for m in _METHODS if probs.get(m, 0.0) > 0)
        if isinstance(alpha, dict):
            unknown = sorted(set(alpha) - set(_METHODS))
            if unknown:
                raise ValueError(f"`alpha` keys must be among {_METHODS}, got {unknown}")
            self.alpha = {m: check_alpha(alpha.get(m, 1.0), f"alpha[{m!r}]") for m in _METHODS}
        else:
            self.alpha = dict.fromkeys(_METHODS, check_alpha(alpha))
        self.correct_lam = check_bool(correct_lam, "correct_lam")
        self.decay_power = check_decay_power(decay_power)
        self.max_soft = check_max_soft(max_soft)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        # Upper ends of each method's interval of [0, 1), for drawing methods by inversion.
        ends = [sum(probs[m] for m in self.methods[: i + 1]) for i in range(len(self.methods))]
        self._cumulative = ends[:-1]

    @override
    def _check_layout(self, x: Tensor, name: str) -> None:
        for method in self.methods:
            if method != "mixup":
                resolve_spatial_dims(x, self.spatial_dims, method, name)

    @override
    def _mix(self, x: Tensor, generator: _Generators) -> _Mixed | None:
        batch_size = x.shape[0]
        if not self.per_sample:
            if self._skip_batch(generator):
                return None
            u = generator.python.random()
            method = self.methods[sum(u >= end for end in self._cumulative)]
            alpha = self.alpha[method]
            lam = generator.python.betavariate(alpha, alpha)
            perm = sample_partners(batch_size, generator=generator.device, device=x.device)
            if method == "cutmix" and self.inplace:  # only the box is copied
                mixed, weights = _paste_box(
                    x, lam, perm, generator.cpu, self.correct_lam, self.spatial_dims
                )
                return _Mixed(mixed, weights, perm)
            weight_map, weights = self._weight_map(method, x, lam, generator)
            return _Mixed(*_blend_finite(x, perm, weight_map, weights, self.inplace), perm)

        gen = generator.device
        u = torch.rand(batch_size, generator=gen, device=x.device)
        choice = torch.zeros(batch_size, dtype=torch.long, device=x.device)
        for end in self._cumulative:  # a loop over the (at most 3) methods
            choice += u >= end
        alphas = [self.alpha[m] for m in self.methods]
        if len(set(alphas)) == 1:
            alpha: float | Tensor = alphas[0]
        else:
            alpha = torch.full((batch_size,), alphas[-1], device=x.device)
            for index, value in enumerate(alphas[:-1]):
                alpha = torch.where(choice == index, value, alpha)
        lam = self._per_sample_lam(alpha, batch_size, gen)
        perm = sample_partners(batch_size, generator=gen, device=x.device)
        # Each method maps the samples that did not choose it with lam = 1: weight 1
        # everywhere (no box, a full mask). A sample's map is then the product of all
        # methods' maps, and its weight the product of their weights: one multiplication per
        # extra method instead of a `where` over the full masks.
        maps, weights = [], []
        for index, method in enumerate(self.methods):
            method_lam = torch.where(choice == index, lam, 1.0)
            method_map, method_weights = self._weight_map(method, x, method_lam, generator)
            maps.append(method_map)
            weights.append(method_weights)
        weight_map, weight = functools.reduce(torch.mul, maps), functools.reduce(torch.mul, weights)
        return _Mixed(*_blend_finite(x, perm, weight_map, weight, self.inplace), perm)

    def _weight_map(
        self, method: str, x: Tensor, lam: float | Tensor, generator: _Generators
    ) -> tuple[float | Tensor, Tensor]:
        """The weight of each sample itself, broadcastable to ``x``, and its float32 mean."""
        if method == "mixup":
            return _mixup_weight(x, lam)
        if method == "cutmix":
            return _cutmix_mask(
                x,
                lam,
                generator=generator.device if isinstance(lam, Tensor) else generator.cpu,
                correct_lam=self.correct_lam,
                spatial_dims=self.spatial_dims,
            )
        return _fmix_mask(
            x,
            lam,
            decay_power=self.decay_power,
            max_soft=self.max_soft,
            generator=generator.device,
            spatial_dims=self.spatial_dims,
        )


def _should_log(trainer: pl.Trainer) -> bool:
    """Whether Lightning sends this step's metrics to the loggers (every `log_every_n_steps`).

    ``self.log`` costs about a millisecond on the CPU, a few percent of a small model's step,
    and on-step values of other steps never reach a logger; Lightning's own
    ``LearningRateMonitor`` and ``ThroughputMonitor`` skip them the same way.
    """
    return should_update_logs(trainer) or bool(trainer.fast_dev_run)


def _first_key(batch: MutableMapping, candidates: tuple[str, ...], arg: str) -> str:
    for key in candidates:
        if key in batch:
            return key
    raise ValueError(
        f"`{arg}` must be given for a dict batch without any of the keys {candidates}, got"
        f" a batch with keys {sorted(map(str, batch))}"
    )


def _module_num_classes(pl_module: pl.LightningModule) -> int | None:
    value = getattr(pl_module, "num_classes", None)
    if value is None:
        value = getattr(pl_module, "hparams", {}).get("num_classes")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
