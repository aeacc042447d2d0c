"""``OneCycleModule``: a LightningModule base class whose OneCycle schedule is right by default."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_recipes._param_groups import onecycle_param_groups
from lightning_recipes._validation import (
    check_bool,
    check_choice,
    check_positive,
    check_range,
    check_type,
)
from lightning_recipes.checkpointing import _is_damaged, _unreadable_error
from lightning_recipes.scheduler import GuardedOneCycleLR, check_total_steps
from lightning_recipes.scheduler._configs import raise_for_onecycle_module
from lightning_recipes.scheduler._guarded import check_guard_modes
from lightning_recipes.scheduler._steps import OneCycleResolver

__all__ = ["OneCycleModule"]

OptimizerCallable = Callable[[Iterable[Any]], Optimizer]

_OPTIMIZER_NAMES = ("sgd", "adamw")
_ANNEAL_STRATEGIES = ("cos", "linear")
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

    No hook but ``on_fit_start`` needs ``super()``: the schedule, the AMP skip handling and the
    resume check live in ``configure_optimizers`` and in the scheduler object, never in
    ``on_train_start``, ``on_before_optimizer_step``, ``on_load_checkpoint`` or other hooks you
    may override. If you override ``configure_optimizers`` (for example to add a second
    optimizer), build the OneCycle part with :meth:`onecycle_param_groups`,
    :meth:`build_optimizer` and :meth:`onecycle_scheduler`; :meth:`on_fit_start` checks what it
    returned: no OneCycle scheduler, a plain torch ``OneCycleLR`` or one stepped per epoch
    raises a ``TypeError``/``ValueError`` before the first step.

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
        check_type(
            param_group_max_lr, "param_group_max_lr", (Mapping, type(None)), "a dict or None"
        )
        for prefix, lr in (param_group_max_lr or {}).items():
            check_positive(lr, f"param_group_max_lr[{prefix!r}]")
        check_positive(weight_decay, "weight_decay", allow_zero=True)
        check_type(optimizer, "optimizer", (str, Callable), "a string or a callable")
        if isinstance(optimizer, str):
            check_choice(optimizer, "optimizer", _OPTIMIZER_NAMES)
        for name, flag in (
            ("decay_norm_and_bias", decay_norm_and_bias),
            ("three_phase", three_phase),
            ("cycle_momentum", cycle_momentum),
        ):
            check_bool(flag, name)
        check_range(pct_start, "pct_start", 0.0, 1.0, open_low=True, open_high=True)
        check_positive(div_factor, "div_factor")
        check_positive(final_div_factor, "final_div_factor")
        check_choice(anneal_strategy, "anneal_strategy", _ANNEAL_STRATEGIES)
        if cycle_momentum:
            check_range(max_momentum, "max_momentum", 0.0, 1.0, open_high=True)
            check_range(base_momentum, "base_momentum", 0.0, max_momentum)
        # The scheduler's own check, so that a bad mode stops here and not at fit start.
        check_guard_modes(on_skipped_step, on_schedule_mismatch)
        # A callable optimizer is not a hyperparameter Lightning can store as YAML; the CLI
        # records its class path in the saved config instead.
        self.save_hyperparameters(ignore=[] if isinstance(optimizer, str) else ["optimizer"])
        self.max_lr = max_lr
        self.optimizer_factory = optimizer

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``; a damaged file (truncated, empty, not a
        checkpoint) is a ``ValueError`` naming it instead of torch's unpickling error."""
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except Exception as error:
            if isinstance(checkpoint_path, (str, os.PathLike)):
                path = Path(checkpoint_path)
                if _is_damaged(path):
                    raise _unreadable_error(path, error) from error
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
        return onecycle_param_groups(
            self,
            self.named_parameters() if named_parameters is None else named_parameters,
            max_lr=self.max_lr,
            weight_decay=hp.get("weight_decay", 0.0),
            decay_norm_and_bias=bool(hp.get("decay_norm_and_bias")),
            param_group_max_lr=hp.get("param_group_max_lr"),
        )

    def build_optimizer(self, param_groups: list[dict[str, Any]]) -> Optimizer:
        """Create the configured optimizer over ``param_groups``."""
        factory = self.optimizer_factory
        hp = self.hparams
        # Extra keys (`name`, `max_lr`) stay in the groups: torch keeps unknown group keys.
        if isinstance(factory, str):
            momentum = hp["max_momentum"]
            if factory == "sgd":
                return torch.optim.SGD(
                    param_groups, lr=self.max_lr, momentum=momentum, nesterov=True
                )
            return torch.optim.AdamW(param_groups, lr=self.max_lr, betas=(momentum, 0.999))
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
                f"The OneCycle spans {total} optimizer steps:"
                f" `max_epochs={_LIGHTNING_DEFAULT_MAX_EPOCHS}` is Lightning's default when neither"
                " `max_epochs` nor `max_steps` is set; set one, or the LR barely leaves warm-up."
            )
        group = optimizer.param_groups[0]
        if hp["cycle_momentum"] and "momentum" not in group and "betas" not in group:
            raise ValueError(
                f"`cycle_momentum=True` needs an optimizer with momentum or betas, but"
                f" {type(optimizer).__name__} has neither. Set `cycle_momentum=False`."
            )
        peaks = [g.get("max_lr", self.max_lr) for g in optimizer.param_groups]
        callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning at run time
        resolver = OneCycleResolver(self, peaks, callbacks)
        scheduler = GuardedOneCycleLR(
            optimizer,
            max_lr=peaks,
            total_steps=total,
            pct_start=hp["pct_start"],
            div_factor=hp["div_factor"],
            final_div_factor=hp["final_div_factor"],
            three_phase=hp["three_phase"],
            anneal_strategy=hp["anneal_strategy"],
            cycle_momentum=hp["cycle_momentum"],
            base_momentum=hp["base_momentum"],
            max_momentum=hp["max_momentum"],
            on_skipped_step=hp["on_skipped_step"],
            on_schedule_mismatch=hp["on_schedule_mismatch"],
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

    @override
    def on_fit_start(self) -> None:
        """Check the schedulers ``configure_optimizers`` returned; call it from an override.

        Lightning calls this hook once the optimizers and schedulers are set up. Returning no
        OneCycle scheduler, torch's plain ``OneCycleLR`` (it keeps stepping on AMP-skipped steps
        and cannot check a resume) or one not stepped once per optimizer step
        (``interval="epoch"``, ``frequency`` other than 1) raises a ``TypeError``/``ValueError``
        here, before the first step (:func:`~lightning_recipes.scheduler.check_scheduler_configs`).
        If you override ``on_fit_start``, call ``super().on_fit_start()``: without it, the
        :class:`~lightning_recipes.scheduler.GuardedOneCycleLR` of :meth:`onecycle_scheduler`
        still runs the same check right before its first optimizer step, but a fit with no
        such scheduler is not checked.
        """
        raise_for_onecycle_module(self)
