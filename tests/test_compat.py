"""Each wrapper of a private torch/Lightning API in ``lightning_recipes._compat``: its public
behaviour, and where it has one, its fallback with the private attribute taken away."""

from __future__ import annotations

import ast
import csv
import math
import signal
import types
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR

from lightning_recipes import _compat
from lightning_recipes._compat import (
    BATCHNORM_LAYERS,
    DROPOUT_LAYERS,
    NORM_LAYERS,
    PATH,
    amp_found_inf,
    callback_state_key,
    cli_method_arguments,
    cli_subcommand_parser,
    foreach_norm,
    get_lr_within_step,
    grad_scale_tensor,
    is_view,
    no_hpc_checkpoint_loaded,
    onecycle_anneal,
    onecycle_phases,
    sample_dirichlet,
    save_and_requeue_on_slurm,
    saved_class_path,
    scheduler_step_count,
    set_last_lr,
    set_onecycle_phases,
    should_update_logs,
    slurm_requeue_signal,
    steps_with_amp_scaling,
    view_base,
)

# --- should_update_logs -------------------------------------------------------------------------


class _StepLogger(pl.LightningModule):
    """Logs its batch index on every step and records what `should_update_logs` said then."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.said: dict[int, bool] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.said[batch_idx] = should_update_logs(self.trainer)
        self.log("idx", float(batch_idx), on_step=True, on_epoch=False)
        return self.layer(batch[0]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
def test_should_update_logs_is_true_on_the_steps_the_logger_receives(tmp_path: Path) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(7, 2))
    model = _StepLogger()
    trainer = pl.Trainer(
        max_epochs=1,
        log_every_n_steps=3,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=1))
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        logged = {int(float(row["idx"])) for row in csv.DictReader(f) if row["idx"]}
    assert len(model.said) == 7
    assert logged == {2, 5}  # every third step
    assert {i for i, said in model.said.items() if said} == logged


def test_should_update_logs_without_the_connector_logs_every_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, log_every_n_steps=0)
    assert should_update_logs(trainer) is False  # the connector answers: logging is off
    monkeypatch.delattr(trainer, "_logger_connector")
    assert should_update_logs(trainer) is True


# --- grad_scale_tensor --------------------------------------------------------------------------


def _scaled_once() -> torch.amp.GradScaler:
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.tensor(1.0))
    return scaler


def test_grad_scale_tensor_is_the_public_scale_as_a_tensor() -> None:
    assert grad_scale_tensor(torch.amp.GradScaler("cpu")) is None  # before the first scale()
    scaler = _scaled_once()
    scale = grad_scale_tensor(scaler)
    assert isinstance(scale, torch.Tensor)
    assert scale.item() == scaler.get_scale() == 1024.0


def test_grad_scale_tensor_falls_back_to_the_scale_attribute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scaler = _scaled_once()
    monkeypatch.delattr(torch.amp.GradScaler, "_get_scale_async")
    assert not hasattr(scaler, "_get_scale_async")
    scale = grad_scale_tensor(scaler)
    assert scale is not None and scale.item() == 1024.0
    assert grad_scale_tensor(object()) is None


# --- sample_dirichlet ---------------------------------------------------------------------------


def _check_dirichlet_sample(sample: torch.Tensor, concentration: torch.Tensor) -> None:
    assert sample.shape == concentration.shape
    assert bool((sample >= 0).all())
    torch.testing.assert_close(sample.sum(-1), torch.ones(sample.shape[0]))
    # Dirichlet mean: a_i / sum(a); 20000 rows put the sample mean within 0.01 of it.
    expected = concentration[0] / concentration[0].sum()
    torch.testing.assert_close(sample.mean(0), expected, atol=0.01, rtol=0)


def test_sample_dirichlet_follows_the_generator() -> None:
    concentration = torch.tensor([[0.4, 1.2]]).expand(20000, 2).contiguous()
    first = sample_dirichlet(concentration, torch.Generator().manual_seed(3))
    again = sample_dirichlet(concentration, torch.Generator().manual_seed(3))
    other = sample_dirichlet(concentration, torch.Generator().manual_seed(4))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    _check_dirichlet_sample(first, concentration)


def test_sample_dirichlet_without_a_generator_matches_torch_distributions() -> None:
    concentration = torch.tensor([[2.0, 0.5]]).expand(20000, 2).contiguous()
    torch.manual_seed(0)
    ours = sample_dirichlet(concentration, None)
    torch.manual_seed(0)
    theirs = torch.distributions.Dirichlet(concentration).sample()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_sample_dirichlet_fallback_normalises_gamma_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "_sample_dirichlet")
    concentration = torch.tensor([[0.4, 1.2]]).expand(20000, 2).contiguous()
    torch.manual_seed(0)
    _check_dirichlet_sample(sample_dirichlet(concentration, None), concentration)
    with pytest.raises(RuntimeError, match="generator"):
        sample_dirichlet(concentration, torch.Generator().manual_seed(0))


# --- is_view / view_base ------------------------------------------------------------------------


def test_is_view_and_view_base() -> None:
    own = torch.arange(6.0)
    view = own[1:]
    assert is_view(view) and view_base(view) is own
    assert not is_view(own) and view_base(own) is own


class _NoIsView(torch.Tensor):
    """A tensor type without `_is_view`, as a torch that drops it would give."""

    _is_view = None


def test_is_view_falls_back_to_the_base() -> None:
    own = torch.Tensor._make_subclass(_NoIsView, torch.arange(6.0))
    view = own[1:]
    assert type(view) is _NoIsView and view._is_view is None  # the fallback path runs
    assert is_view(view) and view_base(view) is own
    assert not is_view(own)


# --- foreach_norm -------------------------------------------------------------------------------


def _norm_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(3, 4, generator=g),
        torch.randn(5, generator=g, dtype=torch.float64),
        torch.zeros(2, 2),
    ]


@pytest.mark.parametrize("fused", [True, False], ids=["foreach_norm", "fallback"])
def test_foreach_norm_is_each_tensors_2_norm(fused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not fused:
        monkeypatch.delattr(torch, "_foreach_norm")
    tensors = _norm_inputs()
    norms = foreach_norm(tensors)
    assert len(norms) == len(tensors)
    for norm, t in zip(norms, tensors, strict=True):
        assert norm.dtype == t.dtype
        torch.testing.assert_close(norm, t.pow(2).sum().sqrt())


# --- get_lr_within_step -------------------------------------------------------------------------


def _onecycle() -> OneCycleLR:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    return OneCycleLR(optimizer, max_lr=1.0, total_steps=10)


def test_get_lr_within_step_silences_torchs_warning_and_puts_the_flag_back() -> None:
    scheduler = _onecycle()
    with pytest.warns(UserWarning, match="get_last_lr"):
        scheduler.get_lr()  # the warning the wrapper exists to avoid
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with get_lr_within_step(scheduler):
            lrs = scheduler.get_lr()
    assert lrs == scheduler.get_last_lr()
    with pytest.warns(UserWarning, match="get_last_lr"):
        scheduler.get_lr()


def test_get_lr_within_step_on_a_scheduler_without_the_flag() -> None:
    bare = types.SimpleNamespace()
    with get_lr_within_step(bare):  # type: ignore[arg-type]
        assert bare._get_lr_called_within_step is True
    assert bare._get_lr_called_within_step is False
    assert hasattr(LRScheduler, "_get_lr_called_within_step")  # this torch has the flag


# --- onecycle_anneal / set_last_lr ---------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("pct", [0.0, 0.25, 0.5, 1.0])
def test_onecycle_anneal_is_the_strategys_formula(strategy: str, pct: float) -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = OneCycleLR(optimizer, max_lr=1.0, total_steps=10, anneal_strategy=strategy)
    start, end = 4.0, 0.5
    if strategy == "cos":
        expected = end + (start - end) / 2 * (1 + math.cos(math.pi * pct))
    else:
        expected = start + (end - start) * pct
    assert onecycle_anneal(scheduler, start, end, pct) == pytest.approx(expected)


def test_onecycle_anneal_falls_back_to_the_public_attribute_then_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scheduler = _onecycle()
    monkeypatch.delattr(OneCycleLR, "_anneal_func")
    scheduler.anneal_func = lambda start, end, pct: start + (end - start) * pct  # type: ignore[attr-defined]
    assert onecycle_anneal(scheduler, 2.0, 0.0, 0.25) == 1.5
    del scheduler.anneal_func  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="anneal_func"):
        onecycle_anneal(scheduler, 2.0, 0.0, 0.25)


def test_set_last_lr_is_what_get_last_lr_returns() -> None:
    scheduler = _onecycle()
    set_last_lr(scheduler, [0.123])
    assert scheduler.get_last_lr() == [0.123]


# --- steps_with_amp_scaling ---------------------------------------------------------------------


def test_steps_with_amp_scaling() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    assert steps_with_amp_scaling(torch.optim.AdamW(params, fused=True))
    assert not steps_with_amp_scaling(torch.optim.AdamW(params))
    assert not steps_with_amp_scaling(torch.optim.SGD(params, lr=0.1))
    assert not steps_with_amp_scaling(object())  # type: ignore[arg-type]


# --- layer families -----------------------------------------------------------------------------


def _public_subclasses(bases: tuple[type, ...]) -> set[str]:
    return {
        name for name, cls in vars(nn).items() if isinstance(cls, type) and issubclass(cls, bases)
    }


@pytest.mark.parametrize(
    ("module", "private", "found", "fallback"),
    [
        (nn.modules.batchnorm, "_NormBase", NORM_LAYERS, _compat._NORM_FALLBACK),
        (nn.modules.batchnorm, "_BatchNorm", BATCHNORM_LAYERS, _compat._BATCHNORM_FALLBACK),
        (nn.modules.dropout, "_DropoutNd", DROPOUT_LAYERS, _compat._DROPOUT_FALLBACK),
    ],
    ids=["norm", "batchnorm", "dropout"],
)
def test_layer_families_and_their_fallbacks_cover_the_same_layers(
    module: Any, private: str, found: tuple[type, ...], fallback: tuple[type, ...]
) -> None:
    assert found == (getattr(module, private),)
    assert _compat._private_class(types.SimpleNamespace(), private, fallback) == fallback
    assert _public_subclasses(fallback) == _public_subclasses(found)
    assert "Linear" not in _public_subclasses(found)


# --- callback_state_key -------------------------------------------------------------------------


class _KeyedCallback(pl.Callback):
    pass


@pytest.mark.parametrize("private", [True, False], ids=["generate_state_key", "fallback"])
def test_callback_state_key_is_lightnings_key(
    private: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    callback = _KeyedCallback()
    expected = callback._generate_state_key(input_key=0, target_key="y")
    if not private:
        monkeypatch.delattr(pl.Callback, "_generate_state_key")
        assert not hasattr(callback, "_generate_state_key")
    key = callback_state_key(callback, input_key=0, target_key="y")
    assert key == expected == "_KeyedCallback{'input_key': 0, 'target_key': 'y'}"


# --- LightningCLI: cli_method_arguments / cli_subcommand_parser / saved_class_path ---------------


class _CLIModel(pl.LightningModule):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(width, 1)


class _Parsed(Exception):
    """Raised by `_ParseOnly` with the CLI, once its arguments are parsed."""


class _ParseOnly(LightningCLI):
    """A LightningCLI that stops after parsing, before building the model or the trainer."""

    def before_instantiate_classes(self) -> None:
        raise _Parsed(self)


def _parsed_cli(subcommand: str = "fit") -> LightningCLI:
    with pytest.raises(_Parsed) as parsed:
        _ParseOnly(_CLIModel, args=[subcommand], save_config_callback=None)
    cli = parsed.value.args[0]
    assert isinstance(cli, LightningCLI)
    return cli


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_cli_method_arguments_and_their_fallback_agree(
    subcommand: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = _parsed_cli(subcommand)
    recorded = cli_method_arguments(cli, subcommand)
    assert "ckpt_path" in recorded and "model" not in recorded
    assert set(recorded) <= set(cli.config[subcommand].keys())  # beside model and trainer
    monkeypatch.delattr(cli, "_subcommand_method_arguments")
    assert cli_method_arguments(cli, subcommand) == recorded


def test_cli_subcommand_parser_saves_the_subcommands_config(tmp_path: Path) -> None:
    cli = _parsed_cli()
    parser = cli_subcommand_parser(cli, "fit")
    config = cli.config["fit"].clone()
    config["model.width"] = 5
    parser.save(config, tmp_path / "fit.yaml", skip_check=True, multifile=False)
    assert parser.parse_path(tmp_path / "fit.yaml")["model.width"] == 5


@pytest.mark.parametrize("subcommand", ["fit", "lr_find"], ids=["no-parsers", "no-such-parser"])
def test_cli_subcommand_parser_without_it_is_an_error(
    subcommand: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = _parsed_cli()
    if subcommand == "fit":
        monkeypatch.delattr(cli, "_subcommand_parsers")
    with pytest.raises(RuntimeError, match="_subcommand_parsers"):
        cli_subcommand_parser(cli, subcommand)


def test_saved_class_path_reads_what_lightningcli_records() -> None:
    cli = LightningCLI(
        pl.LightningModule,
        subclass_mode_model=True,
        run=False,
        args=["--model", f"{__name__}._CLIModel", "--trainer.logger=false"],
        save_config_callback=None,
    )
    assert saved_class_path(cli.model.hparams) == f"{__name__}._CLIModel"


@pytest.mark.parametrize(
    "hyper_parameters",
    [None, {}, {"width": 3}, {"_class_path": 3}],
    ids=["none", "empty", "no-key", "not-a-string"],
)
def test_saved_class_path_is_none_without_a_recorded_class(
    hyper_parameters: dict[str, Any] | None,
) -> None:
    assert saved_class_path(hyper_parameters) is None


# --- PATH ---------------------------------------------------------------------------------------


def test_path_is_lightnings_path_type() -> None:
    from lightning.fabric.utilities import types as fabric_types

    assert (str | Path) == PATH
    assert getattr(fabric_types, "_PATH", PATH) == PATH  # the same type where Lightning has one


# --- scheduler_step_count / onecycle_phases / amp_found_inf -------------------------------------


@pytest.mark.parametrize("private", [True, False], ids=["step_count", "fallback"])
@pytest.mark.parametrize("steps", [0, 1, 4])
def test_scheduler_step_count(steps: int, private: bool) -> None:
    seen: list[int] = []

    class _Counting(OneCycleLR):
        def step(self, epoch: int | None = None) -> None:
            # A scheduler of a torch without `_step_count` has the public `last_epoch` only.
            bare = types.SimpleNamespace(last_epoch=self.last_epoch)
            seen.append(scheduler_step_count(self if private else bare))  # type: ignore[arg-type]
            super().step(epoch)

    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = _Counting(optimizer, max_lr=1.0, total_steps=10)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    assert seen == list(range(steps + 1))  # 0 in the constructor's own call


def test_onecycle_phases_round_trip() -> None:
    scheduler = _onecycle()
    phases = onecycle_phases(scheduler)
    assert [p["end_step"] for p in phases] == [pytest.approx(0.3 * 10 - 1), 9]
    shorter = [dict(p, end_step=p["end_step"] / 2) for p in phases]
    set_onecycle_phases(scheduler, shorter)
    assert onecycle_phases(scheduler) is shorter
    assert scheduler.state_dict()[_compat.ONECYCLE_PHASES_KEY] == shorter


def test_onecycle_phases_without_them_is_an_error() -> None:
    scheduler = _onecycle()
    delattr(scheduler, _compat.ONECYCLE_PHASES_KEY)
    with pytest.raises(RuntimeError, match="_schedule_phases"):
        onecycle_phases(scheduler)


def _found_inf_after_a_step(optimizer: torch.optim.Optimizer, grad: float) -> object:
    seen: list[object] = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: seen.append(amp_found_inf(opt)))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    (param,) = optimizer.param_groups[0]["params"]
    scaler.scale(param.sum() * grad).backward()
    scaler.step(optimizer)
    assert len(seen) == 1  # the optimizer was called: GradScaler calls fused ones on overflow too
    return seen[0]


@pytest.mark.parametrize(("grad", "skipped"), [(1.0, False), (math.inf, True)])
def test_amp_found_inf_is_set_for_fused_optimizers(grad: float, skipped: bool) -> None:
    param = nn.Parameter(torch.ones(2))
    found = _found_inf_after_a_step(torch.optim.AdamW([param], lr=0.1, fused=True), grad)
    assert isinstance(found, torch.Tensor)
    assert bool(found.item()) is skipped
    assert torch.equal(param.detach(), torch.ones(2)) is skipped


def test_amp_found_inf_is_none_for_other_optimizers() -> None:
    found = _found_inf_after_a_step(torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1), 1.0)
    assert found is None
    assert amp_found_inf(object()) is None  # type: ignore[arg-type]


# --- SLURM: slurm_requeue_signal / save_and_requeue_on_slurm / no_hpc_checkpoint_loaded -----
SLURM_VARIABLES = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "job", "SLURM_JOB_ID": "7"}


@pytest.fixture
def on_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**SLURM_VARIABLES, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLURM_NODEID", "0")


def _trainer_in(environment: Any) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", plugins=[environment], logger=False)


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        (SLURMEnvironment(auto_requeue=True), signal.SIGUSR1),
        (SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGHUP), signal.SIGHUP),
        (SLURMEnvironment(auto_requeue=False), None),
        (LightningEnvironment(), None),
    ],
    ids=["requeue", "own-signal", "no-requeue", "not-slurm"],
)
def test_slurm_requeue_signal_is_that_of_the_trainers_environment(
    on_slurm: None, monkeypatch: pytest.MonkeyPatch, environment: Any, expected: Any
) -> None:
    trainer = _trainer_in(environment)
    assert slurm_requeue_signal(trainer) == expected
    # Without the connector's: the strategy's environment, which one device does not have.
    monkeypatch.delattr(trainer._accelerator_connector, "cluster_environment")
    assert slurm_requeue_signal(trainer) is None
    ddp = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", plugins=[environment])
    monkeypatch.delattr(ddp._accelerator_connector, "cluster_environment")
    assert slurm_requeue_signal(ddp) == expected


def test_save_and_requeue_on_slurm_without_lightnings_handler_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trainer = pl.Trainer(logger=False)
    monkeypatch.delattr(type(trainer._signal_connector), "_slurm_sigusr_handler_fn")
    with pytest.raises(RuntimeError, match="_slurm_sigusr_handler_fn"):
        save_and_requeue_on_slurm(trainer, signal.SIGUSR1)


def test_no_hpc_checkpoint_loaded_hides_slurm_from_ckpt_path_none(on_slurm: None) -> None:
    # Lightning asks `detect()` when it turns `ckpt_path=None` into the newest hpc checkpoint.
    assert SLURMEnvironment.detect()
    with no_hpc_checkpoint_loaded():
        assert not SLURMEnvironment.detect()
    assert SLURMEnvironment.detect()
    with pytest.raises(KeyError), no_hpc_checkpoint_loaded():
        raise KeyError("restored on the way out too")
    assert SLURMEnvironment.detect()


_UPSTREAM = (
    "torch",
    "torchvision",
    "torchmetrics",
    "lightning",
    "lightning_utilities",
    "jsonargparse",
)


def _private_uses(source: str) -> list[str]:
    """Private names of other objects and upstream packages that ``source`` reaches for.

    ``self._x`` and ``cls._x`` are the class's own state; anything else with a leading
    underscore (``trainer._logger_connector``, ``torch._foreach_norm``), and an import of a
    private upstream module or name, is a private API.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if not node.attr.startswith("__") and ast.unparse(node.value) not in ("self", "cls"):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _UPSTREAM:
            names = [*node.module.split("."), *(alias.name for alias in node.names)]
            if any(name.startswith("_") for name in names):
                found.append(f"line {node.lineno}: from {node.module} import ...")
    return found


def test_the_audit_sees_private_uses() -> None:
    source = (
        "from lightning.fabric.utilities.types import _PATH\n"
        "from lightning.pytorch.trainer.connectors import _x\n"
        "def f(trainer, self):\n"
        "    trainer._logger_connector.reset()\n"
        "    return torch._foreach_norm([]), self._own, x.__class__\n"
    )
    assert len(_private_uses(source)) == 4


@pytest.mark.parametrize(
    "path",
    sorted(p for p in Path(_compat.__file__).parent.rglob("*.py") if p.name != "_compat.py"),
    ids=lambda p: str(p.relative_to(Path(_compat.__file__).parent)),
)
def test_private_apis_are_reached_only_through_compat(path: Path) -> None:
    assert _private_uses(path.read_text()) == []
