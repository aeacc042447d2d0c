"""Rules ``param_groups`` and ``zero_grad``: what the optimizers hold, how gradients are cleared."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_recipes._compat import foreach_norm
from lightning_recipes.callbacks.sanity._modes import Mode, _Rules, listing


class _OptimizerRules(_Rules):
    """``param_groups`` once at train start; ``zero_grad`` at every backward and optimizer step."""

    def __init__(self, modes: Mapping[str, Mode], warned: set[str]) -> None:
        super().__init__(modes, warned)
        # Per optimizer index: its parameters, its number of groups when they were listed,
        # whether the current accumulation window started clean, and whether a backward ran.
        self._optimizers: list[Optimizer] = []
        self._index: dict[int, int] = {}
        self._params: list[list[Tensor]] = []
        self._n_groups: list[int] = []
        self._window_clean: list[bool] = []
        self._backward_seen: list[bool] = []
        # Automatic optimization: the order check runs on the first step of each epoch only.
        self._order_check_due = True

    def train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizers = [getattr(opt, "optimizer", opt) for opt in trainer.optimizers]
        self._optimizers = optimizers
        self._index = {id(opt): i for i, opt in enumerate(optimizers)}
        self._params = [_optimizer_params(opt) for opt in optimizers]
        self._n_groups = [len(opt.param_groups) for opt in optimizers]
        self._window_clean = [False] * len(optimizers)
        self._backward_seen = [False] * len(optimizers)
        if self._on("param_groups"):
            self._check_param_groups(pl_module, optimizers)

    def train_epoch_start(self) -> None:
        self._order_check_due = True

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
                f"{len(missing)} trainable parameter(s) of {module} are in no optimizer and never"
                f" train: {listing(missing)}. Fix: build the optimizer from `self.parameters()`,"
                " or freeze them with `requires_grad_(False)`.",
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
                f"{len(shared)} parameter(s) of {module} are in more than one optimizer, so a step"
                f" updates them twice or more: {listing(shared)}. Fix: give every parameter to"
                " exactly one optimizer.",
            )
        if foreign:
            self._report(
                "param_groups",
                "foreign",
                f"{len(foreign)} tensor(s) in the optimizers are not parameters of {module}:"
                f" {listing(foreign)}. Fix: build the optimizer in `configure_optimizers` from"
                " `self.parameters()`.",
            )

    # ------------------------------------------------------------------ rule: zero_grad
    def before_backward(self) -> None:
        if not self._on("zero_grad"):
            return
        for i, clean in enumerate(self._window_clean):
            self._backward_seen[i] = True
            # Only the first backward of a window costs anything: once an optimizer's gradients
            # were seen clean, nothing is checked until it steps.
            if not clean:
                self._window_clean[i] = _all_zero_or_none(self._current_params(i))

    def before_optimizer_step(
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
        what = (
            f"optimizer {i} ({type(optimizer).__name__}) of {type(pl_module).__name__} steps at"
            f" global step {trainer.global_step}"
        )
        if not clean:
            self._report(
                "zero_grad",
                f"stale:{i}",
                f"{what} with gradients left from its previous steps (not zero or None at the"
                " first backward()). Fix: call `optimizer.zero_grad()` once per step, before"
                " backward(); an `optimizer_zero_grad` override must call it.",
            )
        elif self._order_check(pl_module) and _all_zero_or_none(self._current_params(i)):
            self._report(
                "zero_grad",
                f"order:{i}",
                f"{what} with every gradient zero or None although backward() ran, so the update"
                " does nothing. Fix: keep the order zero_grad() -> backward() -> step().",
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
