"""OneCycleModule and GuardedOneCycleLR against a standalone torch OneCycleLR stepped by hand."""

from __future__ import annotations

import json
import math
import pickle
import re
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from _approx import assert_rows_close
from _ddp_helpers import DestroyProcessGroupsAtExit
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch import nn
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR, StepLR
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_recipes import GuardedOneCycleLR, OneCycleModule, ScheduleMismatchError
from lightning_recipes import scheduler as scheduler_module

N_SAMPLES = 40


class Net(OneCycleModule):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.head(self.body(x)), y)


class Recorder(Callback):
    """Records the LR and momentum of every param group right before each optimizer step."""

    def __init__(self, out: Path | None = None):
        self.lrs: list[list[float]] = []
        self.moms: list[list[float]] = []
        self.out = out

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append([g["lr"] for g in optimizer.param_groups])
        self.moms.append(
            [g.get("momentum", g.get("betas", (None,))[0]) for g in optimizer.param_groups]
        )

    def on_train_end(self, trainer, pl_module):
        if self.out is not None:
            path = self.out / f"rank{trainer.global_rank}.json"
            path.write_text(json.dumps({"lrs": self.lrs, "moms": self.moms}))


def loader(n=N_SAMPLES, batch_size=4):
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)),
        batch_size=batch_size,
    )


def trainer(tmp_path, callbacks=(), **kwargs):
    kwargs.setdefault("max_epochs", 2)
    return pl.Trainer(
        accelerator="cpu",
        devices=kwargs.pop("devices", 1),
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        **kwargs,
    )


def reference(total, max_lrs, n_groups, **onecycle_kwargs):
    """LR/momentum per step from torch's OneCycleLR stepped in a plain loop."""
    params = [nn.Parameter(torch.zeros(1)) for _ in range(n_groups)]
    opt = torch.optim.SGD([{"params": [p]} for p in params], lr=1.0, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=max_lrs, total_steps=total, **onecycle_kwargs)
    lrs, moms = [], []
    for _ in range(total):
        lrs.append([g["lr"] for g in opt.param_groups])
        moms.append([g["momentum"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return lrs, moms


def assert_close(actual, expected, rtol):
    """Element-wise relative comparison of (nested) lists of floats."""
    torch.testing.assert_close(
        torch.tensor(actual, dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64),
        rtol=rtol,
        atol=0.0,
    )


def optimizer_steps(n_batches, accumulate, epochs):
    """Independent count: Lightning steps after every `accumulate` batches and on the last one."""
    per_epoch = sum(1 for i in range(n_batches) if (i + 1) % accumulate == 0 or i + 1 == n_batches)
    return per_epoch * epochs


@pytest.mark.parametrize(
    ("trainer_kwargs", "expected_steps"),
    [
        ({"accumulate_grad_batches": 1}, optimizer_steps(10, 1, 2)),
        ({"accumulate_grad_batches": 3}, optimizer_steps(10, 3, 2)),
        ({"limit_train_batches": 7, "accumulate_grad_batches": 3}, optimizer_steps(7, 3, 2)),
        ({"max_steps": 13, "max_epochs": 5}, 13),
    ],
    ids=["accum1", "accum3", "limit_batches", "max_steps"],
)
def test_lr_and_momentum_match_standalone_onecycle(tmp_path, trainer_kwargs, expected_steps):
    rec = Recorder()
    model = Net(max_lr=0.5, param_group_max_lr={"head.": 0.05}, three_phase=False)
    trainer(tmp_path, [rec], **trainer_kwargs).fit(model, loader())
    groups = model.onecycle_param_groups()
    max_lrs = [g["max_lr"] for g in groups]
    ref_lrs, ref_moms = reference(
        expected_steps, max_lrs, len(groups), pct_start=0.25, base_momentum=0.85
    )
    assert len(rec.lrs) == expected_steps
    assert_close(rec.lrs, ref_lrs, rtol=1e-12)
    assert_close(rec.moms, ref_moms, rtol=1e-12)
    scheduler = model.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == expected_steps == scheduler.total_steps
    # The schedule ended: the last LR used is min_lr = max_lr / div_factor / final_div_factor.
    assert_close(rec.lrs[-1], [lr / 25 / 1e4 for lr in max_lrs], rtol=1e-6)


def test_adamw_cycles_beta1(tmp_path):
    rec = Recorder()
    model = Net(max_lr=0.01, optimizer="adamw")
    trainer(tmp_path, [rec]).fit(model, loader())
    _, ref_moms = reference(20, [0.01, 0.01], 2, pct_start=0.25)
    assert_close(rec.moms, ref_moms, rtol=1e-12)


def test_optimizer_callable_from_torch(tmp_path):
    rec = Recorder()
    model = Net(max_lr=0.01, optimizer=lambda groups: torch.optim.RAdam(groups, lr=1.0))
    trainer(tmp_path, [rec]).fit(model, loader())
    assert isinstance(model.trainer.optimizers[0], torch.optim.RAdam)
    ref_lrs, _ = reference(20, [0.01, 0.01], 2, pct_start=0.25)
    assert_close(rec.lrs, ref_lrs, rtol=1e-12)


def test_no_decay_groups():
    model = Net(weight_decay=0.1)
    groups = {g["name"]: g for g in model.onecycle_param_groups()}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups["default"]["params"]}
    plain = {names[id(p)] for p in groups["default/no_decay"]["params"]}
    assert decayed == {"body.0.weight", "head.weight"}
    assert plain == {"body.0.bias", "body.1.weight", "body.1.bias", "head.bias"}
    assert groups["default"]["weight_decay"] == 0.1
    assert groups["default/no_decay"]["weight_decay"] == 0.0
    # Every trainable parameter is in exactly one group.
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_frozen_parameters_are_left_out():
    model = Net(weight_decay=0.1, decay_norm_and_bias=False)
    model.head.weight.requires_grad_(False)
    all_params = [p for g in model.onecycle_param_groups() for p in g["params"]]
    assert all(p is not model.head.weight for p in all_params)
    assert len(all_params) == len(list(model.parameters())) - 1


class WithScalar(Net):
    """Net plus a 0-d parameter (a learned temperature)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.temperature = nn.Parameter(torch.tensor(1.0))


def _group_names(model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {names[id(p)] for p in g["params"]} for g in model.onecycle_param_groups()}


@pytest.mark.parametrize(
    ("decay_norm_and_bias", "decayed", "plain"),
    [
        (
            False,
            {"body.0.weight", "head.weight"},
            {"body.0.bias", "body.1.weight", "body.1.bias", "head.bias", "temperature"},
        ),
        (
            True,
            {"body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias", "head.weight"}
            | {"head.bias"},
            {"temperature"},
        ),
    ],
    ids=["norm_and_bias_plain", "norm_and_bias_decayed"],
)
def test_decay_norm_and_bias(decay_norm_and_bias, decayed, plain):
    groups = _group_names(WithScalar(weight_decay=0.1, decay_norm_and_bias=decay_norm_and_bias))
    assert groups == {"default": decayed, "default/no_decay": plain}


class Lazy(OneCycleModule):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = nn.LazyConv2d(4, 3)
        self.norm = nn.LazyBatchNorm2d()
        self.fc = nn.LazyLinear(2)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x)).flatten(1))


@pytest.mark.parametrize(
    ("decay_norm_and_bias", "decayed", "plain"),
    [
        (False, {"conv.weight", "fc.weight"}, {"conv.bias", "norm.weight", "norm.bias", "fc.bias"}),
        (
            True,
            {"conv.weight", "conv.bias", "norm.weight", "norm.bias", "fc.weight", "fc.bias"},
            set(),
        ),
    ],
    ids=["default", "norm_and_bias_decayed"],
)
def test_lazy_parameters_are_grouped_by_what_they_become(decay_norm_and_bias, decayed, plain):
    model = Lazy(decay_norm_and_bias=decay_norm_and_bias)
    assert isinstance(model.fc.weight, nn.parameter.UninitializedParameter)  # the scenario
    expected = {"default": decayed} | ({"default/no_decay": plain} if plain else {})
    assert _group_names(model) == expected
    # The same grouping as for the materialised module.
    model(torch.randn(2, 1, 5, 5))
    assert not isinstance(model.fc.weight, nn.parameter.UninitializedParameter)
    assert _group_names(model) == expected


class EveryKind(OneCycleModule):
    """One parameter of each kind the weight-decay rule tells apart."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc = nn.Linear(4, 8)  # weight 2-d, bias 1-d
        self.bn = nn.BatchNorm1d(8)  # weight and bias 1-d, in a norm layer
        self.ln = nn.LayerNorm(8)  # the same for another norm type
        self.plain = nn.Linear(8, 8, bias=False)  # a weight without bias
        self.offset = nn.Parameter(torch.zeros(8))  # 1-d, neither bias nor norm
        self.temperature = nn.Parameter(torch.tensor(1.0))  # 0-d
        self.lazy = nn.LazyLinear(2)  # not materialised yet


# Written out by hand from the rule: without the flag only >= 2-d weights outside norm layers
# are decayed; with it every parameter of >= 1 dim; 0-d parameters never.
_WEIGHTS = {"fc.weight", "plain.weight", "lazy.weight"}
_ONE_DIM = {"fc.bias", "bn.weight", "bn.bias", "ln.weight", "ln.bias", "offset", "lazy.bias"}


@pytest.mark.parametrize(
    ("decay_norm_and_bias", "decayed", "plain"),
    [(False, _WEIGHTS, _ONE_DIM | {"temperature"}), (True, _WEIGHTS | _ONE_DIM, {"temperature"})],
    ids=["default", "decay_norm_and_bias"],
)
def test_weight_decay_by_parameter_kind(decay_norm_and_bias, decayed, plain):
    model = EveryKind(weight_decay=0.1, decay_norm_and_bias=decay_norm_and_bias)
    assert isinstance(model.lazy.weight, nn.parameter.UninitializedParameter)  # the scenario
    assert _group_names(model) == {"default": decayed, "default/no_decay": plain}
    decay = {g["name"]: g["weight_decay"] for g in model.onecycle_param_groups()}
    assert decay == {"default": 0.1, "default/no_decay": 0.0}


def test_readme_example_1_keeps_weight_decay():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.DOTALL) if "MyModel" in b)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    model = namespace["model"]
    groups = {g["name"]: g for g in model.onecycle_param_groups()}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups["net.0"]["params"]} == {"net.0.weight"}
    assert groups["net.0"]["weight_decay"] == model.hparams.weight_decay > 0
    assert {names[id(p)] for p in groups["default"]["params"]} == {"net.2.weight"}


def test_per_group_max_lr_longest_prefix_wins():
    model = Net(max_lr=1.0, param_group_max_lr={"body.": 0.1, "body.1.": 0.01})
    groups = model.onecycle_param_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    by_param = {names[id(p)]: g["max_lr"] for g in groups for p in g["params"]}
    assert by_param["body.0.weight"] == 0.1
    assert by_param["body.1.weight"] == 0.01
    assert by_param["head.weight"] == 1.0


# --------------------------------------------------------------------------- DDP
def test_ddp_two_processes_match_standalone(tmp_path):
    out = tmp_path / "ranks"
    out.mkdir()
    model = Net(max_lr=0.5)
    callbacks = [Recorder(out), DestroyProcessGroupsAtExit()]
    t = trainer(tmp_path, callbacks, devices=2, strategy="ddp_spawn", accumulate_grad_batches=2)
    t.fit(model, loader())
    # 40 samples over 2 ranks: 5 batches of 4 per rank, accumulation 2 -> 3 steps an epoch.
    total = optimizer_steps(5, 2, 2)
    ref_lrs, ref_moms = reference(total, [0.5, 0.5], 2, pct_start=0.25)
    for rank in (0, 1):
        rec = json.loads((out / f"rank{rank}.json").read_text())
        assert_close(rec["lrs"], ref_lrs, rtol=1e-12)
        assert_close(rec["moms"], ref_moms, rtol=1e-12)


# --------------------------------------------------------------------------- errors
class Stop(Exception):
    pass


class StopAtTrainStart(Callback):
    def on_train_start(self, trainer, pl_module):
        raise Stop


class Endless(IterableDataset):
    def __iter__(self):
        while True:
            yield torch.randn(4), torch.randn(1)


def test_infinite_epochs_without_max_steps_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"max_epochs=-1.*infinite.*max_steps=N"):
        trainer(tmp_path, max_epochs=-1).fit(Net(), loader())


def test_loader_without_length_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"no length.*max_steps"):
        trainer(tmp_path, max_epochs=1).fit(Net(), DataLoader(Endless(), batch_size=4))


def test_loader_without_length_with_max_steps_works(tmp_path):
    rec = Recorder()
    trainer(tmp_path, [rec], max_epochs=None, max_steps=6).fit(
        Net(), DataLoader(Endless(), batch_size=4)
    )
    assert_close(rec.lrs, reference(6, [0.1, 0.1], 2, pct_start=0.25)[0], rtol=1e-12)


def test_lightning_default_1000_epochs_warns(tmp_path):
    match = r"max_epochs=1000.*neither `max_epochs` nor `max_steps`"
    with pytest.warns(UserWarning, match=match), pytest.raises(Stop):
        trainer(tmp_path, [StopAtTrainStart()], max_epochs=None).fit(Net(), loader())


def test_explicit_max_epochs_does_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*neither `max_epochs` nor `max_steps`.*")
        with pytest.raises(Stop):
            trainer(tmp_path, [StopAtTrainStart()], max_epochs=3).fit(Net(), loader())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_lr": 0}, ValueError, r"`max_lr` must be > 0, got 0"),
        ({"max_lr": -1.0}, ValueError, r"`max_lr` must be > 0, got -1.0"),
        ({"max_lr": "0.1"}, TypeError, r"`max_lr`"),
        ({"param_group_max_lr": {"head.": 0}}, ValueError, r"`param_group_max_lr\['head.'\]`"),
        ({"param_group_max_lr": [("head.", 0.1)]}, TypeError, r"`param_group_max_lr`"),
        ({"weight_decay": -0.1}, ValueError, r"`weight_decay` must be >= 0, got -0.1"),
        ({"weight_decay": None}, TypeError, r"`weight_decay`"),
        ({"optimizer": "adam"}, ValueError, r"`optimizer` must be one of .*got 'adam'"),
        ({"optimizer": 3}, TypeError, r"`optimizer` must be a string or a callable, got int"),
        ({"decay_norm_and_bias": "yes"}, TypeError, r"`decay_norm_and_bias`"),
        ({"pct_start": 1.0}, ValueError, r"`pct_start` must be in \(0, 1\), got 1.0"),
        ({"pct_start": 0.0}, ValueError, r"`pct_start`"),
        ({"div_factor": 0.0}, ValueError, r"`div_factor` must be > 0"),
        ({"final_div_factor": -2.0}, ValueError, r"`final_div_factor` must be > 0"),
        ({"three_phase": 1}, TypeError, r"`three_phase`"),
        ({"anneal_strategy": "exp"}, ValueError, r"`anneal_strategy` must be one of"),
        ({"cycle_momentum": None}, TypeError, r"`cycle_momentum`"),
        ({"base_momentum": 0.99}, ValueError, r"`base_momentum` must be in \[0, 0.95\]"),
        ({"base_momentum": -0.1}, ValueError, r"`base_momentum`"),
        ({"max_momentum": 1.0}, ValueError, r"`max_momentum` must be in \[0, 1\)"),
        ({"on_skipped_step": "skip"}, ValueError, r"`on_skipped_step` must be one of"),
        ({"on_schedule_mismatch": "x"}, ValueError, r"`on_schedule_mismatch` must be one of"),
    ],
)
def test_init_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        Net(**kwargs)


def test_momenta_are_not_checked_without_cycle_momentum():
    model = Net(cycle_momentum=False, base_momentum=0.99, max_momentum=0.5)
    assert model.hparams.base_momentum == 0.99


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"on_skipped_step": "no"}, r"`on_skipped_step` must be one of.*got 'no'"),
        ({"on_schedule_mismatch": "no"}, r"`on_schedule_mismatch` must be one of.*got 'no'"),
    ],
)
def test_scheduler_init_errors(kwargs, match):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=match):
        GuardedOneCycleLR(opt, max_lr=0.1, total_steps=5, **kwargs)


def test_optimizer_without_momentum_needs_cycle_momentum_off(tmp_path):
    model = Net(optimizer=lambda groups: torch.optim.Adagrad(groups))
    with pytest.raises(ValueError, match=r"Adagrad has neither.*cycle_momentum=False"):
        trainer(tmp_path).fit(model, loader())
    rec = Recorder()
    model = Net(optimizer=lambda groups: torch.optim.Adagrad(groups), cycle_momentum=False)
    trainer(tmp_path, [rec]).fit(model, loader())
    assert len(rec.lrs) == 20


def test_optimizer_callable_must_return_optimizer(tmp_path):
    with pytest.raises(TypeError, match=r"must return a torch.optim.Optimizer.*got list"):
        trainer(tmp_path).fit(Net(optimizer=lambda groups: list(groups)), loader())


class ReturnsNoSchedule(Net):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class ReturnsPlainOneCycle(Net):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        sched = OneCycleLR(opt, max_lr=0.1, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ReturnsEpochInterval(Net):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        config = self.onecycle_scheduler(opt)
        config["interval"] = "epoch"
        return [opt], [config]


@pytest.mark.parametrize(
    ("cls", "error", "match"),
    [
        (ReturnsNoSchedule, ValueError, r"ReturnsNoSchedule.configure_optimizers.*no OneCycle"),
        (ReturnsPlainOneCycle, TypeError, r"plain OneCycleLR.*self.onecycle_scheduler"),
        (ReturnsEpochInterval, ValueError, r"interval='epoch'.*stepped per batch"),
    ],
)
def test_overridden_configure_optimizers_is_checked(tmp_path, cls, error, match):
    with pytest.raises(error, match=match):
        trainer(tmp_path).fit(cls(), loader())


def test_configure_optimizers_is_not_wrapped():
    # The check runs in `on_fit_start`: a subclass's method is the one it defined, and calling
    # it outside a fit returns what it returns.
    assert (
        ReturnsNoSchedule.configure_optimizers is ReturnsNoSchedule.__dict__["configure_optimizers"]
    )
    assert not hasattr(ReturnsNoSchedule.configure_optimizers, "__wrapped__")
    assert isinstance(ReturnsNoSchedule().configure_optimizers(), torch.optim.SGD)


class FitStartWithSuper(ReturnsNoSchedule):
    def on_fit_start(self):
        self.started = True
        super().on_fit_start()


class FitStartWithoutSuper(ReturnsEpochInterval):
    def on_fit_start(self):
        self.started = True


class CountSteps(Callback):
    def __init__(self):
        self.steps = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps += 1


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (FitStartWithSuper, r"FitStartWithSuper.configure_optimizers: returned no OneCycle"),
        # No super(): the GuardedOneCycleLR checks right before its first optimizer step.
        (FitStartWithoutSuper, r"FitStartWithoutSuper.configure_optimizers: .*interval='epoch'"),
    ],
)
def test_check_survives_an_on_fit_start_override(tmp_path, cls, match):
    model, steps = cls(), CountSteps()
    with pytest.raises(ValueError, match=match):
        trainer(tmp_path, [steps]).fit(model, loader())
    assert model.started  # the override ran
    assert steps.steps == 0  # and no parameter update happened with the wrong schedule


def _configs():
    """One config of each kind the check tells apart, over one optimizer."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    guarded = GuardedOneCycleLR(opt, max_lr=0.1, total_steps=10)
    return {
        "guarded": LRSchedulerConfig(guarded, interval="step"),
        "guarded_epoch": LRSchedulerConfig(guarded, name="main", interval="epoch"),
        "guarded_every_2": LRSchedulerConfig(guarded, interval="step", frequency=2),
        "plain": LRSchedulerConfig(OneCycleLR(opt, max_lr=0.1, total_steps=10), interval="step"),
        "cyclic_epoch": LRSchedulerConfig(CyclicLR(opt, 0.01, 0.1)),
        "step_lr_epoch": LRSchedulerConfig(StepLR(opt, 5)),
    }


@pytest.mark.parametrize(
    ("names", "require_guarded", "automatic", "kinds"),
    [
        (["guarded"], True, True, []),
        (["guarded", "step_lr_epoch"], True, True, []),  # a per-epoch StepLR may be per epoch
        (["guarded_epoch"], True, True, ["interval"]),
        (["guarded_every_2"], True, True, ["interval"]),
        (["guarded_epoch"], True, False, []),  # manual optimization steps it itself
        (["plain"], True, True, ["plain"]),
        (["plain"], False, True, []),
        (["guarded", "plain"], True, True, ["plain"]),
        (["step_lr_epoch"], True, True, ["missing"]),
        ([], True, True, ["missing"]),
        ([], False, True, []),
        (["cyclic_epoch"], False, True, ["interval"]),
    ],
)
def test_check_scheduler_configs(names, require_guarded, automatic, kinds):
    configs = _configs()
    problems = scheduler_module.check_scheduler_configs(
        [configs[n] for n in names],
        automatic_optimization=automatic,
        require_guarded=require_guarded,
    )
    assert [p.kind for p in problems] == kinds
    for problem in problems:
        given = any(problem.config is configs[n] for n in names)
        assert given if problem.kind != "missing" else problem.config is None
        assert 1 <= len(problem.message) <= 300  # at most three lines


def test_scheduler_problem_names_the_config():
    (problem,) = scheduler_module.check_scheduler_configs([_configs()["guarded_epoch"]])
    assert problem.message.startswith(
        "GuardedOneCycleLR 'main' is configured with interval='epoch', frequency=1."
    )
    assert isinstance(problem.error("Model"), ValueError)
    assert str(problem.error("Model")).startswith("Model.configure_optimizers: GuardedOneCycleLR")


# --------------------------------------------------------------------------- hook overrides
class OverridesEverything(Net):
    """Overrides the hooks users override, none calling super()."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def on_train_start(self):
        self.calls.append("train_start")

    def on_before_optimizer_step(self, optimizer):
        self.calls.append("before_step")

    def on_load_checkpoint(self, checkpoint):
        self.calls.append("load")

    def on_save_checkpoint(self, checkpoint):
        self.calls.append("save")


def test_hook_overrides_without_super_keep_the_schedule(tmp_path):
    rec = Recorder()
    model = OverridesEverything(max_lr=0.5)
    trainer(tmp_path, [rec], accumulate_grad_batches=3).fit(model, loader())
    total = optimizer_steps(10, 3, 2)
    assert_close(rec.lrs, reference(total, [0.5, 0.5], 2, pct_start=0.25)[0], rtol=1e-12)
    assert model.calls.count("before_step") == total


class TwoOptimizers(Net):
    """A second optimizer (manual optimization, as Lightning 2 requires) with no schedule."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.critic = nn.Linear(8, 1)
        self.lrs = []

    def configure_optimizers(self):
        main = self.build_optimizer(
            self.onecycle_param_groups(
                (n, p) for n, p in self.named_parameters() if not n.startswith("critic")
            )
        )
        critic = torch.optim.SGD(self.critic.parameters(), lr=0.01)
        return [main, critic], [self.onecycle_scheduler(main)]

    def training_step(self, batch, batch_idx):
        main, critic = self.optimizers()
        x, y = batch
        self.lrs.append([g["lr"] for g in main.optimizer.param_groups])
        loss = nn.functional.mse_loss(self.head(self.body(x)), y)
        main.zero_grad()
        self.manual_backward(loss)
        main.step()
        self.lr_schedulers().step()
        critic_loss = self.critic(self.body(x).detach()).pow(2).mean()
        critic.zero_grad()
        self.manual_backward(critic_loss)
        critic.step()


def test_second_optimizer_with_manual_optimization(tmp_path):
    model = TwoOptimizers(max_lr=0.5)
    trainer(tmp_path).fit(model, loader())
    assert_close(model.lrs, reference(20, [0.5, 0.5], 2, pct_start=0.25)[0], rtol=1e-12)


# --------------------------------------------------------------------------- AMP hold
def _scaled_step(opt, sched, scaler, loss):
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("mode", ["hold", "advance"])
def test_hold_on_gradscaler_skip(mode, fused):
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=fused)
    sched = GuardedOneCycleLR(opt, max_lr=0.1, total_steps=10, on_skipped_step=mode)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with warnings.catch_warnings():
        if mode == "hold":  # no spurious "lr_scheduler.step() before optimizer.step()"
            warnings.simplefilter("error")
        _scaled_step(opt, sched, scaler, (p * float("inf")).sum())  # skipped
        _scaled_step(opt, sched, scaler, p.sum())  # real
        _scaled_step(opt, sched, scaler, (p * float("nan")).sum())  # skipped
        _scaled_step(opt, sched, scaler, p.sum())  # real
    assert sched.last_epoch == (2 if mode == "hold" else 4)


# --------------------------------------------------------------------------- resume
def _fit_with_checkpoints(tmp_path, max_epochs, **model_kwargs):
    rec = Recorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    t = trainer(tmp_path, [rec, ckpt], max_epochs=max_epochs, enable_checkpointing=True)
    t.fit(Net(max_lr=0.5, **model_kwargs), loader())
    return rec


def test_resume_same_settings_continues_exactly(tmp_path):
    full = _fit_with_checkpoints(tmp_path, max_epochs=4)
    resumed = Recorder()
    trainer(tmp_path / "r", [resumed], max_epochs=4).fit(
        Net(max_lr=0.5), loader(), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt"
    )
    assert len(resumed.lrs) == 20
    assert resumed.lrs == full.lrs[20:]
    assert resumed.moms == full.moms[20:]


def test_resume_with_more_epochs_fails_with_both_counts(tmp_path):
    _fit_with_checkpoints(tmp_path, max_epochs=4)
    with pytest.raises(
        ScheduleMismatchError,
        match=r"total_steps=40 .*20 done, 51.3% .*total_steps=60.*on_schedule_mismatch='rescale'",
    ):
        trainer(tmp_path / "r", max_epochs=6).fit(
            Net(max_lr=0.5), loader(), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt"
        )


def _onecycle_lr(position, total, max_lr, pct_start=0.25, div=25.0, final_div=1e4):
    """torch's two-phase cosine OneCycle written out, at a (possibly fractional) position."""
    initial, low = max_lr / div, max_lr / div / final_div
    end_up = pct_start * total - 1

    def cos(a, b, pct):
        return b + (a - b) / 2 * (1 + math.cos(math.pi * pct))

    if position <= end_up:
        return cos(initial, max_lr, position / end_up)
    return cos(max_lr, low, (position - end_up) / (total - 1 - end_up))


def _assert_rescaled(resumed, new_total, done, saved_total=40, max_lr=0.5):
    """The resumed LRs keep the checkpoint's progress fraction and end at min_lr on step
    ``new_total - 1``: the written-out OneCycle at linearly stretched positions."""
    assert len(resumed.lrs) == new_total - done
    start = done / (saved_total - 1) * (new_total - 1)
    expected = [
        _onecycle_lr(
            start + (new_total - 1 - start) * k / (new_total - 1 - done), new_total, max_lr
        )
        for k in range(new_total - done)
    ]
    assert [lrs[0] for lrs in resumed.lrs] == pytest.approx(expected, rel=1e-9)
    assert_close(resumed.lrs[-1][0], max_lr / 25 / 1e4, rtol=1e-9)


@pytest.mark.parametrize("new_epochs", [6, 3])
def test_resume_rescale_keeps_fraction_and_ends_at_new_total(tmp_path, new_epochs):
    _fit_with_checkpoints(tmp_path, max_epochs=4)
    resumed = Recorder()
    trainer(tmp_path / "r", [resumed], max_epochs=new_epochs).fit(
        Net(max_lr=0.5, on_schedule_mismatch="rescale"),
        loader(),
        ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt",
    )
    new_total, done = 10 * new_epochs, 20
    _assert_rescaled(resumed, new_total, done)


@pytest.mark.parametrize("mode", ["error", "rescale"])
def test_resume_with_another_epoch_length_counts_the_steps_this_run_makes(tmp_path, mode):
    # 10 steps an epoch (batch 4), resumed after 2 epochs at batch 8 (5 steps an epoch), as a
    # change of device count does: the run makes 20 + 2 * 5 = 30 steps, not 4 * 5 = 20.
    _fit_with_checkpoints(tmp_path, max_epochs=4)
    resumed = Recorder()
    fit = trainer(tmp_path / "r", [resumed], max_epochs=4).fit
    model = Net(max_lr=0.5, on_schedule_mismatch=mode)
    ckpt = tmp_path / "ckpt" / "epoch=1.ckpt"
    if mode == "error":
        with pytest.raises(ScheduleMismatchError, match=r"total_steps=40 .*total_steps=30"):
            fit(model, loader(batch_size=8), ckpt_path=ckpt)
        return
    fit(model, loader(batch_size=8), ckpt_path=ckpt)
    new_total, done = 30, 20
    _assert_rescaled(resumed, new_total, done)


def test_rescale_cannot_shrink_below_steps_done(tmp_path):
    _fit_with_checkpoints(tmp_path, max_epochs=4)
    with pytest.raises(
        ScheduleMismatchError, match=r"already made 30 optimizer steps.*total_steps=20"
    ):
        trainer(tmp_path / "r", max_epochs=2).fit(
            Net(max_lr=0.5, on_schedule_mismatch="rescale"),
            loader(),
            ckpt_path=tmp_path / "ckpt" / "epoch=2.ckpt",
        )


# --------------------------------------------------------------------------- resolver
def _sgd(n_groups=1):
    params = [nn.Parameter(torch.zeros(1)) for _ in range(n_groups)]
    return torch.optim.SGD([{"params": [p]} for p in params], lr=1.0, momentum=0.9)


def test_resolver_fixes_total_and_peak_before_the_first_step():
    opt = _sgd(2)
    answer = []
    sched = GuardedOneCycleLR(
        opt, max_lr=[0.1, 0.01], total_steps=20, pct_start=0.25, resolver=lambda: answer[0]
    )
    answer.append(None)
    sched.step()  # no update yet, and the resolver cannot answer: hold at the start
    assert not sched.resolved and sched.last_epoch == 0
    opt.step()
    sched.step()  # a tuner's trial step: the schedule holds
    assert not sched.resolved and sched.last_epoch == 0
    answer[0] = (8, [0.4, 0.04])
    lrs, moms = [], []
    for _ in range(8):
        opt.step()  # the pre hook resolves before the first of these updates
        lrs.append([g["lr"] for g in opt.param_groups])
        moms.append([g["momentum"] for g in opt.param_groups])
        sched.step()
    assert sched.resolved and sched.total_steps == 8
    ref_lrs, ref_moms = reference(8, [0.4, 0.04], 2, pct_start=0.25)
    # Read after each update, before the scheduler steps: the LR that update used.
    assert_close(lrs, ref_lrs, rtol=1e-12)
    assert_close(moms, ref_moms, rtol=1e-12)
    assert sched.progress.step == 8 and sched.progress.finished


def test_resolved_state_dict_is_plain_and_loads_with_weights_only(tmp_path):
    opt = _sgd()
    sched = GuardedOneCycleLR(opt, max_lr=0.1, total_steps=20, resolver=lambda: (10, [0.2]))
    opt.step()
    sched.step()
    state = sched.state_dict()
    assert state["resolved"] is True and state["total_steps"] == 10
    assert not {"_resolver", "_hook", "_pre_hook"} & set(state)
    pickle.dumps(state)
    torch.save(state, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    fresh = GuardedOneCycleLR(_sgd(), max_lr=0.1, total_steps=20, resolver=lambda: (10, [0.2]))
    fresh.load_state_dict(loaded)
    assert fresh.resolved and fresh.total_steps == 10 and fresh.last_epoch == 1


@pytest.mark.parametrize("real_total", [10, 12])
def test_loading_a_resolved_checkpoint_compares_with_the_resolved_total(real_total):
    opt = _sgd()
    sched = GuardedOneCycleLR(opt, max_lr=0.1, total_steps=20, resolver=lambda: (10, [0.1]))
    opt.step()
    sched.step()
    saved = sched.state_dict()
    # The new run's schedule was built with 20 steps; training really takes `real_total`.
    fresh = GuardedOneCycleLR(
        _sgd(), max_lr=0.1, total_steps=20, resolver=lambda: (real_total, [0.1])
    )
    if real_total == 10:
        fresh.load_state_dict(saved)
        assert fresh.resolved and fresh.total_steps == 10 and fresh.last_epoch == 1
        assert fresh.get_last_lr() == sched.get_last_lr()
    else:
        with pytest.raises(ScheduleMismatchError, match=r"total_steps=10 .*total_steps=12"):
            fresh.load_state_dict(saved)


def test_unresolved_checkpoint_restores_an_unresolved_schedule():
    opt = _sgd()
    sched = GuardedOneCycleLR(opt, max_lr=0.1, total_steps=20, resolver=lambda: (10, [0.2]))
    saved = sched.state_dict()  # a tuner saves this before its trials
    opt.step()
    sched.step()
    assert sched.resolved and sched.total_steps == 10
    sched.load_state_dict(saved)
    assert not sched.resolved and sched.total_steps == 20 and sched.last_epoch == 0


def _onecycle_zero_safe(k, total, max_lr, pct_start, momenta=(0.95, 0.85)):
    """Two-phase cosine OneCycle (LR, momentum); a zero-length warm-up is passed at once."""
    initial, low = max_lr / 25, max_lr / 25 / 1e4
    end_up = pct_start * total - 1

    def cos(a, b, pct):
        return b + (a - b) / 2 * (1 + math.cos(math.pi * pct))

    if k <= end_up:
        pct = k / end_up if end_up > 0 else 1.0
        return cos(initial, max_lr, pct), cos(momenta[0], momenta[1], pct)
    pct = (k - end_up) / (total - 1 - end_up)
    return cos(max_lr, low, pct), cos(momenta[1], momenta[0], pct)


@pytest.mark.parametrize(("total", "pct_start"), [(4, 0.25), (2, 0.5), (10, 0.1), (5, 0.25)])
def test_zero_length_warm_up_does_not_divide_by_zero(total, pct_start):
    opt = _sgd()
    sched = GuardedOneCycleLR(opt, max_lr=0.3, total_steps=total, pct_start=pct_start)
    seen = []
    for _ in range(total):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
        opt.step()
        sched.step()
    expected = [_onecycle_zero_safe(k, total, 0.3, pct_start) for k in range(total)]
    assert_rows_close(seen, expected, rel=1e-12)
    assert seen[-1][0] == pytest.approx(0.3 / 25 / 1e4, rel=1e-12)


def test_scheduler_module_exports():
    assert {"check_total_steps", "ScheduleMismatchError", "GuardedOneCycleLR"} <= set(
        scheduler_module.__all__
    )
    for name in scheduler_module.__all__:
        assert hasattr(scheduler_module, name)


@pytest.mark.parametrize("total", [3, 10])
def test_after_the_last_update_the_lr_stays_at_min_lr(total):
    # Lightning steps the scheduler once more after the last optimizer step; torch's formula
    # would run past the end of the cosine there.
    opt = _sgd()
    sched = GuardedOneCycleLR(opt, max_lr=0.1, total_steps=total, pct_start=0.25)
    for _ in range(total):
        opt.step()
        sched.step()
    assert sched.last_epoch == total
    assert sched.get_last_lr() == [pytest.approx(0.1 / 25 / 1e4, rel=1e-12)]
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)
