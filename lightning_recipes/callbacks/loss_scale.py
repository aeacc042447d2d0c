"""``LossScaleMonitor``: the mixed-precision loss scale and the optimizer steps it skipped.

With ``precision="16-mixed"``, ``torch.amp.GradScaler`` multiplies the loss by a scale before
``backward`` so that small fp16 gradients do not flush to zero. When the scaled gradients
overflow (inf or NaN), ``scaler.step(optimizer)`` skips the update and ``scaler.update()``
multiplies the scale by ``backoff_factor`` (0.5); after ``growth_interval`` (2000) clean steps in
a row it multiplies the scale by ``growth_factor`` (2). Lightning still steps the LR scheduler on
a skipped step (Lightning issue 5558), and nothing in its logs shows that a step was skipped.

A skipped step is recognised by the scale dropping across the step. That also works for fused
optimizers (``Adam(fused=True)``), which ``GradScaler`` always calls and which skip the update
inside the kernel, so the optimizer's ``step`` runs either way.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_recipes._compat import grad_scale_tensor
from lightning_recipes._validation import check_bool

__all__ = ["LossScaleMonitor"]

_SCALE_KEY = "loss_scale"
_SKIPPED_KEY = "loss_scale-skipped_steps"


class LossScaleMonitor(Callback):
    """Log the ``GradScaler`` loss scale and the running count of skipped optimizer steps.

    Logged keys (through ``LightningModule.log``, so at the trainer's ``log_every_n_steps``):

    * ``loss_scale``: the scale after the step's ``scaler.update()``;
    * ``loss_scale-skipped_steps``: optimizer steps skipped since the start of training because
      the scaled gradients overflowed.

    The scaler is read from ``trainer.precision_plugin.scaler`` (Lightning's ``MixedPrecision``
    plugin, also FSDP's). With bf16 or 32-bit precision there is no scaler: the callback says so
    once, as a warning, and does nothing else.

    Cost: the scale is a tensor on the training device. The callback copies it before each
    optimizer step and compares it after the step on the device (``scale < scale_before``, added
    to a device counter), so it adds no host-device synchronisation of its own; the logged
    tensors are converted to numbers only when Lightning writes its logs. :attr:`skipped_steps`
    and :attr:`scale` read the device values and do synchronise.

    Args:
        prog_bar: Also show both values in the progress bar.

    Example:
        >>> from lightning.pytorch.plugins.precision import MixedPrecision
        >>> monitor = LossScaleMonitor()
        >>> plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
        >>> # pl.Trainer(plugins=[plugin], callbacks=[monitor]).fit(model)
        >>> monitor.skipped_steps
        0
    """

    def __init__(self, *, prog_bar: bool = False) -> None:
        self.prog_bar = check_bool(prog_bar, "prog_bar")
        self._scaler: Any | None = None
        self._pending: Tensor | None = None
        self._skipped: Tensor | None = None
        self._skipped_offset = 0
        self._stepped = False

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped so far (synchronises with the device)."""
        if self._skipped is None:
            return self._skipped_offset
        return int(self._skipped.item())

    @property
    def scale(self) -> float | None:
        """The current loss scale, ``None`` without a scaler (synchronises with the device)."""
        return None if self._scaler is None else float(self._scaler.get_scale())

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            # Counted afresh; a resumed fit gets its count from the checkpoint, which Lightning
            # loads after `setup`.
            self._skipped = None
            self._skipped_offset = 0
            self._pending = None
            self._stepped = False

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is None or not scaler.is_enabled():
            self._scaler = None
            rank_zero_warn(
                f"LossScaleMonitor: precision={trainer.precision!r} uses no GradScaler (bf16 and"
                " 32-bit training never scale the loss), so the callback logs nothing; remove it"
                " or train with precision='16-mixed'."
            )
            return
        self._scaler = scaler

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if self._scaler is None:
            return
        # Manual optimization may step several optimizers in one batch, each with its own
        # `scaler.update()`: settle the previous step before recording this one.
        self._settle()
        scale = grad_scale_tensor(self._scaler)
        if scale is not None:
            # This hook runs after backward and before `scaler.step()` / `scaler.update()`,
            # so this is the scale this step's gradients were computed with.
            self._pending = scale.detach().clone()

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._scaler is None:
            return
        self._settle()
        if not self._stepped:  # a micro-batch under gradient accumulation
            return
        self._stepped = False
        scale = grad_scale_tensor(self._scaler)
        if scale is None or self._skipped is None:
            return
        kwargs: dict[str, Any] = {"on_step": True, "on_epoch": False, "prog_bar": self.prog_bar}
        pl_module.log(_SCALE_KEY, scale, **kwargs)
        pl_module.log(_SKIPPED_KEY, self._skipped, **kwargs)

    def _settle(self) -> None:
        """Count the step recorded in ``on_before_optimizer_step`` as skipped if the scale fell."""
        if self._pending is None or self._scaler is None:
            return
        scale = grad_scale_tensor(self._scaler)
        if scale is not None:
            if self._skipped is None:
                self._skipped = torch.full(
                    (), float(self._skipped_offset), dtype=torch.float32, device=scale.device
                )
            # `update()` multiplies the scale by backoff_factor < 1 exactly when it found inf.
            self._skipped.add_(scale < self._pending)
        self._pending = None
        self._stepped = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._skipped_offset = int(state_dict.get("skipped_steps", 0))
        self._skipped = None
