"""TrainingSanityChecks: every rule provoked on a small module, and a clean real run passes."""

from __future__ import annotations

import re
import signal
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import StochasticWeightAveraging
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR
from torch.optim.swa_utils import SWALR
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes.callbacks.lr_monitor import LRMonitor
from lightning_recipes.callbacks.sanity import (
    Mode,
    TrainingSanityChecks,
    TrainingSanityError,
    TrainingSanityWarning,
)

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no")

RULES = list(TrainingSanityChecks().modes)
ALL_RAISE: dict[str, Mode] = dict.fromkeys(RULES, "raise")
RULES_DOC = Path(__file__).parents[1] / "docs" / "rules.md"


def assert_rule(message: object, rule: str, *facts: str, listing: str = "") -> None:
    """The message names its rule, links to the rule's docs section and holds ``facts``.

    Its own text (between the rule's name and the link), apart from the ``listing`` of names it
    holds, is at most three lines of 100 characters: the explanations live in the docs.
    """
    text = str(message)
    prefix, link = f"TrainingSanityChecks[{rule}]: ", f" (rule: {rule}, see docs/rules.md#{rule})"
    assert text.startswith(prefix) and text.endswith(link), text
    assert listing in text, text
    assert len(text) - len(prefix) - len(link) - len(listing) <= 300, text
    for fact in facts:
        assert fact in text, f"{fact!r} not in {text!r}"


def warned(record: Any, rule: str) -> list[str]:
    """The messages of rule ``rule`` among recorded warnings."""
    return [str(w.message) for w in record if f"TrainingSanityChecks[{rule}]" in str(w.message)]


def _loader(samples: int = 16, batch: int = 4, drop_last: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 4, generator=g)
    return DataLoader(
        TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch, drop_last=drop_last
    )


def _fit(
    model: pl.LightningModule,
    checks: TrainingSanityChecks | None = None,
    loader: DataLoader | None = None,
    val: bool = False,
    callbacks: list[pl.Callback] | None = None,
    **kwargs: Any,
) -> pl.Trainer:
    defaults: dict[str, Any] = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    callbacks = [*(callbacks or []), checks or TrainingSanityChecks()]
    trainer = pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})
    trainer.fit(model, loader or _loader(), _loader(8) if val else None)
    return trainer


class Net(pl.LightningModule):
    """body -> BatchNorm -> ReLU -> Dropout -> head; optional validation."""

    def __init__(self, configure: Callable[[Net], Any] | None = None) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 1)
        self._configure = configure
        # What the steps saw, so that a test that passes a rule can show its scenario ran.
        self.batch_sizes: list[int] = []
        self.finite: list[bool] = []
        self.stages: Counter[str] = Counter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.norm(self.body(x)))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.batch_sizes.append(len(x))
        self.finite.append(bool(x.isfinite().all()))
        return F.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.stages[self.trainer.state.stage] += 1
        F.mse_loss(self(x), y)

    test_step = validation_step

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.stages[self.trainer.state.stage] += 1
        return self(batch[0])

    def configure_optimizers(self) -> Any:
        if self._configure is not None:
            return self._configure(self)
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _onecycle(
    interval: str = "step",
    total_steps: int = 4,
    lr: float = 0.01,
    max_lr: float = 0.1,
    **kwargs: Any,
) -> Callable[[Net], Any]:
    def configure(model: Net) -> Any:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        sched = OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps, **kwargs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}

    return configure


# ---------------------------------------------------------------- rule 1: param_groups
def test_parameters_missing_from_the_optimizer_are_named() -> None:
    model = Net(lambda m: torch.optim.SGD(m.body.parameters(), lr=0.01))
    with pytest.raises(TrainingSanityError, match=r"\[param_groups\]") as info:
        _fit(model)
    assert_rule(
        info.value,
        "param_groups",
        "4 trainable parameter(s) of Net are in no optimizer",
        "'norm.weight', 'norm.bias', 'head.weight', 'head.bias'",
        "`self.parameters()`",
    )


def test_frozen_parameters_outside_the_optimizer_are_fine() -> None:
    model = Net(lambda m: torch.optim.SGD(m.head.parameters(), lr=0.01))
    for module in (model.body, model.norm):
        module.requires_grad_(False)
    frozen, head = model.body.weight.clone(), model.head.weight.clone()
    trainer = _fit(model, TrainingSanityChecks(**ALL_RAISE))
    # The scenario: the optimizer stepped, over the head only.
    assert trainer.global_step == 4
    assert torch.equal(model.body.weight, frozen) and not torch.equal(model.head.weight, head)


def test_parameters_in_two_optimizers_are_named() -> None:
    class TwoOptimizers(Net):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            for opt in self.optimizers():
                opt.zero_grad()
            self.manual_backward(super().training_step(batch, batch_idx))
            for opt in self.optimizers():
                opt.step()

        def configure_optimizers(self) -> Any:
            everything = torch.optim.SGD(self.parameters(), lr=0.01)
            return everything, torch.optim.Adam(self.head.parameters(), lr=0.01)

    with pytest.raises(TrainingSanityError, match=r"\[param_groups\]") as info:
        _fit(TwoOptimizers())
    assert_rule(
        info.value,
        "param_groups",
        "2 parameter(s) of TwoOptimizers are in more than one optimizer",
        listing="'head.weight' in optimizer 0 (SGD) group 0 and optimizer 1 (Adam) group 0,"
        " 'head.bias' in optimizer 0 (SGD) group 0 and optimizer 1 (Adam) group 0",
    )


def test_optimizer_over_another_model_instance_is_named() -> None:
    other = Net()
    model = Net(lambda m: torch.optim.SGD([*m.parameters(), other.head.bias], lr=0.01))
    with pytest.raises(TrainingSanityError, match=r"\[param_groups\]") as info:
        _fit(model, TrainingSanityChecks(param_groups="raise"))
    assert_rule(
        info.value,
        "param_groups",
        "1 tensor(s) in the optimizers are not parameters of Net",
        "optimizer 0 (SGD) group 0: tensor of shape (1,)",
    )


def test_warn_mode_warns_once_and_trains() -> None:
    model = Net(lambda m: torch.optim.SGD(m.body.parameters(), lr=0.01))
    checks = TrainingSanityChecks(param_groups="warn")
    with pytest.warns(TrainingSanityWarning, match=r"\[param_groups\]") as record:
        trainer = _fit(model, checks)
    assert len(warned(record, "param_groups")) == 1
    assert_rule(warned(record, "param_groups")[0], "param_groups", "4 trainable parameter(s)")
    assert trainer.global_step == 4


# ---------------------------------------------------------------- rule 2: zero_grad
class Manual(Net):
    """Manual optimization in a chosen order of zero_grad / backward / step."""

    def __init__(self, order: tuple[str, ...]) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.order = order

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        for action in self.order:
            if action == "zero_grad":
                opt.zero_grad()
            elif action == "backward":
                self.manual_backward(super().training_step(batch, batch_idx))
            else:
                opt.step()


@pytest.mark.parametrize(
    "order",
    [("zero_grad", "backward", "step"), ("backward", "step", "zero_grad")],
    ids=["zero_first", "zero_last"],
)
def test_correct_manual_orders_pass(order: tuple[str, ...]) -> None:
    model = Manual(order)
    before = model.head.weight.clone()
    trainer = _fit(model, TrainingSanityChecks(**ALL_RAISE))
    # The scenario: four real updates, each after a backward.
    assert trainer.global_step == 4 and model.batch_sizes == [4, 4, 4, 4]
    assert not torch.equal(model.head.weight, before)


def test_missing_zero_grad_in_manual_optimization() -> None:
    with pytest.raises(TrainingSanityError, match=r"\[zero_grad\]") as info:
        _fit(Manual(("backward", "step")))
    assert_rule(
        info.value,
        "zero_grad",
        "optimizer 0 (SGD) of Manual steps at global step 1 with gradients left from its previous",
        "`optimizer.zero_grad()`",
    )


def test_missing_zero_grad_warns_once() -> None:
    with pytest.warns(TrainingSanityWarning, match="gradients left from") as record:
        trainer = _fit(Manual(("backward", "step")), TrainingSanityChecks(zero_grad="warn"))
    assert len(warned(record, "zero_grad")) == 1
    assert trainer.global_step == 4  # every step had stale gradients; one warning


@pytest.mark.parametrize(
    "order",
    [("backward", "zero_grad", "step"), ("zero_grad", "step", "backward")],
    ids=["zero_between", "step_before_backward"],
)
def test_wrong_order_steps_with_zero_gradients(order: tuple[str, ...]) -> None:
    with pytest.raises(TrainingSanityError, match=r"\[zero_grad\]") as info:
        _fit(Manual(order))
    assert_rule(
        info.value,
        "zero_grad",
        "with every gradient zero or None although backward() ran",
        "zero_grad() -> backward() -> step()",
    )


def test_optimizer_zero_grad_override_that_does_nothing() -> None:
    class NoZeroGrad(Net):
        def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
            pass

    with pytest.raises(TrainingSanityError, match=r"\[zero_grad\]") as info:
        _fit(NoZeroGrad())
    assert_rule(
        info.value, "zero_grad", "of NoZeroGrad steps at global step 1", "`optimizer_zero_grad`"
    )


def test_zero_grad_in_a_hook_between_backward_and_step() -> None:
    class ZeroAfterBackward(Net):
        def on_after_backward(self) -> None:
            self.zero_grad()

    with pytest.raises(TrainingSanityError, match=r"\[zero_grad\]") as info:
        _fit(ZeroAfterBackward())
    assert_rule(
        info.value,
        "zero_grad",
        "optimizer 0 (SGD) of ZeroAfterBackward steps at global step 0 with every gradient zero",
    )


def test_two_optimizers_sharing_a_graph_pass() -> None:
    """A GAN-style loop: the second loss also reaches the first optimizer's parameters."""

    class Gan(Net):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            opt_body, opt_head = self.optimizers()
            opt_body.zero_grad()
            self.manual_backward(self(x).pow(2).mean())
            opt_body.step()
            opt_head.zero_grad()
            self.manual_backward(F.mse_loss(self(x), y))  # also fills body's gradients
            opt_head.step()

        def configure_optimizers(self) -> Any:
            body = [*self.body.parameters(), *self.norm.parameters()]
            return torch.optim.SGD(body, lr=0.01), torch.optim.SGD(self.head.parameters(), lr=0.01)

    model = Gan()
    trainer = _fit(model, TrainingSanityChecks(**ALL_RAISE))
    # The scenario: both optimizers stepped on every batch, and the second loss left gradients
    # in the first optimizer's parameters that its next zero_grad() cleared.
    assert trainer.global_step == 8
    assert model.body.weight.grad is not None and bool(model.body.weight.grad.any())


# ---------------------------------------------------------------- rule 3: eval_mode
def test_validation_in_training_mode_is_named() -> None:
    class NoEval(Net):
        def on_validation_model_eval(self) -> None:
            pass  # forgot self.eval()

    with pytest.raises(TrainingSanityError, match=r"\[eval_mode\]") as info:
        _fit(NoEval(), val=True)
    assert_rule(
        info.value,
        "eval_mode",
        "validation runs with 2 layer(s) in training mode: 'norm' (BatchNorm1d), 'drop' (Dropout)",
        "`on_validation_model_eval` must call `self.eval()`",
    )


def test_validation_with_gradients_enabled() -> None:
    class GradOn(Net):
        def on_validation_epoch_start(self) -> None:
            torch.set_grad_enabled(True)

    with pytest.raises(TrainingSanityError, match=r"\[eval_mode\]") as info:
        _fit(GradOn(), val=True)
    assert_rule(
        info.value,
        "eval_mode",
        "validation runs with gradients enabled (torch.is_grad_enabled() is True)",
    )


def test_training_mode_not_restored_after_validation() -> None:
    class NoTrain(Net):
        def on_validation_model_train(self) -> None:
            pass  # forgot self.train()

    with pytest.raises(TrainingSanityError, match=r"\[eval_mode\]") as info:
        _fit(NoTrain(), val=True, val_check_interval=2)
    assert_rule(
        info.value,
        "eval_mode",
        "training did not come back to the layers' modes after validation: 'norm'"
        " (BatchNorm1d: train before validation, eval after), 'drop' (Dropout: train before",
        "`on_validation_model_train`",
    )


def test_frozen_batchnorm_kept_through_validation_passes() -> None:
    class FrozenNorm(Net):
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            if batch_idx == 1:
                self.norm.eval()  # frozen statistics on purpose, mid-epoch, after our hook

    model = FrozenNorm()
    _fit(model, TrainingSanityChecks(**ALL_RAISE), val=True, val_check_interval=2, max_epochs=2)
    # The scenario: validation ran inside the fit (twice an epoch, 2 batches each) while the
    # BatchNorm was frozen, and it stayed frozen.
    assert model.stages == {"validate": 8}
    assert not model.norm.training and model.drop.training


@pytest.mark.parametrize("stage", ["test", "predict"])
def test_test_and_predict_in_training_mode(stage: str) -> None:
    model = Net()
    setattr(model, f"on_{stage}_model_eval", lambda: None)
    trainer = pl.Trainer(
        callbacks=[TrainingSanityChecks()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with pytest.raises(TrainingSanityError, match=r"\[eval_mode\]") as info:
        getattr(trainer, stage)(model, _loader(8))
    assert_rule(
        info.value,
        "eval_mode",
        f"{stage} runs with 2 layer(s) in training mode",
        f"`on_{stage}_model_eval`",
    )


# ---------------------------------------------------------------- rule 4: scheduler_interval
@pytest.mark.parametrize("kind", ["OneCycleLR", "CyclicLR"])
def test_cyclic_scheduler_stepped_per_epoch(kind: str) -> None:
    def configure(model: Net) -> Any:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if kind == "OneCycleLR":
            sched: Any = OneCycleLR(opt, max_lr=0.1, total_steps=4)
        else:
            sched = CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=2)
        return [opt], [sched]  # Lightning's default interval is "epoch"

    with pytest.raises(TrainingSanityError, match=r"\[scheduler_interval\]") as info:
        _fit(Net(configure))
    assert_rule(
        info.value,
        "scheduler_interval",
        f"{kind} is configured with interval='epoch', frequency=1",
        "'interval': 'step', 'frequency': 1",
    )


def test_onecycle_total_steps_too_small() -> None:
    with pytest.raises(TrainingSanityError, match=r"\[scheduler_interval\]") as info:
        _fit(Net(_onecycle(total_steps=3)))
    assert_rule(
        info.value,
        "scheduler_interval",
        "OneCycleLR has total_steps=3 (3 left), but the trainer will take 4 more optimizer"
        " steps (trainer.estimated_stepping_batches=4): torch raises 'Tried to step 4 times'"
        " at optimizer step 4 of 4",
    )


def test_onecycle_total_steps_fix_names_the_total_needed() -> None:
    # The suggested fix is the count the fit needs.
    with pytest.raises(TrainingSanityError, match=r"\[scheduler_interval\]") as info:
        _fit(Net(_onecycle(total_steps=3)))
    assert_rule(info.value, "scheduler_interval", "Fix: total_steps=4.")


def test_onecycle_total_steps_too_large_warns() -> None:
    # Epochs * batches, forgetting accumulate_grad_batches=2: twice the real step count.
    with pytest.warns(TrainingSanityWarning, match=r"\[scheduler_interval\]") as record:
        _fit(
            Net(_onecycle(total_steps=4)),
            TrainingSanityChecks(scheduler_interval="warn"),
            accumulate_grad_batches=2,
        )
    (message,) = warned(record, "scheduler_interval")
    assert_rule(
        message,
        "scheduler_interval",
        "total_steps=4 (4 left), but the trainer will take 2 more optimizer steps",
        "the fit ends 2 steps before the schedule ends, so the learning rate never anneals",
        "Fix: total_steps=2",
    )


def _swa(swa_epoch_start: int) -> StochasticWeightAveraging:
    return StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=swa_epoch_start)


def test_onecycle_with_swa_spans_the_epochs_before_swa() -> None:
    # 4 optimizer steps an epoch; SWA from epoch 2 of 4, plus a BatchNorm epoch (Net has one).
    schedulers: list[OneCycleLR] = []

    def configure(model: Net) -> Any:
        config = _onecycle(total_steps=8)(model)
        schedulers.append(config["lr_scheduler"]["scheduler"])
        return config

    trainer = _fit(
        Net(configure), TrainingSanityChecks(**ALL_RAISE), max_epochs=4, callbacks=[_swa(3)]
    )
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, SWALR)  # SWA took over
    assert schedulers[0].last_epoch == 8  # the OneCycle ran exactly to its end
    assert trainer.current_epoch == 5  # 4 epochs and SWA's BatchNorm epoch


def test_onecycle_with_swa_spanning_the_whole_fit_is_named() -> None:
    with pytest.raises(TrainingSanityError, match=r"\[scheduler_interval\]") as info:
        _fit(Net(_onecycle(total_steps=16)), max_epochs=4, callbacks=[_swa(3)])
    assert_rule(
        info.value,
        "scheduler_interval",
        "total_steps=16 (16 left), but the trainer will take 8 more optimizer steps"
        " (StochasticWeightAveraging replaces it with SWALR at epoch 2, after 8 optimizer"
        " steps): SWALR takes over 8 steps before the schedule ends",
        "Fix: total_steps=8.",
    )


def test_manual_optimization_onecycle_stepped_per_epoch() -> None:
    class PerEpoch(Manual):
        def __init__(self) -> None:
            super().__init__(("zero_grad", "backward", "step"))
            self._configure = _onecycle(total_steps=4)

        def on_train_epoch_end(self) -> None:
            self.lr_schedulers().step()

    with pytest.raises(TrainingSanityError, match=r"\[scheduler_interval\]") as info:
        _fit(PerEpoch())
    assert_rule(
        info.value,
        "scheduler_interval",
        "OneCycleLR advanced 1 time(s) over an epoch of 4 optimizer steps: it is stepped per epoch",
        "`self.lr_schedulers().step()`",
    )


# ---------------------------------------------------------------- rule 5: onecycle_lr
def test_onecycle_starting_above_its_peak_warns() -> None:
    with pytest.warns(TrainingSanityWarning, match=r"\[onecycle_lr\]") as record:
        _fit(Net(_onecycle(div_factor=0.5)))
    (message,) = warned(record, "onecycle_lr")
    assert_rule(
        message,
        "onecycle_lr",
        "OneCycleLR param group 0 starts at initial_lr=0.2, above its peak max_lr=0.1"
        " (div_factor=0.5 < 1)",
        "Fix: div_factor > 1",
    )


def test_onecycle_max_lr_below_the_optimizer_lr() -> None:
    with pytest.raises(TrainingSanityError, match=r"\[onecycle_lr\]") as info:
        _fit(Net(_onecycle(lr=0.1, max_lr=0.01)), TrainingSanityChecks(onecycle_lr="raise"))
    assert_rule(
        info.value,
        "onecycle_lr",
        "OneCycleLR peaks at max_lr=0.01, below the optimizer's own lr=0.1",
        "if lr=0.1 is the tuned value, pass it as max_lr",
    )


# ---------------------------------------------------------------- rule 6: batchnorm_batch
def test_batchnorm_on_a_batch_of_one_is_caught_before_the_step() -> None:
    # 9 samples in batches of 4: the last batch has one sample.
    model = Net()
    with pytest.raises(TrainingSanityError, match=r"\[batchnorm_batch\]") as info:
        _fit(model, loader=_loader(9))
    assert_rule(
        info.value,
        "batchnorm_batch",
        "training batch 2 of epoch 0 has 1 sample on this device while BatchNorm layer(s)"
        " 'norm' (BatchNorm1d) are in training mode",
        "drop_last=True",
    )
    assert model.batch_sizes == [4, 4]  # before the step on the batch of one
    # Without the check, torch fails inside the forward with a cryptic message.
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        _fit(Net(), TrainingSanityChecks(batchnorm_batch="off"), loader=_loader(9))


def test_batch_of_one_with_frozen_batchnorm_passes() -> None:
    class FrozenNorm(Net):
        def on_train_epoch_start(self) -> None:
            self.norm.eval()

    model = FrozenNorm()
    _fit(model, TrainingSanityChecks(**ALL_RAISE), loader=_loader(9))
    assert model.batch_sizes == [4, 4, 1]  # the scenario: the batch of one was trained on


# ---------------------------------------------------------------- rule 7: schedule_end
class StopAfter(pl.Callback):
    """Stops the fit after ``n`` training batches, as EarlyStopping or max_time would."""

    def __init__(self, n: int, interrupt: bool = False) -> None:
        self.n, self.interrupt = n, interrupt

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.n:
            if self.interrupt:
                raise KeyboardInterrupt
            trainer.should_stop = True


STOPPED = (
    r"\[schedule_end\]: the fit stopped at global step 2: OneCycleLR stopped after optimizer"
    r" step 2 of 8 \(25.0%\) of its OneCycle schedule, at lr=0.0\d+ \(it anneals to"
    r" min_lr=4e-07 at the end\)"
)


def test_fit_stopped_before_the_schedule_ends_warns() -> None:
    with pytest.warns(TrainingSanityWarning, match=STOPPED) as record:
        trainer = _fit(Net(_onecycle(total_steps=8)), max_epochs=2, callbacks=[StopAfter(2)])
    assert trainer.global_step == 2  # the scenario: stopped early
    (message,) = warned(record, "schedule_end")
    assert_rule(message, "schedule_end", "max_epochs / max_steps")


def test_fit_stopped_early_raises_in_raise_mode() -> None:
    with pytest.raises(TrainingSanityError, match=STOPPED):
        _fit(
            Net(_onecycle(total_steps=8)),
            TrainingSanityChecks(schedule_end="raise"),
            max_epochs=2,
            callbacks=[StopAfter(2)],
        )


def test_fit_stopped_early_is_silent_when_off() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingSanityWarning)
        trainer = _fit(
            Net(_onecycle(total_steps=8)),
            TrainingSanityChecks(schedule_end="off"),
            max_epochs=2,
            callbacks=[StopAfter(2)],
        )
    # The scenario: the fit stopped at step 2 of the schedule's 8.
    assert trainer.global_step == 2
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2


def test_interrupted_fit_says_how_far_the_schedule_got() -> None:
    handler = signal.getsignal(signal.SIGINT)
    try:
        with (
            pytest.warns(TrainingSanityWarning, match=r"the fit was interrupted at global step 2"),
            pytest.raises(SystemExit),
        ):
            _fit(
                Net(_onecycle(total_steps=8)),
                max_epochs=2,
                callbacks=[StopAfter(2, interrupt=True)],
            )
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl+C after an interrupt


def test_fit_that_ends_its_schedule_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingSanityWarning)
        trainer = _fit(Net(_onecycle(total_steps=8)), max_epochs=2)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 8


# ---------------------------------------------------------------- rule: finite_inputs
def _broken_loader(bad: float, samples: tuple[int, ...], batch: int = 4) -> DataLoader:
    """16 samples of 4 features; the given samples hold ``bad`` in one feature."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g)
    x[list(samples), 1] = bad
    return DataLoader(TensorDataset(x, torch.randn(16, 1, generator=g)), batch_size=batch)


@pytest.mark.parametrize(
    ("bad", "samples", "match"),
    [
        (float("nan"), (5,), r"training batch 1 of epoch 0: `batch\[0\]` holds NaN in sample"),
        (float("inf"), (4, 6), r"`batch\[0\]` holds inf in samples \[0, 2\] of 4"),
        (-float("inf"), (7,), r"`batch\[0\]` holds inf in samples \[3\] of 4"),
    ],
)
def test_non_finite_training_inputs_are_named(bad: float, samples: tuple, match: str) -> None:
    with pytest.raises(TrainingSanityError, match=r"\[finite_inputs\]") as info:
        _fit(Net(), loader=_broken_loader(bad, samples))
    assert re.search(match, str(info.value))
    assert_rule(info.value, "finite_inputs", "Fix:", "`collate_fn`")


def test_non_finite_validation_inputs_are_named() -> None:
    model = Net()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[TrainingSanityChecks()],
    )
    with pytest.raises(TrainingSanityError, match=r"validation batch 1: `batch\[0\]` holds NaN"):
        trainer.fit(model, _loader(), _broken_loader(float("nan"), (5,)))
    assert trainer.global_step == 0  # found in Lightning's sanity check, before any step


def test_non_finite_inputs_warn_once_and_train() -> None:
    with pytest.warns(TrainingSanityWarning, match=r"\[finite_inputs\]") as record:
        trainer = _fit(
            Net(),
            TrainingSanityChecks(finite_inputs="warn"),
            loader=_broken_loader(float("nan"), (1, 9)),
        )
    assert len(warned(record, "finite_inputs")) == 1
    assert trainer.global_step == 4


def test_non_finite_inputs_off() -> None:
    model = Net()
    trainer = _fit(
        model, TrainingSanityChecks(finite_inputs="off"), loader=_broken_loader(float("nan"), (1,))
    )
    assert trainer.global_step == 4
    assert model.finite == [False, True, True, True]  # the scenario: the NaN batch was trained on


# ---------------------------------------------------------------- arguments
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", ["error", "Raise", None, True, 0])
def test_invalid_mode(rule: str, mode: Any) -> None:
    with pytest.raises(ValueError, match=rf"`{rule}` must be one of \('raise', 'warn', 'off'\)"):
        TrainingSanityChecks(**{rule: mode})


def test_off_disables_a_rule() -> None:
    model = Net(lambda m: torch.optim.SGD(m.body.parameters(), lr=0.01))
    head = model.head.weight.clone()
    # The other rules still hold: zero_grad only looks at the optimizer's own parameters.
    trainer = _fit(model, TrainingSanityChecks(param_groups="off"))
    assert trainer.global_step == 4
    assert torch.equal(model.head.weight, head)  # the scenario: the head was never trained


def test_changing_a_mode_after_construction_reaches_the_rule() -> None:
    checks = TrainingSanityChecks()
    checks.modes["param_groups"] = "off"
    model = Net(lambda m: torch.optim.SGD(m.body.parameters(), lr=0.01))
    assert _fit(model, checks).global_step == 4


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_has_a_docs_section(rule: str) -> None:
    # Each message ends with `see docs/rules.md#<rule>`: MkDocs makes `## <rule>` that anchor.
    headings = re.findall(r"^## (\S+)$", RULES_DOC.read_text(), flags=re.MULTILINE)
    assert rule in headings


# ---------------------------------------------------------------- the clean real run
@pytest.mark.slow
def test_image_classifier_on_digits_passes_every_check(tmp_path: Any) -> None:
    from lightning_recipes.classifier import ImageClassifier
    from lightning_recipes.data import DigitsDataModule

    pl.seed_everything(0)
    model = ImageClassifier(num_classes=10, in_channels=1, max_lr=0.2)
    data = DigitsDataModule(batch_size=32)
    checks, monitor = TrainingSanityChecks(**ALL_RAISE), LRMonitor(plot=False)
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=6,
        limit_val_batches=2,
        limit_test_batches=2,
        limit_predict_batches=2,
        accumulate_grad_batches=2,
        val_check_interval=4,
        num_sanity_val_steps=1,
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        callbacks=[checks, monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingSanityWarning)
        trainer.fit(model, data)
        validated = trainer.validate(model, data, verbose=False)
        tested = trainer.test(model, data, verbose=False)
        predicted = trainer.predict(model, data)
    # The scenario: a fit with accumulation and mid-epoch validation, then each evaluation.
    assert trainer.global_step == 6
    assert len(validated) == len(tested) == 1 and len(predicted or []) == 2
    assert set(monitor.mismatch_steps.values()) == {0}
