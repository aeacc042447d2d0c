"""TrainingSanityChecks: every rule provoked on a small module, and a clean real run passes."""

from __future__ import annotations

import re
import signal
import warnings
from collections.abc import Callable
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
    TrainingSanityChecks,
    TrainingSanityError,
    TrainingSanityWarning,
)

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no")

ALL_RAISE = dict.fromkeys(TrainingSanityChecks().modes, "raise")


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.norm(self.body(x)))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        F.mse_loss(self(x), y)

    test_step = validation_step

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
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
    with pytest.raises(
        TrainingSanityError,
        match=r"\[param_groups\]: 4 trainable parameter\(s\) of Net are in no optimizer param group"
        r" and will never be updated: 'norm.weight', 'norm.bias', 'head.weight', 'head.bias'\."
        r" `optimizer.zero_grad\(\)` only clears .*\(`model.zero_grad\(\)` would clear them\)",
    ):
        _fit(model)


def test_frozen_parameters_outside_the_optimizer_are_fine() -> None:
    model = Net(lambda m: torch.optim.SGD(m.head.parameters(), lr=0.01))
    for module in (model.body, model.norm):
        module.requires_grad_(False)
    _fit(model, TrainingSanityChecks(**ALL_RAISE))


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

    with pytest.raises(
        TrainingSanityError,
        match=r"2 parameter\(s\) of TwoOptimizers are in more than one optimizer, so each training"
        r" step updates them more than once: 'head.weight' in optimizer 0 \(SGD\) group 0 and"
        r" optimizer 1 \(Adam\) group 0, 'head.bias' in",
    ):
        _fit(TwoOptimizers())


def test_optimizer_over_another_model_instance_is_named() -> None:
    other = Net()
    model = Net(lambda m: torch.optim.SGD([*m.parameters(), other.head.bias], lr=0.01))
    with pytest.raises(
        TrainingSanityError,
        match=r"1 tensor\(s\) in the optimizers are not parameters of Net: optimizer 0 \(SGD\)"
        r" group 0: tensor of shape \(1,\)",
    ):
        _fit(model, TrainingSanityChecks(param_groups="raise"))


def test_warn_mode_warns_once_and_trains() -> None:
    model = Net(lambda m: torch.optim.SGD(m.body.parameters(), lr=0.01))
    checks = TrainingSanityChecks(param_groups="warn")
    with pytest.warns(
        TrainingSanityWarning, match=r"param_groups='warn'\)` or `param_groups='off'`"
    ):
        trainer = _fit(model, checks)
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
    _fit(Manual(order), TrainingSanityChecks(**ALL_RAISE))


def test_missing_zero_grad_in_manual_optimization() -> None:
    with pytest.raises(
        TrainingSanityError,
        match=r"\[zero_grad\]: optimizer 0 \(SGD\) of Manual is stepping at global step 1 with"
        r" gradients that were not zero or None at the first backward\(\) since its previous step",
    ):
        _fit(Manual(("backward", "step")))


def test_missing_zero_grad_warns_once() -> None:
    with pytest.warns(TrainingSanityWarning, match="were not zero or None") as record:
        _fit(Manual(("backward", "step")), TrainingSanityChecks(zero_grad="warn"))
    assert sum("[zero_grad]" in str(w.message) for w in record) == 1


@pytest.mark.parametrize(
    "order",
    [("backward", "zero_grad", "step"), ("zero_grad", "step", "backward")],
    ids=["zero_between", "step_before_backward"],
)
def test_wrong_order_steps_with_zero_gradients(order: tuple[str, ...]) -> None:
    with pytest.raises(
        TrainingSanityError,
        match=r"with every gradient zero or None although backward\(\) ran since its previous"
        r" step: zero_grad\(\) was called between backward\(\) and step\(\)",
    ):
        _fit(Manual(order))


def test_optimizer_zero_grad_override_that_does_nothing() -> None:
    class NoZeroGrad(Net):
        def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
            pass

    with pytest.raises(
        TrainingSanityError, match=r"an override of `optimizer_zero_grad` must call"
    ):
        _fit(NoZeroGrad())


def test_zero_grad_in_a_hook_between_backward_and_step() -> None:
    class ZeroAfterBackward(Net):
        def on_after_backward(self) -> None:
            self.zero_grad()

    with pytest.raises(
        TrainingSanityError,
        match=r"optimizer 0 \(SGD\) of ZeroAfterBackward is stepping at global step 0 with every"
        r" gradient zero or None",
    ):
        _fit(ZeroAfterBackward())


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

    _fit(Gan(), TrainingSanityChecks(**ALL_RAISE))


# ---------------------------------------------------------------- rule 3: eval_mode
def test_validation_in_training_mode_is_named() -> None:
    class NoEval(Net):
        def on_validation_model_eval(self) -> None:
            pass  # forgot self.eval()

    with pytest.raises(
        TrainingSanityError,
        match=r"\[eval_mode\]: validation runs with 2 layer\(s\) in training mode: 'norm'"
        r" \(BatchNorm1d\), 'drop' \(Dropout\)\..* override `on_validation_model_eval`, call"
        r" `self.eval\(\)`",
    ):
        _fit(NoEval(), val=True)


def test_validation_with_gradients_enabled() -> None:
    class GradOn(Net):
        def on_validation_epoch_start(self) -> None:
            torch.set_grad_enabled(True)

    with pytest.raises(
        TrainingSanityError,
        match=r"validation runs with gradients enabled \(torch.is_grad_enabled\(\) is True\)",
    ):
        _fit(GradOn(), val=True)


def test_training_mode_not_restored_after_validation() -> None:
    class NoTrain(Net):
        def on_validation_model_train(self) -> None:
            pass  # forgot self.train()

    with pytest.raises(
        TrainingSanityError,
        match=r"training did not come back to the layers' modes after validation: 'norm'"
        r" \(BatchNorm1d: train before validation, eval after\), 'drop' \(Dropout: train before",
    ):
        _fit(NoTrain(), val=True, val_check_interval=2)


def test_frozen_batchnorm_kept_through_validation_passes() -> None:
    class FrozenNorm(Net):
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            if batch_idx == 1:
                self.norm.eval()  # frozen statistics on purpose, mid-epoch, after our hook

    _fit(
        FrozenNorm(),
        TrainingSanityChecks(**ALL_RAISE),
        val=True,
        val_check_interval=2,
        max_epochs=2,
    )


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
    with pytest.raises(
        TrainingSanityError, match=rf"{stage} runs with 2 layer\(s\) in training mode"
    ):
        getattr(trainer, stage)(model, _loader(8))


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

    with pytest.raises(
        TrainingSanityError,
        match=rf"\[scheduler_interval\]: {kind} is configured with interval='epoch', frequency=1\."
        r".*'interval': 'step', 'frequency': 1",
    ):
        _fit(Net(configure))


def test_onecycle_total_steps_too_small() -> None:
    with pytest.raises(
        TrainingSanityError,
        match=r"OneCycleLR has total_steps=3 \(3 left\), but the trainer will take 4 more optimizer"
        r" steps \(trainer.estimated_stepping_batches=4\): torch raises 'Tried to step 4 times'"
        r" at optimizer step 4 of 4",
    ):
        _fit(Net(_onecycle(total_steps=3)))


def test_onecycle_total_steps_fix_names_the_total_needed() -> None:
    # The suggested fix is the count the fit needs, and the cause when a callback changed it.
    with pytest.raises(
        TrainingSanityError,
        match=r"Fix: the schedule needs total_steps=4\. If `total_steps=self.trainer"
        r".estimated_stepping_batches` gave another count, a callback changed it after"
        r" configure_optimizers \(BatchSizeFinder does, in on_fit_start\)",
    ):
        _fit(Net(_onecycle(total_steps=3)))


def test_onecycle_total_steps_too_large_warns() -> None:
    # Epochs * batches, forgetting accumulate_grad_batches=2: twice the real step count.
    with pytest.warns(
        TrainingSanityWarning,
        match=r"total_steps=4 \(4 left\), but the trainer will take 2 more optimizer steps.*"
        r"the fit ends 2 steps before the schedule ends, so the learning rate never anneals",
    ):
        _fit(
            Net(_onecycle(total_steps=4)),
            TrainingSanityChecks(scheduler_interval="warn"),
            accumulate_grad_batches=2,
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
    with pytest.raises(
        TrainingSanityError,
        match=r"total_steps=16 \(16 left\), but the trainer will take 8 more optimizer steps"
        r" \(StochasticWeightAveraging replaces it with SWALR at epoch 2, after 8 optimizer"
        r" steps\): SWALR takes over 8 steps before the schedule ends.*needs total_steps=8\.",
    ):
        _fit(Net(_onecycle(total_steps=16)), max_epochs=4, callbacks=[_swa(3)])


def test_manual_optimization_onecycle_stepped_per_epoch() -> None:
    class PerEpoch(Manual):
        def __init__(self) -> None:
            super().__init__(("zero_grad", "backward", "step"))
            self._configure = _onecycle(total_steps=4)

        def on_train_epoch_end(self) -> None:
            self.lr_schedulers().step()

    with pytest.raises(
        TrainingSanityError,
        match=r"OneCycleLR advanced 1 time\(s\) over an epoch of 4 optimizer steps: it is stepped"
        r" per epoch",
    ):
        _fit(PerEpoch())


# ---------------------------------------------------------------- rule 5: onecycle_lr
RELATIONS = (
    "OneCycle overwrites the optimizer's lr with initial_lr = max_lr / div_factor, rises to"
    " max_lr, then anneals to min_lr = initial_lr / final_div_factor"
)


def test_onecycle_starting_above_its_peak_warns() -> None:
    with pytest.warns(
        TrainingSanityWarning,
        match=r"\[onecycle_lr\]: OneCycleLR param group 0 starts at initial_lr=0.2, above its peak"
        r" max_lr=0.1 \(div_factor=0.5 < 1\).*" + re.escape(RELATIONS) + r" \(here min_lr=2e-05\)",
    ):
        _fit(Net(_onecycle(div_factor=0.5)))


def test_onecycle_max_lr_below_the_optimizer_lr() -> None:
    with pytest.raises(
        TrainingSanityError,
        match=r"OneCycleLR peaks at max_lr=0.01, below the optimizer's own lr=0.1, which is never"
        r" used: " + re.escape(RELATIONS) + r" \(group 0: initial_lr=0.0004, max_lr=0.01,"
        r" min_lr=4e-08\)\. If lr=0.1 came from an LR finder",
    ):
        _fit(Net(_onecycle(lr=0.1, max_lr=0.01)), TrainingSanityChecks(onecycle_lr="raise"))


# ---------------------------------------------------------------- rule 6: batchnorm_batch
def test_batchnorm_on_a_batch_of_one_is_caught_before_the_step() -> None:
    # 9 samples in batches of 4: the last batch has one sample.
    with pytest.raises(
        TrainingSanityError,
        match=r"\[batchnorm_batch\]: training batch 2 of epoch 0 has 1 sample on this device while"
        r" BatchNorm layer\(s\) 'norm' \(BatchNorm1d\) are in training mode.*drop_last=True",
    ):
        _fit(Net(), loader=_loader(9))
    # Without the check, torch fails inside the forward with a cryptic message.
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        _fit(Net(), TrainingSanityChecks(batchnorm_batch="off"), loader=_loader(9))


def test_batch_of_one_with_frozen_batchnorm_passes() -> None:
    class FrozenNorm(Net):
        def on_train_epoch_start(self) -> None:
            self.norm.eval()

    _fit(FrozenNorm(), TrainingSanityChecks(**ALL_RAISE), loader=_loader(9))


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
    with pytest.warns(TrainingSanityWarning, match=STOPPED):
        trainer = _fit(Net(_onecycle(total_steps=8)), max_epochs=2, callbacks=[StopAfter(2)])
    assert trainer.global_step == 2  # the scenario: stopped early


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
    assert trainer.global_step == 2


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
    with pytest.raises(TrainingSanityError, match=r"TrainingSanityChecks\[finite_inputs\]") as info:
        _fit(Net(), loader=_broken_loader(bad, samples))
    assert re.search(match, str(info.value))
    assert "Fix:" in str(info.value)


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
    assert sum("finite_inputs" in str(w.message) for w in record) == 1
    assert trainer.global_step == 4


def test_non_finite_inputs_off() -> None:
    trainer = _fit(
        Net(), TrainingSanityChecks(finite_inputs="off"), loader=_broken_loader(float("nan"), (1,))
    )
    assert trainer.global_step == 4


# ---------------------------------------------------------------- arguments
def test_invalid_mode() -> None:
    with pytest.raises(
        ValueError, match=r"`zero_grad` must be one of \('raise', 'warn', 'off'\), got 'error'"
    ):
        TrainingSanityChecks(zero_grad="error")  # type: ignore[arg-type]


def test_off_disables_a_rule() -> None:
    model = Net(lambda m: torch.optim.SGD(m.body.parameters(), lr=0.01))
    # The other rules still hold: zero_grad only looks at the optimizer's own parameters.
    trainer = _fit(model, TrainingSanityChecks(param_groups="off"))
    assert trainer.global_step == 4


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
        trainer.validate(model, data, verbose=False)
        trainer.test(model, data, verbose=False)
        trainer.predict(model, data)
    assert trainer.global_step == 6
    assert set(monitor.mismatch_steps.values()) == {0}
