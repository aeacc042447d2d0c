"""The training-loop facts stated in the docs, each demonstrated with plain torch.

These tests check torch (and the loop's order of calls), not this package: they back the
sentences of ``docs/training-loop.md``, "The training loop, stated right", and each is named after
the sentence it backs, so that a change in torch that makes one false shows up here.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR, StepLR


def _param(value: float = 1.0) -> nn.Parameter:
    return nn.Parameter(torch.full((3,), value))


# ---------------------------------------------------------------- dropout
@pytest.mark.parametrize("p", [0.1, 0.3, 0.8])  # at 0.5, 1/p and 1/(1-p) coincide
def test_dropout_scales_kept_activations_by_one_over_one_minus_p_in_training(p: float) -> None:
    torch.manual_seed(0)
    drop = nn.Dropout(p).train()
    x = torch.rand(200_000) + 0.5
    y = drop(x)
    kept = y != 0
    # Kept units are multiplied by 1/(1-p) ("inverted dropout"), not by 1/p, so the expected
    # activation is unchanged and nothing needs rescaling at evaluation time.
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    assert not torch.allclose(y[kept], x[kept] / p)
    assert (~kept).float().mean().item() == pytest.approx(p, abs=0.01)
    assert y.mean().item() == pytest.approx(x.mean().item(), rel=0.02)


def test_dropout_does_nothing_in_eval_mode() -> None:
    drop = nn.Dropout(0.5).eval()
    x = torch.randn(1000)
    assert torch.equal(drop(x), x)


# ---------------------------------------------------------------- eval() vs no_grad()
def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 64), nn.BatchNorm1d(64), nn.Dropout(0.5))


def test_eval_changes_layers_but_keeps_autograd_on() -> None:
    net = _net().eval()
    x = torch.randn(8, 4)
    out = net(x)
    assert out.requires_grad  # eval() does not disable gradients
    assert torch.equal(out, net(x))  # deterministic: dropout off, BatchNorm uses running stats


def test_no_grad_disables_autograd_but_keeps_training_behaviour() -> None:
    net = _net().train()
    x = torch.randn(8, 4)
    before = net[1].running_mean.clone()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert not a.requires_grad  # no_grad() disables autograd ...
    assert not torch.equal(a, b)  # ... but dropout still drops at random,
    assert (a == 0).any()
    assert not torch.equal(net[1].running_mean, before)  # and BatchNorm still updates its stats


def test_inference_mode_is_no_grad_plus_no_version_tracking_and_still_not_eval() -> None:
    net = _net().train()
    x = torch.randn(8, 4)
    with torch.inference_mode():
        out = net(x)
    assert out.is_inference() and not out.requires_grad
    assert (out == 0).any()  # training-mode dropout: inference_mode() does not call eval()
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        (out * net[0].weight.sum()).sum().backward()


# ---------------------------------------------------------------- OneCycleLR
def _onecycle(
    total: int = 100, max_lr: float = 0.1, pct_start: float = 0.3
) -> tuple[torch.optim.SGD, OneCycleLR]:
    opt = torch.optim.SGD([_param()], lr=123.0, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=pct_start)
    return opt, sched


def test_onecycle_overwrites_the_optimizer_lr_with_initial_lr() -> None:
    opt, _ = _onecycle()
    group = opt.param_groups[0]
    assert opt.defaults["lr"] == 123.0  # the lr given to the optimizer is never used
    assert group["initial_lr"] == pytest.approx(0.1 / 25)  # max_lr / div_factor
    assert group["lr"] == pytest.approx(group["initial_lr"])
    assert group["max_lr"] == 0.1
    assert group["min_lr"] == pytest.approx(0.1 / 25 / 1e4)  # initial_lr / final_div_factor


def test_onecycle_peaks_at_pct_start_times_total_minus_one_and_ends_at_min_lr() -> None:
    total, pct = 100, 0.3
    opt, sched = _onecycle(total, pct_start=pct)
    lrs, momenta = [], []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        momenta.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    peak = int(pct * total) - 1
    assert lrs.index(max(lrs)) == peak and lrs[peak] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(opt.param_groups[0]["min_lr"])
    # Momentum moves inversely: max_momentum (0.95) at the ends, base_momentum (0.85) at the peak.
    assert momenta[0] == pytest.approx(0.95) and momenta[peak] == pytest.approx(0.85)
    assert momenta[-1] == pytest.approx(0.95)
    with pytest.raises(ValueError, match=f"Tried to step {total + 1} times"):
        sched.step()  # total_steps is the number of optimizer steps; one more is an error


def test_onecycle_stepped_per_epoch_never_leaves_its_warm_up() -> None:
    epochs, batches = 10, 50
    opt, sched = _onecycle(total=epochs * batches)
    for _ in range(epochs):
        for _ in range(batches):
            opt.step()
        sched.step()  # wrong: once per epoch
    # After the whole fit the schedule is 10 steps into a 500-step cycle: barely off initial_lr.
    assert sched.last_epoch == epochs
    assert opt.param_groups[0]["lr"] < 0.1 * 0.1


# ---------------------------------------------------------------- GradScaler
def _scaled_step(
    scaler: torch.amp.GradScaler, opt: torch.optim.Optimizer, p: nn.Parameter, grad: float
) -> None:
    opt.zero_grad()
    scaler.scale((p * grad).sum()).backward()
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize("fused", [False, True])
def test_gradscaler_skips_the_step_on_overflow_and_backs_off(fused: bool) -> None:
    p = _param()
    opt = torch.optim.Adam([p], lr=0.1, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    _scaled_step(scaler, opt, p, float("inf"))
    assert torch.equal(p.detach(), torch.ones(3))  # the update was skipped, params untouched
    assert scaler.get_scale() == 2.0**16 * 0.5  # scale *= backoff_factor
    _scaled_step(scaler, opt, p, 1.0)
    assert not torch.equal(p.detach(), torch.ones(3))
    assert scaler.get_scale() == 2.0**15  # a clean step keeps the scale ...


def test_gradscaler_grows_after_growth_interval_clean_steps() -> None:
    p = _param()
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_factor=2.0, growth_interval=3)
    scales = []
    for _ in range(7):
        _scaled_step(scaler, opt, p, 1.0)
        scales.append(scaler.get_scale())
    assert scales == [8, 8, 16, 16, 16, 32, 32]  # ... and doubles after 3 clean steps in a row


def test_gradscaler_skip_is_invisible_to_the_scheduler() -> None:
    """Why a scheduler stepped after a skipped update warns, and runs ahead (Lightning #5558)."""
    p = _param()
    opt = torch.optim.SGD([p], lr=0.1)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu")
    with pytest.warns(
        UserWarning, match=re.escape("Detected call of `lr_scheduler.step()` before")
    ):
        _scaled_step(scaler, opt, p, float("inf"))  # skipped: optimizer.step() never ran
        sched.step()
    assert sched.last_epoch == 1 and torch.equal(p.detach(), torch.ones(3))


# ---------------------------------------------------------------- the order of a step
def test_scheduler_before_optimizer_warns_and_skips_the_first_lr() -> None:
    p = _param()
    opt = torch.optim.SGD([p], lr=0.1)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    with pytest.warns(
        UserWarning, match=re.escape("Detected call of `lr_scheduler.step()` before")
    ):
        sched.step()
    p.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 1 - 0.05))  # lr 0.1 was never used


def test_zero_grad_backward_step_scheduler_order_is_silent() -> None:
    p = _param()
    opt = torch.optim.SGD([p], lr=0.1)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            opt.zero_grad()
            p.sum().backward()
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    assert lrs == [0.1, 0.05, 0.025]
    assert torch.allclose(p.detach(), torch.full((3,), 1 - 0.175))


def test_backward_without_zero_grad_accumulates() -> None:
    p = _param()
    for n in (1, 2, 3):
        (2 * p).sum().backward()
        assert torch.equal(p.grad, torch.full((3,), 2.0 * n))  # gradients add up


def test_optimizer_zero_grad_only_clears_its_own_parameters() -> None:
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD([model.weight], lr=0.1)  # bias left out by mistake
    model(torch.ones(1, 3)).sum().backward()
    opt.zero_grad()
    assert model.weight.grad is None and model.bias.grad is not None
    model.zero_grad()
    assert model.bias.grad is None


# ---------------------------------------------------------------- get_lr() vs get_last_lr()
def test_get_lr_outside_step_is_not_the_current_lr() -> None:
    """pytorch issue 31871: read get_last_lr() (or param_groups), never get_lr()."""
    opt = torch.optim.SGD([_param()], lr=0.1)
    sched = StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(2):
        opt.step()
        sched.step()
    assert sched.get_last_lr() == [opt.param_groups[0]["lr"]] == [0.05]
    with pytest.warns(UserWarning, match=re.escape("please use `get_last_lr()`")):
        recomputed = sched.get_lr()
    assert recomputed == [0.025]  # applies the decay again at the boundary
