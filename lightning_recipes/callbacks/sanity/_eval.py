"""Rule ``eval_mode``: evaluation in eval mode without gradients, and training modes restored."""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_recipes._compat import BATCHNORM_LAYERS, DROPOUT_LAYERS
from lightning_recipes.callbacks.sanity._modes import Mode, _Rules, listing


class _EvalRules(_Rules):
    """Reads the ``training`` flag of every Dropout and BatchNorm layer of the module."""

    def __init__(self, modes: Mapping[str, Mode], warned: set[str]) -> None:
        super().__init__(modes, warned)
        #: Dropout and BatchNorm layers of the module, by qualified name.
        self.layers: list[tuple[str, nn.Module]] = []
        #: The BatchNorm layers among them.
        self.batchnorms: list[tuple[str, nn.Module]] = []
        # Training flags of `layers` after the last training batch, and whether a validation
        # inside `fit` ran since.
        self._train_modes: list[bool] | None = None
        self._eval_ran = False

    def find_layers(self, pl_module: pl.LightningModule) -> None:
        self.layers = [
            (name or type(m).__name__, m)
            for name, m in pl_module.named_modules()
            if _is_instance(m, (*DROPOUT_LAYERS, *BATCHNORM_LAYERS))
        ]
        self.batchnorms = [(n, m) for n, m in self.layers if _is_instance(m, BATCHNORM_LAYERS)]

    def train_start(self, pl_module: pl.LightningModule) -> None:
        self.find_layers(pl_module)
        self._eval_ran = False
        self._train_modes = None

    def eval_batch(self, stage: str) -> None:
        """At the start and end of each validation, test and predict batch."""
        if not self._on("eval_mode"):
            return
        training = [f"'{n}' ({type(m).__name__})" for n, m in self.layers if m.training]
        if training:
            self._report(
                "eval_mode",
                f"layers:{stage}",
                f"{stage} runs with {len(training)} layer(s) in training mode:"
                f" {listing(training)}. Fix: do not call `self.train()` in {stage} code; an"
                f" override of `on_{stage}_model_eval` must call `self.eval()`.",
            )
        if torch.is_grad_enabled():
            self._report(
                "eval_mode",
                f"grad:{stage}",
                f"{stage} runs with gradients enabled (torch.is_grad_enabled() is True). Fix:"
                " remove the `torch.set_grad_enabled(True)` that turned them on, or use"
                f" `with torch.enable_grad():` only where the {stage} step needs a gradient.",
            )

    def validation_end(self, fitting: bool) -> None:
        if fitting:
            self._eval_ran = True

    def train_batch_start(self) -> None:
        if self._eval_ran:
            self.check_restored()

    def train_batch_end(self) -> None:
        # The modes right before a validation can start, after every hook that may have
        # frozen or unfrozen a layer on purpose; one flag read per Dropout/BatchNorm layer.
        if self.layers and self._on("eval_mode"):
            self._train_modes = [m.training for _, m in self.layers]

    def check_restored(self) -> None:
        """After a validation inside ``fit``: the layers' training modes are what they were."""
        if not self._eval_ran or self._train_modes is None:
            return
        self._eval_ran = False
        if not self._on("eval_mode"):
            return
        changed = [
            f"'{n}' ({type(m).__name__}: {'train' if before else 'eval'} before validation,"
            f" {'train' if m.training else 'eval'} after)"
            for (n, m), before in zip(self.layers, self._train_modes, strict=False)
            if m.training != before
        ]
        if changed:
            self._report(
                "eval_mode",
                "restore",
                f"training did not come back to the layers' modes after validation:"
                f" {listing(changed)}. Fix: an override of `on_validation_model_train` must"
                " call `self.train()` (then re-freeze what you froze on purpose).",
            )


def _is_instance(module: nn.Module, classes: tuple[type, ...]) -> bool:
    # A function, so that the check does not narrow `module` to `object` for mypy.
    return isinstance(module, classes)
