"""``TrainingSanityChecks``: the rules of a correct training loop, checked on the user's module.

A training loop has a handful of rules that nothing enforces and that fail silently: a
parameter missing from the optimizer never trains; a forgotten ``zero_grad()`` sums every past
gradient into each step; validation with Dropout or BatchNorm in training mode measures a
different network; a ``OneCycleLR`` stepped per epoch stays in its warm-up forever. Each rule
below is checked on the running module and either raises :class:`TrainingSanityError` or warns
with :class:`TrainingSanityWarning`, with a message that names the module, parameter or layer
and the fix.

==============================  ================================================  ========
rule (argument)                 checked                                           default
==============================  ================================================  ========
``param_groups``                every trainable parameter is in exactly one       raise
                                optimizer param group (train start)
``zero_grad``                   gradients are zero or None at the start of each   raise
                                accumulation window, and not all zero at step
``eval_mode``                   validation / test / predict run with Dropout and  raise
                                BatchNorm in eval mode and gradients disabled,
                                and training modes come back afterwards
``scheduler_interval``          OneCycleLR / CyclicLR step once per optimizer     raise
                                step; OneCycle's ``total_steps`` covers the fit
``onecycle_lr``                 OneCycle starts below its peak, and ``max_lr`` is  warn
                                not below the optimizer's own ``lr``
``batchnorm_batch``             no BatchNorm trains on a per-device batch of 1    raise
``schedule_end``                a fit that stops before its OneCycle schedule     warn
                                ends says how far the schedule got
``finite_inputs``               no floating-point tensor of a training, valid-    raise
                                ation, test or predict batch holds NaN or inf
==============================  ================================================  ========
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR
from typing_extensions import override

from lightning_recipes._compat import BATCHNORM_LAYERS, DROPOUT_LAYERS, foreach_norm
from lightning_recipes.scheduler import (
    GuardedOneCycleLR,
    _steps_before_swa,
    _steps_of_this_run,
    schedule_progress,
)

__all__ = ["TrainingSanityChecks", "TrainingSanityError", "TrainingSanityWarning"]

Mode = Literal["raise", "warn", "off"]
_MODES = ("raise", "warn", "off")
_MAX_LISTED = 8


class TrainingSanityError(RuntimeError):
    """A training-loop rule checked by :class:`TrainingSanityChecks` is broken."""


class TrainingSanityWarning(UserWarning):
    """A training-loop rule checked by :class:`TrainingSanityChecks` (in ``"warn"`` mode)."""


class TrainingSanityChecks(Callback):
    """Check the training-loop rules on the running module; raise or warn per rule.

    Every rule takes ``"raise"`` (a :class:`TrainingSanityError`), ``"warn"`` (a
    :class:`TrainingSanityWarning`, once per rule and subject) or ``"off"``.

    Args:
        param_groups: At train start, every parameter with ``requires_grad=True`` must be in
            exactly one param group of one optimizer. Names the parameters no optimizer updates
            (``optimizer.zero_grad()`` does not clear their gradients either, while
            ``model.zero_grad()`` does), those in two optimizers, and optimizer tensors that are
            not parameters of the module.
        zero_grad: Each optimizer's gradients must be zero or None at the first ``backward`` of
            every accumulation window (a missing ``zero_grad()``), and must not all be zero or
            None when it steps after a ``backward`` (``zero_grad()`` between ``backward()`` and
            ``step()``). Works in automatic and manual optimization; in automatic optimization,
            where only a hook can break the order, the second part runs on the first optimizer
            step of each epoch.
        eval_mode: In validation, test and predict, every Dropout and BatchNorm layer must be in
            eval mode and ``torch.is_grad_enabled()`` must be False, at the start and end of each
            batch; after validation inside ``fit``, the layers' training modes must be what
            they were before it.
        scheduler_interval: A ``OneCycleLR`` or ``CyclicLR`` must be stepped once per optimizer
            step (``interval="step"``, ``frequency=1``), and a ``OneCycleLR``'s ``total_steps``
            must equal the optimizer steps of the fit (fewer: torch raises ``Tried to step``
            near the end; more: the LR never anneals). In manual optimization, checked from the
            scheduler's progress over each epoch.
        onecycle_lr: A ``OneCycleLR`` whose starting LR ``max_lr / div_factor`` is above its
            peak ``max_lr``, or whose ``max_lr`` is below the optimizer's own ``lr``.
        batchnorm_batch: A training batch of one sample per device while a BatchNorm layer is
            in training mode, reported before the step.
        schedule_end: A fit that ends (``EarlyStopping``, ``max_time``, ``should_stop``, a
            ``KeyboardInterrupt``) before its ``OneCycleLR`` reached the last step: names the
            step reached, the total, the fraction and the current LR against ``min_lr``. The
            same figures come from :func:`~lightning_recipes.scheduler.schedule_progress`.
        finite_inputs: Every floating-point tensor of every training, validation, test and
            predict batch (the inputs, float targets; in a list, tuple or dict batch) must be
            finite. A NaN or inf input makes the loss and then every weight NaN, and training
            goes on to the end without an error; the message names the batch, the tensor and
            the samples. (The mixing callbacks never spread a broken image into its partner,
            so the samples named are the broken ones.)

    Cost: rules ``param_groups``, ``scheduler_interval`` and ``onecycle_lr`` run once at train
    start, ``schedule_end`` once at train end. Per training batch, ``batchnorm_batch`` reads the
    batch size (no device work) and ``eval_mode`` reads the ``training`` flag of each
    Dropout/BatchNorm layer; per evaluation batch, ``eval_mode`` reads those flags twice.
    ``zero_grad`` looks at the gradients once per accumulation window and at the optimizer step:
    a Python pass over the optimizer's parameters and, only where gradients exist, one
    ``torch._foreach_norm`` and one host-device synchronisation. With Lightning's default
    ``zero_grad(set_to_none=True)`` the window start finds None and costs no device work, so
    automatic optimization syncs once per epoch and manual optimization once per optimizer step.
    ``finite_inputs`` reads every floating-point tensor of each batch once
    (``torch.isfinite(t).all()``) and, on an accelerator, waits for the answer: one host-device
    synchronisation per batch, the one per-batch sync of this callback; set
    ``finite_inputs="off"`` where inputs are known to be finite and that sync costs throughput.

    Raises:
        TrainingSanityError: A rule in ``"raise"`` mode is broken.

    Example:
        >>> checks = TrainingSanityChecks(onecycle_lr="raise", batchnorm_batch="warn")
        >>> checks.modes["zero_grad"], checks.modes["batchnorm_batch"]
        ('raise', 'warn')
    """

    def __init__(
        self,
        *,
        param_groups: Mode = "raise",
        zero_grad: Mode = "raise",
        eval_mode: Mode = "raise",
        scheduler_interval: Mode = "raise",
        onecycle_lr: Mode = "warn",
        batchnorm_batch: Mode = "raise",
        schedule_end: Mode = "warn",
        finite_inputs: Mode = "raise",
    ) -> None:
        modes = {
            "param_groups": param_groups,
            "zero_grad": zero_grad,
            "eval_mode": eval_mode,
            "scheduler_interval": scheduler_interval,
            "onecycle_lr": onecycle_lr,
            "batchnorm_batch": batchnorm_batch,
            "schedule_end": schedule_end,
            "finite_inputs": finite_inputs,
        }
        for rule, mode in modes.items():
            if mode not in _MODES:
                raise ValueError(f"`{rule}` must be one of {_MODES}, got {mode!r}")
        #: The mode of each rule.
        self.modes: dict[str, Mode] = modes
        self._warned: set[str] = set()
        # Dropout and BatchNorm layers of the module, by qualified name.
        self._layers: list[tuple[str, nn.Module]] = []
        self._batchnorms: list[tuple[str, nn.Module]] = []
        # Rule `zero_grad`, per optimizer index.
        self._optimizers: list[Optimizer] = []
        self._index: dict[int, int] = {}
        self._params: list[list[Tensor]] = []
        self._n_groups: list[int] = []
        self._window_clean: list[bool] = []
        self._backward_seen: list[bool] = []
        # Rule `eval_mode`: training flags of `_layers` after the last training batch, and
        # whether a validation ran since.
        self._train_modes: list[bool] | None = None
        self._eval_ran = False
        # Rule `scheduler_interval` in manual optimization: positions at the last epoch start.
        self._epoch_start: tuple[int, list[int]] | None = None
        # Automatic optimization: the order check runs on the first step of each epoch only.
        self._order_check_due = True

    # ------------------------------------------------------------------ reporting
    def _report(self, rule: str, subject: str, message: str) -> None:
        mode = self.modes[rule]
        if mode == "off":
            return
        text = (
            f"TrainingSanityChecks[{rule}]: {message} (`TrainingSanityChecks({rule}='warn')`"
            f" or `{rule}='off'` relaxes this check.)"
        )
        if mode == "raise":
            raise TrainingSanityError(text)
        key = f"{rule}:{subject}"
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(text, category=TrainingSanityWarning)

    def _on(self, rule: str) -> bool:
        return self.modes[rule] != "off"

    # ------------------------------------------------------------------ fit start
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._find_layers(pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._find_layers(pl_module)
        optimizers = [getattr(opt, "optimizer", opt) for opt in trainer.optimizers]
        self._optimizers = optimizers
        self._index = {id(opt): i for i, opt in enumerate(optimizers)}
        self._params = [_optimizer_params(opt) for opt in optimizers]
        self._n_groups = [len(opt.param_groups) for opt in optimizers]
        self._window_clean = [False] * len(optimizers)
        self._backward_seen = [False] * len(optimizers)
        self._eval_ran = False
        self._train_modes = None
        self._epoch_start = None
        if self._on("param_groups"):
            self._check_param_groups(pl_module, optimizers)
        if self._on("scheduler_interval"):
            self._check_scheduler_interval(trainer, pl_module)
        if self._on("onecycle_lr"):
            self._check_onecycle_lr(trainer)

    def _find_layers(self, pl_module: pl.LightningModule) -> None:
        self._layers = [
            (name or type(m).__name__, m)
            for name, m in pl_module.named_modules()
            if isinstance(m, (*DROPOUT_LAYERS, *BATCHNORM_LAYERS))
        ]
        self._batchnorms = [(n, m) for n, m in self._layers if isinstance(m, BATCHNORM_LAYERS)]

    # ------------------------------------------------------------------ rule: param_groups
    def _check_param_groups(self, pl_module: pl.LightningModule, optimizers: list[Any]) -> None:
        module = type(pl_module).__name__
        names = {id(p): n for n, p in pl_module.named_parameters(remove_duplicate=True)}
        trainable = {id(p): n for n, p in pl_module.named_parameters() if p.requires_grad}
        owners: dict[int, list[str]] = {}
        foreign: list[str] = []
        for i, opt in enumerate(optimizers):
            for g, group in enumerate(opt.param_groups):
                where = f"optimizer {i} ({type(opt).__name__}) group {g}"
                for p in group["params"]:
                    owners.setdefault(id(p), []).append(where)
                    if id(p) not in names:
                        foreign.append(f"{where}: tensor of shape {tuple(p.shape)}")
        missing = [f"'{name}'" for pid, name in trainable.items() if pid not in owners]
        if missing:
            self._report(
                "param_groups",
                "missing",
                f"{len(missing)} trainable parameter(s) of {module} are in no optimizer param"
                f" group and will never be updated: {_listing(missing)}."
                " `optimizer.zero_grad()` only clears the optimizer's own parameters, so their"
                " gradients also pile up forever (`model.zero_grad()` would clear them). Fix:"
                " build the optimizer from `self.parameters()` in `configure_optimizers`, or"
                " freeze these with `requires_grad_(False)`.",
            )
        shared = [
            f"'{names.get(pid, '?')}' in {' and '.join(where)}"
            for pid, where in owners.items()
            if len(where) > 1
        ]
        if shared:
            self._report(
                "param_groups",
                "shared",
                f"{len(shared)} parameter(s) of {module} are in more than one optimizer, so each"
                f" training step updates them more than once: {_listing(shared)}. Fix: give"
                " every parameter to exactly one optimizer.",
            )
        if foreign:
            self._report(
                "param_groups",
                "foreign",
                f"{len(foreign)} tensor(s) in the optimizers are not parameters of {module}:"
                f" {_listing(foreign)}. The optimizer was built from another model instance, or"
                " layers were replaced after it was created; its updates never reach the module."
                " Fix: create the optimizer in `configure_optimizers` from `self.parameters()`.",
            )

    # ------------------------------------------------------------------ rule: zero_grad
    @override
    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        if not self._on("zero_grad"):
            return
        for i, clean in enumerate(self._window_clean):
            self._backward_seen[i] = True
            # Only the first backward of a window costs anything: once an optimizer's gradients
            # were seen clean, nothing is checked until it steps.
            if not clean:
                self._window_clean[i] = _all_zero_or_none(self._current_params(i))

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if not self._on("zero_grad"):
            return
        i = self._index.get(id(getattr(optimizer, "optimizer", optimizer)))
        if i is None:
            return
        backward_seen, clean = self._backward_seen[i], self._window_clean[i]
        self._backward_seen[i] = False
        self._window_clean[i] = False
        if not backward_seen:  # e.g. `training_step` returned None: Lightning skips backward
            return
        what = f"optimizer {i} ({type(optimizer).__name__})"
        if not clean:
            self._report(
                "zero_grad",
                f"stale:{i}",
                f"{what} of {type(pl_module).__name__} is stepping at global step"
                f" {trainer.global_step} with gradients that were not zero or None at the first"
                " backward() since its previous step: the previous steps' gradients were never"
                " cleared, so every update adds up all past gradients. Fix: call"
                " `optimizer.zero_grad()` once per step, in the order zero_grad() -> backward()"
                " -> step() (in manual optimization: `opt.zero_grad(); self.manual_backward(loss);"
                " opt.step()`); an override of `optimizer_zero_grad` must call"
                " `optimizer.zero_grad()`.",
            )
        elif self._order_check(pl_module) and _all_zero_or_none(self._current_params(i)):
            self._report(
                "zero_grad",
                f"order:{i}",
                f"{what} of {type(pl_module).__name__} is stepping at global step"
                f" {trainer.global_step} with every gradient zero or None although backward()"
                " ran since its previous step: zero_grad() was called between backward() and"
                " step(), or step() before backward(), so this update changes nothing. Fix: keep"
                " the order zero_grad() -> backward() -> step(), then scheduler.step().",
            )

    def _order_check(self, pl_module: pl.LightningModule) -> bool:
        # In manual optimization the user writes the order, so every step is checked. In
        # automatic optimization Lightning fixes it and only a hook can break it, the same way
        # on every step: checking the first step of each epoch saves a host-device sync per step.
        if not pl_module.automatic_optimization:
            return True
        due, self._order_check_due = self._order_check_due, False
        return due

    def _current_params(self, i: int) -> list[Tensor]:
        opt = self._optimizers[i]
        if len(opt.param_groups) != self._n_groups[i]:  # a group was added during fit
            self._params[i] = _optimizer_params(opt)
            self._n_groups[i] = len(opt.param_groups)
        return self._params[i]

    # ------------------------------------------------------------------ rule: eval_mode
    def _check_eval(self, trainer: pl.Trainer, stage: str) -> None:
        training = [f"'{n}' ({type(m).__name__})" for n, m in self._layers if m.training]
        if training:
            self._report(
                "eval_mode",
                f"layers:{stage}",
                f"{stage} runs with {len(training)} layer(s) in training mode:"
                f" {_listing(training)}. Dropout then zeroes activations at random and BatchNorm"
                " normalises with batch statistics and updates its running statistics from"
                f" {stage} data, so the metrics describe another network. Fix: do not call"
                f" `self.train()` in {stage} hooks or steps, and if you override"
                f" `on_{stage}_model_eval`, call `self.eval()` in it (eval() changes layer"
                " behaviour; no_grad() does not).",
            )
        if torch.is_grad_enabled():
            self._report(
                "eval_mode",
                f"grad:{stage}",
                f"{stage} runs with gradients enabled (torch.is_grad_enabled() is True): every"
                " forward records an autograd graph, costing memory and time. Lightning runs"
                " evaluation under torch.no_grad() or torch.inference_mode(); something turned"
                " gradients back on (`torch.set_grad_enabled(True)`, an `enable_grad` around the"
                f" loop). Fix: remove it, or use `with torch.enable_grad():` only where the"
                f" {stage} step needs a gradient (no_grad() does not switch layers to eval mode;"
                " eval() does not disable gradients).",
            )

    def _eval_batch(self, trainer: pl.Trainer, stage: str) -> None:
        if self._on("eval_mode"):
            self._check_eval(trainer, stage)

    def _eval_batch_start(self, trainer: pl.Trainer, stage: str, batch: Any, where: str) -> None:
        self._eval_batch(trainer, stage)
        if self._on("finite_inputs"):
            self._check_finite_inputs(batch, where)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            self._find_layers(pl_module)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._find_layers(pl_module)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._find_layers(pl_module)

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        where = _eval_where("validation", batch_idx, dataloader_idx)
        self._eval_batch_start(trainer, "validation", batch, where)

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch(trainer, "validation")

    @override
    def on_test_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        where = _eval_where("test", batch_idx, dataloader_idx)
        self._eval_batch_start(trainer, "test", batch, where)

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch(trainer, "test")

    @override
    def on_predict_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        where = _eval_where("predict", batch_idx, dataloader_idx)
        self._eval_batch_start(trainer, "predict", batch, where)

    @override
    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch(trainer, "predict")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._eval_ran = True

    def _check_modes_restored(self) -> None:
        if not self._eval_ran or self._train_modes is None:
            return
        self._eval_ran = False
        if not self._on("eval_mode"):
            return
        changed = [
            f"'{n}' ({type(m).__name__}: {'train' if before else 'eval'} before validation,"
            f" {'train' if m.training else 'eval'} after)"
            for (n, m), before in zip(self._layers, self._train_modes, strict=False)
            if m.training != before
        ]
        if changed:
            self._report(
                "eval_mode",
                "restore",
                f"training did not come back to the layers' modes after validation:"
                f" {_listing(changed)}. The rest of training runs without dropout or with frozen"
                " (or unfrozen) BatchNorm statistics. Fix: if you override"
                " `on_validation_model_train`, restore the modes there (`self.train()`, then"
                " re-freeze what you froze on purpose), or leave the hook to Lightning.",
            )

    # ------------------------------------------------------------------ per training batch
    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_modes_restored()
        self._order_check_due = True
        if self._on("scheduler_interval") and not pl_module.automatic_optimization:
            self._check_cyclic_progress(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._eval_ran:
            self._check_modes_restored()
        if self._batchnorms and self._on("batchnorm_batch") and _batch_size(batch) == 1:
            self._check_batchnorm_batch(trainer, batch_idx)
        if self._on("finite_inputs"):
            where = f"training batch {batch_idx} of epoch {trainer.current_epoch}"
            self._check_finite_inputs(batch, where)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # The modes right before a validation can start, after every hook that may have
        # frozen or unfrozen a layer on purpose; one flag read per Dropout/BatchNorm layer.
        if self._layers and self._on("eval_mode"):
            self._train_modes = [m.training for _, m in self._layers]

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation at the end of an epoch runs before this hook.
        self._check_modes_restored()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._on("scheduler_interval") and not pl_module.automatic_optimization:
            self._check_cyclic_progress(trainer)
        if self._on("schedule_end"):
            self._check_schedule_end(trainer, "the fit stopped")

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning ends an interrupted fit quietly (no `on_train_end`); another error speaks
        # for itself.
        if isinstance(exception, KeyboardInterrupt) and self._on("schedule_end"):
            self._check_schedule_end(trainer, "the fit was interrupted")

    # ------------------------------------------------------------------ rule: batchnorm_batch
    def _check_batchnorm_batch(self, trainer: pl.Trainer, batch_idx: int) -> None:
        # In eval mode BatchNorm uses running statistics, unless it tracks none.
        active = [
            f"'{n}' ({type(m).__name__})"
            for n, m in self._batchnorms
            if m.training or not m.track_running_stats
        ]
        if active:
            self._report(
                "batchnorm_batch",
                "batch1",
                f"training batch {batch_idx} of epoch {trainer.current_epoch} has 1 sample on"
                f" this device while BatchNorm layer(s) {_listing(active)} are in training mode."
                " Batch statistics of one sample are degenerate: BatchNorm1d raises 'Expected"
                " more than 1 value per channel when training', BatchNorm2d silently normalises"
                " each channel of the single image by itself and corrupts its running"
                " statistics. Fix: `DataLoader(..., drop_last=True)` (a last batch of one"
                " sample is the usual cause), a larger per-device batch size, or GroupNorm /"
                " LayerNorm instead of BatchNorm.",
            )

    # ------------------------------------------------------------------ rule: finite_inputs
    def _check_finite_inputs(self, batch: Any, where: str) -> None:
        tensors = list(_float_tensors(batch, "batch"))
        if not tensors:
            return
        # One flag per tensor, read on the host at once: a single synchronisation.
        device = tensors[0][1].device
        flags = torch.stack([t.isfinite().all().to(device) for _, t in tensors]).cpu()
        if bool(flags.all()):
            return
        for (name, t), finite in zip(tensors, flags.tolist(), strict=True):
            if not finite:
                self._report("finite_inputs", name, f"{where}: {_describe_non_finite(name, t)}")

    # ------------------------------------------------------------------ rule: scheduler_interval
    def _check_scheduler_interval(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        automatic = pl_module.automatic_optimization
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, (OneCycleLR, CyclicLR)):
                continue
            kind = type(scheduler).__name__
            label = f"{kind} '{config.name}'" if config.name else kind
            if automatic and (config.interval != "step" or config.frequency != 1):
                self._report(
                    "scheduler_interval",
                    f"interval:{id(scheduler)}",
                    f"{label} is configured with interval={config.interval!r},"
                    f" frequency={config.frequency}. {kind} defines the learning rate per"
                    " optimizer step: stepped per epoch it stays in its first few values (for"
                    " OneCycle, the warm-up near initial_lr) for the whole fit. Fix: return"
                    " `{'scheduler': scheduler, 'interval': 'step', 'frequency': 1}` as the"
                    " `lr_scheduler` of `configure_optimizers`.",
                )
            if automatic and isinstance(scheduler, OneCycleLR):
                self._check_total_steps(trainer, scheduler, label)

    def _check_total_steps(self, trainer: pl.Trainer, scheduler: OneCycleLR, label: str) -> None:
        if isinstance(scheduler, GuardedOneCycleLR) and not scheduler.resolve():
            # Fixes its total now, after the callbacks that change it ran in `on_fit_start`;
            # one that cannot be resolved is never stepped (SWALR replaces it at epoch 0).
            return
        if math.isinf(trainer.estimated_stepping_batches):
            return  # an infinite fit: nothing to compare with
        expected = _steps_of_this_run(trainer)
        source = f"trainer.estimated_stepping_batches={trainer.estimated_stepping_batches}"
        if trainer.global_step:
            source = f"this resumed run ends at optimizer step {expected}"
        swa = _steps_before_swa(trainer)
        if swa is not None:
            # SWA swaps the scheduler for SWALR (and adds an epoch with BatchNorm): the
            # OneCycle only runs until then.
            expected, swa_epoch = swa
            source = (
                f"StochasticWeightAveraging replaces it with SWALR at epoch {swa_epoch}, after"
                f" {expected} optimizer steps"
            )
        steps_left = int(expected) - trainer.global_step
        # `last_epoch` counts the scheduler's steps; torch raises once it exceeds total_steps.
        schedule_left = scheduler.total_steps - int(scheduler.last_epoch)
        if schedule_left == steps_left:
            return
        needed = int(scheduler.last_epoch) + steps_left
        if schedule_left < steps_left:
            effect = (
                f"torch raises 'Tried to step {scheduler.total_steps + 1} times' at optimizer"
                f" step {schedule_left + 1} of {steps_left}"
            )
        else:
            who = "SWALR takes over" if swa is not None else "the fit ends"
            effect = (
                f"{who} {schedule_left - steps_left} steps before the schedule ends, so"
                " the learning rate never anneals to min_lr"
            )
        self._report(
            "scheduler_interval",
            f"total:{id(scheduler)}",
            f"{label} has total_steps={scheduler.total_steps} ({schedule_left} left), but the"
            f" trainer will take {steps_left} more optimizer steps"
            f" ({source}): {effect}. Optimizer"
            " steps are batches / accumulate_grad_batches per epoch, times epochs, capped by"
            " max_steps and limit_train_batches. Fix: the schedule needs"
            f" total_steps={needed}. If `total_steps=self.trainer.estimated_stepping_batches`"
            " gave another count, a callback changed it after configure_optimizers"
            " (BatchSizeFinder does, in on_fit_start): build the schedule with"
            " `OneCycleModule.onecycle_scheduler`, or `GuardedOneCycleLR(..., resolver=...)`"
            " which reads the count when training starts.",
        )

    def _check_cyclic_progress(self, trainer: pl.Trainer) -> None:
        """Manual optimization: a cyclic scheduler advancing once per epoch while steps happen."""
        schedulers = [
            c.scheduler
            for c in trainer.lr_scheduler_configs
            if isinstance(c.scheduler, (OneCycleLR, CyclicLR))
        ]
        if not schedulers:
            return
        now = (trainer.global_step, [int(s.last_epoch) for s in schedulers])
        before, self._epoch_start = self._epoch_start, now
        if before is None:
            return
        steps = now[0] - before[0]
        for scheduler, start, end in zip(schedulers, before[1], now[1], strict=True):
            advanced = end - start
            if steps >= 2 and advanced <= 1:
                kind = type(scheduler).__name__
                self._report(
                    "scheduler_interval",
                    f"progress:{id(scheduler)}",
                    f"{kind} advanced {advanced} time(s) over an epoch of {steps} optimizer"
                    f" steps: it is stepped per epoch. {kind} defines the learning rate per"
                    " optimizer step. Fix: call `self.lr_schedulers().step()` right after each"
                    " `optimizer.step()` in `training_step`.",
                )

    # ------------------------------------------------------------------ rule: schedule_end
    def _check_schedule_end(self, trainer: pl.Trainer, how: str) -> None:
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, OneCycleLR):
                continue
            progress = schedule_progress(scheduler)
            if progress.finished:
                continue
            label = f"OneCycleLR '{config.name}'" if config.name else "OneCycleLR"
            self._report(
                "schedule_end",
                f"end:{id(scheduler)}",
                f"{how} at global step {trainer.global_step}: {label} stopped after optimizer"
                f" step {progress.step} of {progress.total} ({progress.fraction:.1%}) of its"
                f" OneCycle schedule, at lr={progress.lr:.3g} (it anneals to"
                f" min_lr={progress.min_lr:.3g} at the end). The final weights were trained at"
                " a high LR and were never annealed. If the stop was intended (EarlyStopping,"
                " max_time), set max_epochs/max_steps to the length you will train, or evaluate"
                " the best checkpoint rather than the last.",
            )

    # ------------------------------------------------------------------ rule: onecycle_lr
    def _check_onecycle_lr(self, trainer: pl.Trainer) -> None:
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, OneCycleLR):
                continue
            groups = scheduler.optimizer.param_groups
            label = f"OneCycleLR '{config.name}'" if config.name else "OneCycleLR"
            relations = (
                "OneCycle overwrites the optimizer's lr with initial_lr = max_lr / div_factor,"
                " rises to max_lr, then anneals to min_lr = initial_lr / final_div_factor"
            )
            for g, group in enumerate(groups):
                initial, peak = group.get("initial_lr"), group.get("max_lr")
                if initial is None or peak is None or initial <= peak:
                    continue
                self._report(
                    "onecycle_lr",
                    f"start:{id(scheduler)}:{g}",
                    f"{label} param group {g} starts at initial_lr={initial:.6g}, above its peak"
                    f" max_lr={peak:.6g} (div_factor={peak / initial:.6g} < 1), so the 'warm-up'"
                    f" lowers the learning rate. {relations} (here"
                    f" min_lr={group.get('min_lr', float('nan')):.6g}). Fix: div_factor > 1,"
                    " typically 25.",
                )
            own_lr = scheduler.optimizer.defaults.get("lr")
            peaks = [g["max_lr"] for g in groups if "max_lr" in g]
            if isinstance(own_lr, (int, float)) and peaks and max(peaks) < own_lr:
                first = groups[0]
                self._report(
                    "onecycle_lr",
                    f"below:{id(scheduler)}",
                    f"{label} peaks at max_lr={max(peaks):.6g}, below the optimizer's own"
                    f" lr={own_lr:.6g}, which is never used: {relations} (group 0:"
                    f" initial_lr={first.get('initial_lr', float('nan')):.6g},"
                    f" max_lr={first.get('max_lr', float('nan')):.6g},"
                    f" min_lr={first.get('min_lr', float('nan')):.6g}). If lr={own_lr:.6g} came"
                    " from an LR finder or a tuned run, pass it as max_lr: the peak, not the"
                    " start, is what OneCycle's max_lr sets.",
                )


def _optimizer_params(optimizer: Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _all_zero_or_none(params: Iterable[Tensor]) -> bool:
    """True when every gradient is None or exactly zero (non-finite counts as non-zero)."""
    grads = [p.grad for p in params if p.grad is not None and not p.grad.is_sparse]
    if not grads:
        return True
    by_device: dict[torch.device, list[Tensor]] = {}
    for grad in grads:
        by_device.setdefault(grad.device, []).append(grad)
    # One fused norm kernel per device and one synchronisation for the answer.
    totals = [
        torch.stack([n.float() for n in foreach_norm(device_grads)]).sum().cpu()
        for device_grads in by_device.values()
    ]
    return bool(torch.stack(totals).sum() == 0)


def _batch_size(batch: Any) -> int | None:
    """Size of the first dimension of the first tensor in a (nested) batch, if any."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        for item in batch:
            size = _batch_size(item)
            if size is not None:
                return size
    return None


def _float_tensors(batch: Any, name: str) -> Iterable[tuple[str, Tensor]]:
    """The floating-point tensors of a (nested) list, tuple or dict batch, with their names."""
    if isinstance(batch, Tensor):
        if batch.is_floating_point() and batch.numel():
            yield name, batch
    elif isinstance(batch, Mapping):
        for key, item in batch.items():
            yield from _float_tensors(item, f"{name}[{key!r}]")
    elif isinstance(batch, (list, tuple)):
        for i, item in enumerate(batch):
            yield from _float_tensors(item, f"{name}[{i}]")


def _describe_non_finite(name: str, t: Tensor) -> str:
    """Which samples of ``t`` hold NaN / inf, and the fix (only called on a broken tensor)."""
    rows = t.detach().reshape(t.shape[0], -1) if t.ndim else t.detach().reshape(1, 1)
    parts = []
    for label, mask in (("NaN", rows.isnan().any(1)), ("inf", rows.isinf().any(1))):
        samples = [str(i) for i in mask.nonzero().flatten().tolist()]
        if samples:
            parts.append(f"{label} in samples [{_listing(samples)}]")
    return (
        f"`{name}` holds {' and '.join(parts)} of {rows.shape[0]}. A non-finite input makes"
        " the loss, then every weight, NaN while training goes on. Fix: find where it comes"
        " from (a normalisation by a zero std, a corrupt file, a transform dividing by zero;"
        " check `torch.isfinite(x).all()` in the Dataset's `__getitem__`), or drop such"
        " samples in the Dataset or a `collate_fn`."
    )


def _eval_where(stage: str, batch_idx: int, dataloader_idx: int) -> str:
    return f"{stage} batch {batch_idx}" + (
        f" of dataloader {dataloader_idx}" if dataloader_idx else ""
    )


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown
