"""``TrainingSanityChecks``: the callback, its modes, and when each group of rules runs."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_recipes._validation import check_choice
from lightning_recipes.callbacks.sanity._data import _DataRules
from lightning_recipes.callbacks.sanity._eval import _EvalRules
from lightning_recipes.callbacks.sanity._modes import MODES, Mode
from lightning_recipes.callbacks.sanity._optimizer import _OptimizerRules
from lightning_recipes.callbacks.sanity._scheduler import _SchedulerRules

# The stage names the messages use (and the `on_<stage>_model_eval` hooks they point to).
_STAGES: dict[RunningStage | None, str] = {
    RunningStage.SANITY_CHECKING: "validation",
    RunningStage.VALIDATING: "validation",
    RunningStage.TESTING: "test",
    RunningStage.PREDICTING: "predict",
}


class TrainingSanityChecks(Callback):
    """Check the training-loop rules on the running module; raise or warn per rule.

    Every rule takes ``"raise"`` (a :class:`TrainingSanityError`), ``"warn"`` (a
    :class:`TrainingSanityWarning`, once per rule and subject) or ``"off"``. A message names
    what was seen (the module, parameter, layer, batch or step) and the fix, and ends with the
    rule's section in ``docs/rules.md``, which explains why the rule exists.

    Args:
        param_groups: Every trainable parameter is in exactly one param group of one optimizer,
            and the optimizers hold no tensor that is not a parameter of the module.
        zero_grad: Each optimizer's gradients are zero or None at the first ``backward`` of
            every accumulation window, and not all zero or None when it steps after one.
        eval_mode: Validation, test and predict run with every Dropout and BatchNorm layer in
            eval mode and gradients disabled; after validation inside ``fit`` the layers'
            training modes are what they were before it.
        scheduler_interval: A ``OneCycleLR`` or ``CyclicLR`` steps once per optimizer step, and
            a ``OneCycleLR``'s ``total_steps`` equals the optimizer steps of the fit.
        onecycle_lr: A ``OneCycleLR`` starts below its peak ``max_lr``, and ``max_lr`` is not
            below the optimizer's own ``lr``.
        batchnorm_batch: No BatchNorm layer in training mode sees a training batch of one
            sample per device (reported before the step).
        schedule_end: A fit that ends before its ``OneCycleLR`` did (``EarlyStopping``,
            ``max_time``, ``should_stop``, Ctrl+C) says how far the schedule got, as
            :func:`~lightning_recipes.scheduler.schedule_progress` does.
        finite_inputs: Every floating-point tensor of every training, validation, test and
            predict batch is finite; names the batch, the tensor and the samples.

    Cost: ``param_groups``, ``scheduler_interval`` and ``onecycle_lr`` run once at train start,
    ``schedule_end`` once at train end. Per batch, ``batchnorm_batch`` reads the batch size and
    ``eval_mode`` the ``training`` flag of each Dropout/BatchNorm layer, with no device work.
    ``zero_grad`` reads the gradients once per accumulation window (free with Lightning's
    ``zero_grad(set_to_none=True)``) and at the optimizer step, with one ``torch._foreach_norm``
    and one host-device synchronisation: once per epoch in automatic optimization, once per step
    in manual optimization. ``finite_inputs`` synchronises once per batch on an accelerator; set
    it to ``"off"`` where the inputs are known to be finite.

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
        #: The mode of each rule.
        self.modes: dict[str, Mode] = {
            rule: check_choice(mode, rule, MODES) for rule, mode in modes.items()
        }
        warned: set[str] = set()
        self._optimizer_rules = _OptimizerRules(self.modes, warned)
        self._scheduler_rules = _SchedulerRules(self.modes, warned)
        self._eval_rules = _EvalRules(self.modes, warned)
        self._data_rules = _DataRules(self.modes, warned)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_rules.find_layers(pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_rules.train_start(pl_module)
        self._optimizer_rules.train_start(trainer, pl_module)
        self._scheduler_rules.train_start(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_rules.check_restored()
        self._optimizer_rules.train_epoch_start()
        self._scheduler_rules.epoch_boundary(trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._eval_rules.train_batch_start()
        where = f"training batch {batch_idx} of epoch {trainer.current_epoch}"
        self._data_rules.check_batchnorm_batch(self._eval_rules.batchnorms, batch, where)
        self._data_rules.check_finite_inputs(batch, where)

    @override
    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        self._optimizer_rules.before_backward()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        self._optimizer_rules.before_optimizer_step(trainer, pl_module, optimizer)

    @override
    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._eval_rules.train_batch_end()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation at the end of an epoch runs before this hook.
        self._eval_rules.check_restored()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._scheduler_rules.train_end(trainer, pl_module)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning ends an interrupted fit quietly (no `on_train_end`); another error speaks
        # for itself.
        if isinstance(exception, KeyboardInterrupt):
            self._scheduler_rules.fit_stopped(trainer, "the fit was interrupted")

    # ------------------------------------------------------------------ evaluation
    # One hook serves validation, test and predict: the stage comes from the trainer.
    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # in `fit`, found at train start
            self._eval_rules.find_layers(pl_module)

    on_test_start = on_predict_start = on_validation_start

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        stage = _stage(trainer)
        where = f"{stage} batch {batch_idx}" + (
            f" of dataloader {dataloader_idx}" if dataloader_idx else ""
        )
        self._eval_rules.eval_batch(stage)
        self._data_rules.check_finite_inputs(batch, where)

    on_test_batch_start = on_predict_batch_start = on_validation_batch_start

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._eval_rules.eval_batch(_stage(trainer))

    on_test_batch_end = on_predict_batch_end = on_validation_batch_end

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_rules.validation_end(fitting=trainer.state.fn == TrainerFn.FITTING)


def _stage(trainer: pl.Trainer) -> str:
    return _STAGES.get(trainer.state.stage, "validation")
