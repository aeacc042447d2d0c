"""``OneCycleModule``: a LightningModule base class whose OneCycle schedule is right by default."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR

from lightning_recipes._compat import NORM_LAYERS
from lightning_recipes._validation import check_positive
from lightning_recipes.checkpointing import _is_damaged, _unreadable_error
from lightning_recipes.scheduler import (
    GuardedOneCycleLR,
    _steps_before_swa,
    _steps_of_this_run,
    check_total_steps,
)

__all__ = ["OneCycleModule"]

OptimizerCallable = Callable[[Iterable[Any]], Optimizer]

_NORM_TYPES = (
    *NORM_LAYERS,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)
_OPTIMIZER_NAMES = ("sgd", "adamw")
# Lightning's `_parse_loop_limits` turns `max_epochs=None, max_steps=-1` into this silently.
_LIGHTNING_DEFAULT_MAX_EPOCHS = 1000


class OneCycleModule(pl.LightningModule):
    """A LightningModule that trains with ``OneCycleLR`` stepped once per optimizer step.

    Subclass it, build your network in ``__init__`` (after ``super().__init__(...)``) and write
    ``training_step``; ``configure_optimizers`` is done. It returns the optimizer and a
    :class:`~lightning_recipes.scheduler.GuardedOneCycleLR` with ``"interval": "step"`` whose
    ``total_steps`` is ``trainer.estimated_stepping_batches``, so the schedule ends on the last
    optimizer step for any ``max_epochs``, ``max_steps``, ``limit_train_batches``,
    ``accumulate_grad_batches`` and device count. The count (and the peak) are read when
    training really starts, right before the first optimizer step, after callbacks that change
    them in ``on_fit_start`` ran: ``BatchSizeFinder`` (another batch size, another step count)
    and ``LearningRateFinder(attr_name="max_lr")`` (a new ``max_lr``; every group's peak,
    ``param_group_max_lr`` included, scales by the same factor). With
    ``StochasticWeightAveraging`` the cycle spans the epochs before ``swa_epoch_start`` and
    anneals to ``min_lr`` there; SWALR takes over from that epoch.

    No hook needs ``super()``: the schedule, the AMP skip handling and the resume check live in
    ``configure_optimizers`` and in the scheduler object, never in ``on_train_start``,
    ``on_before_optimizer_step``, ``on_load_checkpoint`` or other hooks you may override. If you
    override ``configure_optimizers`` (for example to add a second optimizer), build the
    OneCycle part with :meth:`onecycle_param_groups`, :meth:`build_optimizer` and
    :meth:`onecycle_scheduler`; returning no OneCycle scheduler from this class, a plain torch
    ``OneCycleLR`` or one stepped per epoch raises a ``TypeError``/``ValueError`` at fit start.

    Args:
        max_lr: Peak learning rate of the cycle. OneCycle starts at
            ``initial_lr = max_lr / div_factor`` and ends at
            ``min_lr = initial_lr / final_div_factor``; the optimizer's own ``lr`` is overwritten.
        optimizer: ``"sgd"`` (Nesterov momentum), ``"adamw"``, or any callable that takes
            parameter groups and returns an optimizer (in YAML, a ``class_path`` such as
            ``torch.optim.RAdam`` with its ``init_args``).
        weight_decay: Weight decay of the decayed groups.
        decay_norm_and_bias: If ``False`` (default), biases, normalisation-layer parameters
            and other 0-d/1-d parameters get no weight decay. If ``True``, normalisation
            weights, biases and other 1-d parameters are decayed too; 0-d parameters never are.
            Lazy parameters (``nn.LazyLinear``, ``nn.LazyConv2d``, ...) not yet materialised
            are grouped by what they become: weights decayed, biases and norm parameters not.
        param_group_max_lr: Per-group peak learning rates by parameter-name prefix, e.g.
            ``{"backbone.": 0.01}`` trains the backbone with a ten times smaller cycle than a
            head at ``max_lr=0.1``. The longest matching prefix wins.
        pct_start: Fraction of the cycle spent increasing the learning rate.
        div_factor: ``initial_lr = max_lr / div_factor``.
        final_div_factor: ``min_lr = initial_lr / final_div_factor``.
        three_phase: torch's three-phase variant (fastai's original schedule).
        anneal_strategy: ``"cos"`` or ``"linear"``.
        cycle_momentum: Cycle momentum (SGD) or beta1 (Adam family) inversely to the LR.
        base_momentum: Lowest momentum, reached at the LR peak.
        max_momentum: Highest momentum, at the start and the end.
        on_skipped_step: ``"hold"`` (default) keeps the schedule in place when mixed precision
            skips an optimizer step, so scheduler steps equal real updates; ``"advance"`` is
            Lightning's behaviour.
        on_schedule_mismatch: ``"error"`` (default) stops a resume whose total step count
            differs from the checkpoint's; ``"rescale"`` keeps the progress fraction and ends the
            schedule exactly at the new total.

    Example:
        >>> class Regressor(OneCycleModule):
        ...     def __init__(self, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.net = torch.nn.Linear(4, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return torch.nn.functional.mse_loss(self.net(x), y)
        >>> model = Regressor(max_lr=0.05, optimizer="adamw")
        >>> model.hparams.max_lr
        0.05
    """

    def __init__(
        self,
        *,
        max_lr: float = 0.1,
        optimizer: str | OptimizerCallable = "sgd",
        weight_decay: float = 5e-4,
        decay_norm_and_bias: bool = False,
        param_group_max_lr: dict[str, float] | None = None,
        pct_start: float = 0.25,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        on_skipped_step: Literal["hold", "advance"] = "hold",
        on_schedule_mismatch: Literal["error", "rescale"] = "error",
    ) -> None:
        super().__init__()
        check_positive(max_lr, "max_lr")
        for prefix, lr in (param_group_max_lr or {}).items():
            check_positive(lr, f"param_group_max_lr[{prefix!r}]")
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}")
        if isinstance(optimizer, str) and optimizer not in _OPTIMIZER_NAMES:
            raise ValueError(
                f"`optimizer` must be one of {_OPTIMIZER_NAMES} or a callable that takes"
                f" parameter groups and returns a torch.optim.Optimizer, got {optimizer!r}"
            )
        if not isinstance(optimizer, str) and not callable(optimizer):
            raise TypeError(
                "`optimizer` must be a string or a callable that takes parameter groups and"
                f" returns a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"`pct_start` must be in (0, 1), got {pct_start}")
        check_positive(div_factor, "div_factor")
        check_positive(final_div_factor, "final_div_factor")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"`anneal_strategy` must be 'cos' or 'linear', got {anneal_strategy!r}"
            )
        if cycle_momentum and not 0.0 <= base_momentum <= max_momentum < 1.0:
            raise ValueError(
                "`base_momentum` <= `max_momentum` < 1 is required when `cycle_momentum=True`,"
                f" got base_momentum={base_momentum}, max_momentum={max_momentum}"
            )
        for name, value, allowed in (
            ("on_skipped_step", on_skipped_step, ("hold", "advance")),
            ("on_schedule_mismatch", on_schedule_mismatch, ("error", "rescale")),
        ):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")
        # A callable optimizer is not a hyperparameter Lightning can store as YAML; the CLI
        # records its class path in the saved config instead.
        self.save_hyperparameters(ignore=[] if isinstance(optimizer, str) else ["optimizer"])
        self.max_lr = max_lr
        self.optimizer_factory = optimizer

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``; a damaged file (truncated, empty, not a
        checkpoint) is a ``ValueError`` naming it instead of torch's unpickling error."""
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except Exception as error:
            if isinstance(checkpoint_path, (str, os.PathLike)) and _is_damaged(checkpoint_path):
                raise _unreadable_error(checkpoint_path, error) from error
            raise

    @property
    def lr(self) -> float:
        """``max_lr`` under the name Lightning's LR finder looks for.

        ``Tuner(trainer).lr_find(model)`` and the ``LearningRateFinder`` callback write their
        suggestion to ``lr`` (or ``learning_rate``); setting ``lr`` sets OneCycle's peak
        ``max_lr`` and scales every ``param_group_max_lr`` peak by the same factor.
        """
        return float(self.max_lr)

    @lr.setter
    def lr(self, value: float) -> None:
        check_positive(value, "lr")
        factor = value / float(self.max_lr)
        self.max_lr = value
        self.hparams["max_lr"] = value
        groups = self.hparams.get("param_group_max_lr")
        if groups:
            self.hparams["param_group_max_lr"] = {k: v * factor for k, v in groups.items()}

    # ------------------------------------------------------------------ building blocks
    def onecycle_param_groups(
        self, named_parameters: Iterable[tuple[str, nn.Parameter]] | None = None
    ) -> list[dict[str, Any]]:
        """Split trainable parameters into groups by peak LR and weight decay.

        Each group carries ``"name"``, ``"params"``, ``"weight_decay"`` and ``"max_lr"``.
        Empty groups are left out. Frozen parameters (``requires_grad=False``) are skipped.

        Args:
            named_parameters: The parameters to group; defaults to ``self.named_parameters()``.
        """
        hp = self.hparams
        prefixes = sorted((hp.get("param_group_max_lr") or {}).items(), key=lambda kv: -len(kv[0]))
        decay_all = bool(hp.get("decay_norm_and_bias"))
        no_decay = _no_decay_names(self)
        groups: dict[tuple[str, bool], dict[str, Any]] = {}
        order = ["", *[p for p, _ in sorted((hp.get("param_group_max_lr") or {}).items())]]
        for name, param in named_parameters or self.named_parameters():
            if not param.requires_grad:
                continue
            prefix = next((p for p, _ in prefixes if name.startswith(p)), "")
            decay = _decays(name, param, no_decay, decay_all)
            key = (prefix, decay)
            if key not in groups:
                lr = dict(prefixes).get(prefix, self.max_lr)
                label = prefix.rstrip(".") or "default"
                groups[key] = {
                    "name": label if decay else f"{label}/no_decay",
                    "params": [],
                    "weight_decay": hp.get("weight_decay", 0.0) if decay else 0.0,
                    "max_lr": lr,
                }
            groups[key]["params"].append(param)
        return [
            groups[(prefix, decay)]
            for prefix in order
            for decay in (True, False)
            if (prefix, decay) in groups
        ]

    def build_optimizer(self, param_groups: list[dict[str, Any]]) -> Optimizer:
        """Create the configured optimizer over ``param_groups``."""
        factory = self.optimizer_factory
        hp = self.hparams
        # Extra keys (`name`, `max_lr`) stay in the groups: torch keeps unknown group keys.
        if factory == "sgd":
            return torch.optim.SGD(
                param_groups, lr=self.max_lr, momentum=hp.max_momentum, nesterov=True
            )
        if factory == "adamw":
            return torch.optim.AdamW(param_groups, lr=self.max_lr, betas=(hp.max_momentum, 0.999))
        optimizer = factory(param_groups)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                "`optimizer` must return a torch.optim.Optimizer when called with parameter"
                f" groups, got {type(optimizer).__name__}"
            )
        return optimizer

    def onecycle_scheduler(self, optimizer: Optimizer, name: str | None = None) -> dict[str, Any]:
        """The Lightning ``lr_scheduler`` config for a OneCycle over ``optimizer``.

        The peak of each param group is its ``"max_lr"`` key if present, else ``max_lr``.

        Raises:
            ValueError: The total number of optimizer steps is infinite or unknown, or the
                optimizer has no momentum/beta1 while ``cycle_momentum=True``.
        """
        hp = self.hparams
        trainer = self.trainer
        total = check_total_steps(trainer.estimated_stepping_batches, trainer)
        if trainer.max_epochs == _LIGHTNING_DEFAULT_MAX_EPOCHS and trainer.max_steps == -1:
            rank_zero_warn(
                f"The OneCycle schedule spans {total} optimizer steps because"
                f" `max_epochs={_LIGHTNING_DEFAULT_MAX_EPOCHS}`, which is what Lightning uses"
                " when neither `max_epochs` nor `max_steps` is set. The LR will barely leave"
                " its warm-up in a shorter run: set `max_epochs` or `max_steps` to the length"
                " you will really train."
            )
        group = optimizer.param_groups[0]
        if hp.cycle_momentum and "momentum" not in group and "betas" not in group:
            raise ValueError(
                f"`cycle_momentum=True` needs an optimizer with momentum or betas, but"
                f" {type(optimizer).__name__} has neither. Set `cycle_momentum=False`."
            )
        peaks = [g.get("max_lr", self.max_lr) for g in optimizer.param_groups]
        resolver = _Resolver(self, peaks, trainer.callbacks)
        scheduler = GuardedOneCycleLR(
            optimizer,
            max_lr=peaks,
            total_steps=total,
            pct_start=hp.pct_start,
            div_factor=hp.div_factor,
            final_div_factor=hp.final_div_factor,
            three_phase=hp.three_phase,
            anneal_strategy=hp.anneal_strategy,
            cycle_momentum=hp.cycle_momentum,
            base_momentum=hp.base_momentum,
            max_momentum=hp.max_momentum,
            on_skipped_step=hp.on_skipped_step,
            on_schedule_mismatch=hp.on_schedule_mismatch,
            resolver=resolver,
        )
        resolver.scheduler = scheduler
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "step", "frequency": 1}
        if name is not None:
            config["name"] = name
        return config

    def configure_optimizers(self) -> Any:
        """One optimizer over :meth:`onecycle_param_groups` and its OneCycle schedule."""
        optimizer = self.build_optimizer(self.onecycle_param_groups())
        return {"optimizer": optimizer, "lr_scheduler": self.onecycle_scheduler(optimizer)}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass's `configure_optimizers` is wrapped so that returning no OneCycle, a plain
        # torch OneCycleLR (no AMP hold, no resume check) or one stepped per epoch fails before
        # the first step instead of training with a silently different schedule.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("configure_optimizers")
        if own is not None and not getattr(own, "_onecycle_checked", False):
            cls.configure_optimizers = _checked_configure_optimizers(own)  # type: ignore[method-assign]


def _checked_configure_optimizers(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(self: OneCycleModule) -> Any:
        result = fn(self)
        _validate_schedulers(type(self).__name__, result)
        return result

    wrapper._onecycle_checked = True  # type: ignore[attr-defined]
    return wrapper


def _scheduler_configs(result: Any) -> Iterator[tuple[Any, str]]:
    """Yield ``(scheduler, interval)`` for every scheduler in a configure_optimizers result."""
    if isinstance(result, dict):
        items: list[Any] = [result]
    elif isinstance(result, (list, tuple)):
        if len(result) == 2 and all(isinstance(part, (list, tuple)) for part in result):
            items = list(result[1])
        else:
            items = list(result)
    else:
        items = []
    for item in items:
        if isinstance(item, dict) and "lr_scheduler" in item:
            item = item["lr_scheduler"]
        if isinstance(item, dict) and "scheduler" in item:
            yield item["scheduler"], item.get("interval", "epoch")
        elif isinstance(item, torch.optim.lr_scheduler.LRScheduler):
            yield item, "epoch"


def _validate_schedulers(owner: str, result: Any) -> None:
    fix = (
        "return `self.onecycle_scheduler(optimizer)` as that optimizer's `lr_scheduler`"
        " (it sets `interval='step'` and the right `total_steps`)"
    )
    found = False
    for scheduler, interval in _scheduler_configs(result):
        if not isinstance(scheduler, OneCycleLR):
            continue
        if interval != "step":
            raise ValueError(
                f"{owner}.configure_optimizers returned a OneCycleLR with interval={interval!r}:"
                " OneCycle is defined per optimizer step and must be stepped per batch;"
                f" {fix}."
            )
        if not isinstance(scheduler, GuardedOneCycleLR):
            raise TypeError(
                f"{owner}.configure_optimizers returned torch's plain OneCycleLR, which keeps"
                " stepping on AMP-skipped steps and cannot check a resume; " + fix + "."
            )
        found = True
    if not found:
        raise ValueError(
            f"{owner}.configure_optimizers (a OneCycleModule) returned no OneCycle scheduler;"
            f" {fix}, or inherit from LightningModule if you want another schedule."
        )


class _Resolver:
    """The real total and peaks of a OneCycleModule's schedule, once training really starts.

    ``configure_optimizers`` runs before the callbacks' ``on_fit_start``, where the tuners
    change the batch size or ``max_lr``; the schedule asks this right before its first real
    optimizer step instead.
    """

    def __init__(
        self, module: OneCycleModule, peaks: list[float], callbacks: list[pl.Callback]
    ) -> None:
        self.module = module
        self.peaks = peaks
        self.built_max_lr = module.max_lr
        self.callbacks = callbacks
        self.scheduler: GuardedOneCycleLR | None = None

    def __call__(self) -> tuple[int, list[float]] | None:
        try:
            trainer = self.module.trainer
        except RuntimeError:  # the module left its trainer
            return None
        # Tuner trials: LearningRateFinder swaps in its own scheduler, and both finders swap
        # `trainer.callbacks` for their own list until they restore their checkpoint. Their
        # steps must not fix the schedule.
        active = any(c.scheduler is self.scheduler for c in trainer.lr_scheduler_configs)
        if not active or trainer.callbacks is not self.callbacks:
            return None
        swa = _steps_before_swa(trainer)
        if swa is None:
            total = _steps_of_this_run(trainer)
        elif swa[0] > 0:
            total = swa[0]  # StochasticWeightAveraging's SWALR takes over from there
        else:
            return None  # SWALR replaces the schedule before its first step: it never runs
        # LearningRateFinder(attr_name="max_lr") writes the suggestion to `max_lr`: every
        # group's peak moves by the same factor, so per-group ratios hold.
        max_lr = self.module.max_lr
        factor = max_lr / self.built_max_lr
        return total, [
            max_lr if peak == self.built_max_lr else peak * factor for peak in self.peaks
        ]


def _decays(name: str, param: nn.Parameter, no_decay: set[str], decay_all: bool) -> bool:
    """Whether ``param`` gets weight decay; lazy parameters by what they will become."""
    if isinstance(param, nn.parameter.UninitializedParameter):
        # A lazy layer's weight is a matrix or a kernel once materialised (>= 2-d); its bias
        # and a lazy norm layer's parameters are 1-d.
        return decay_all or name not in no_decay
    if decay_all:
        return param.ndim >= 1
    return name not in no_decay and param.ndim > 1


def _no_decay_names(module: nn.Module) -> set[str]:
    names = set()
    for module_name, sub in module.named_modules():
        for param_name, _ in sub.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(sub, _NORM_TYPES) or param_name == "bias":
                names.add(full)
    return names
