"""The guarded OneCycle: holds on AMP-skipped steps, resolves at fit start, checks resumes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR
from typing_extensions import override

from lightning_recipes._compat import (
    ONECYCLE_PHASES_KEY,
    amp_found_inf,
    get_lr_within_step,
    onecycle_anneal,
    onecycle_phases,
    scheduler_step_count,
    set_last_lr,
    set_onecycle_phases,
    steps_with_amp_scaling,
)
from lightning_recipes._validation import check_choice
from lightning_recipes.scheduler._mismatch import rescale_anchor
from lightning_recipes.scheduler._phases import rescaled_position, schedule_phases
from lightning_recipes.scheduler._progress import ScheduleProgress, schedule_progress

__all__ = [
    "MISMATCH_MODES",
    "SKIP_MODES",
    "GuardedOneCycleLR",
    "Resolver",
    "ScheduleTarget",
    "check_guard_modes",
]

#: What a resolver returns: the schedule's total number of optimizer steps and the peak LR of
#: each param group, or ``None`` when the schedule cannot be fixed yet.
ScheduleTarget = tuple[int, list[float]]
Resolver = Callable[[], "ScheduleTarget | None"]

#: The choices of ``on_skipped_step`` and ``on_schedule_mismatch``.
SKIP_MODES = ("hold", "advance")
MISMATCH_MODES = ("error", "rescale")


def check_guard_modes(on_skipped_step: Any, on_schedule_mismatch: Any) -> tuple[str, str]:
    """Validate the two modes of :class:`GuardedOneCycleLR`; both are returned unchanged."""
    return (
        check_choice(on_skipped_step, "on_skipped_step", SKIP_MODES),
        check_choice(on_schedule_mismatch, "on_schedule_mismatch", MISMATCH_MODES),
    )


class GuardedOneCycleLR(OneCycleLR):
    """:class:`~torch.optim.lr_scheduler.OneCycleLR` that holds on skipped steps and checks resumes.

    It takes every argument of torch's ``OneCycleLR`` and produces exactly the same learning
    rates and momenta as long as every ``scheduler.step()`` follows a real ``optimizer.step()``.

    Args:
        optimizer: The wrapped optimizer.
        max_lr: Peak learning rate, one float or one per param group.
        total_steps: Number of optimizer steps the schedule spans.
        on_skipped_step: ``"hold"`` (default): a ``step()`` that follows no ``optimizer.step()``
            (an AMP overflow skip) leaves the schedule where it is, so the schedule's position
            always equals the number of real parameter updates. ``"advance"``: torch's behaviour.
        on_schedule_mismatch: What :meth:`load_state_dict` does with a state whose
            ``total_steps`` differs from this scheduler's. ``"error"`` (default) raises
            :class:`ScheduleMismatchError` naming both counts. ``"rescale"`` keeps the progress
            fraction reached in the checkpoint and squeezes or stretches the rest of the schedule
            so that it ends exactly at this scheduler's ``total_steps``.
        resolver: A callable returning ``(total_steps, max_lrs)`` (one peak per param group), or
            ``None`` while they cannot be known yet. With a resolver the schedule is
            *unresolved* at first: it holds at its first step, and right before the first
            optimizer step after which the resolver answers (and when a checkpoint of a
            resolved schedule is loaded) it takes the resolver's total and peaks.
            :class:`~lightning_recipes.OneCycleModule` passes one that reads
            ``trainer.estimated_stepping_batches`` and ``max_lr`` once training really starts,
            after ``BatchSizeFinder`` and ``LearningRateFinder`` ran. The callable is not part
            of :meth:`state_dict`; the ``resolved`` flag is.
        **kwargs: Any other ``OneCycleLR`` argument (``pct_start``, ``div_factor``, ...).

    A phase of zero length (``pct_start * total_steps == 1``, e.g. 4 steps at
    ``pct_start=0.25``), where torch divides by zero, is passed at once: the step that both
    starts and ends it takes the phase's end value.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> sched = GuardedOneCycleLR(opt, max_lr=0.1, total_steps=10)
        >>> sched.step()  # no optimizer.step() happened: the schedule holds
        >>> sched.last_epoch
        0
        >>> opt.step(); sched.step()
        >>> sched.last_epoch
        1
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | list[float],
        total_steps: int,
        *,
        on_skipped_step: Literal["hold", "advance"] = "hold",
        on_schedule_mismatch: Literal["error", "rescale"] = "error",
        resolver: Resolver | None = None,
        **kwargs: Any,
    ) -> None:
        self.on_skipped_step, self.on_schedule_mismatch = check_guard_modes(
            on_skipped_step, on_schedule_mismatch
        )
        # (real step at resume, schedule position at resume) once a resume was rescaled.
        self.rescale_anchor: tuple[int, float] | None = None
        # Number of real optimizer steps since the last scheduler step. A post hook counts them:
        # GradScaler does not call `optimizer.step()` when it skips, so the hook never fires then.
        self._pending_updates = 0
        self._fused_found_inf: torch.Tensor | None = None
        self._hook = optimizer.register_step_post_hook(self._on_optimizer_step)
        # torch's defaults; kept to rebuild the phases and the group LRs when resolving.
        self._pct_start = float(kwargs.get("pct_start", 0.3))
        self._three_phase = bool(kwargs.get("three_phase", False))
        self._div_factor = float(kwargs.get("div_factor", 25.0))
        self._final_div_factor = float(kwargs.get("final_div_factor", 1e4))
        self._resolver = resolver
        #: False until the resolver fixed the total and the peaks (always True without one).
        self.resolved = resolver is None
        super().__init__(optimizer, max_lr=max_lr, total_steps=total_steps, **kwargs)
        self._pre_hook = optimizer.register_step_pre_hook(self._before_optimizer_step)

    def resolve(self) -> bool:
        """Fix ``total_steps`` and the peaks from the resolver now, unless already done.

        Only an unresolved schedule, which has not left its first step, is changed: its phases,
        each group's ``max_lr``, ``initial_lr``, ``min_lr`` and its current LR and momentum
        follow the resolver's answer.

        Returns:
            Whether the schedule is resolved (False while the resolver answers ``None``).
        """
        if self.resolved or self._resolver is None:  # unresolved only with a resolver
            return True
        target = self._resolver()
        if target is None:
            return False
        total, peaks = target
        groups = self.optimizer.param_groups
        if len(peaks) != len(groups):
            raise ValueError(
                f"The OneCycle resolver returned {len(peaks)} peak LRs for an optimizer with"
                f" {len(groups)} param groups; return one `max_lr` per param group."
            )
        self.total_steps = total
        set_onecycle_phases(self, schedule_phases(total, self._pct_start, self._three_phase))
        default_lr, old_peak = self.optimizer.defaults.get("lr"), groups[0].get("max_lr")
        if isinstance(default_lr, (int, float)) and old_peak and peaks[0] != old_peak:
            # The optimizer's own lr (used by groups added later) moves with the peaks.
            scaled = peaks[0] if default_lr == old_peak else default_lr * peaks[0] / old_peak
            self.optimizer.defaults["lr"] = scaled
        for group, peak in zip(groups, peaks, strict=True):
            group["max_lr"] = peak
            group["initial_lr"] = peak / self._div_factor
            group["min_lr"] = group["initial_lr"] / self._final_div_factor
        self.base_lrs = [group["initial_lr"] for group in groups]
        self.resolved = True
        self._refresh()
        return True

    @property
    def progress(self) -> ScheduleProgress:
        """How far the schedule got: see :func:`schedule_progress`."""
        return schedule_progress(self)

    def _before_optimizer_step(
        self, optimizer: Optimizer, args: Any, kwargs: dict[str, Any]
    ) -> None:
        # A pre hook, so that the step's own LR (at step 0: max_lr / div_factor) already uses
        # the resolved peak.
        if not self.resolved:
            self.resolve()

    def _refresh(self) -> None:
        """Write the LR (and momentum) of the current position into the param groups."""
        with get_lr_within_step(self):
            lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        set_last_lr(self, [group["lr"] for group in self.optimizer.param_groups])

    def _on_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: dict[str, Any]) -> None:
        self._pending_updates += 1
        # GradScaler always calls fused optimizers (`_step_supports_amp_scaling`), which skip the
        # update inside the kernel; the `found_inf` tensor it attaches is the only trace of a skip.
        if steps_with_amp_scaling(optimizer):
            self._fused_found_inf = amp_found_inf(optimizer)

    def _optimizer_stepped(self) -> bool:
        if self._pending_updates == 0:
            return False
        if self._fused_found_inf is not None:
            # One host sync per step, only for fused optimizers under GradScaler.
            return not bool(self._fused_found_inf.item())
        return True

    @override
    def step(self, epoch: int | None = None) -> None:
        # `_initial_step` in `LRScheduler.__init__` (step count 0) precedes any update.
        # GradScaler skips `optimizer.step()` (and so the pre hook) on overflow: resolve here
        # too, so that "advance" advances over a skipped first step of the real schedule.
        if scheduler_step_count(self) > 0 and epoch is None and not self.resolve():
            # Steps the resolver cannot place are a tuner's trials (BatchSizeFinder), which
            # restores the checkpoint it saved before them: hold at the first step meanwhile.
            self._pending_updates = 0
            self._fused_found_inf = None
            return
        if (
            scheduler_step_count(self) > 0
            and epoch is None
            and self.on_skipped_step == "hold"
            and not self._optimizer_stepped()
        ):
            return
        self._pending_updates = 0
        self._fused_found_inf = None
        super().step(epoch)

    @override
    def get_lr(self) -> list[float | torch.Tensor]:
        # torch's `OneCycleLR.get_lr`, with a rescaled position after a rescaled resume and
        # zero-length phases passed at once instead of dividing by zero.
        real = self.last_epoch
        if real > self.total_steps:
            raise ValueError(
                f"Tried to step {real} times. The specified number of total steps is"
                f" {self.total_steps}"
            )
        position = (
            float(real)
            if self.rescale_anchor is None
            else rescaled_position(self.rescale_anchor, real, self.total_steps)
        )
        # Lightning steps the scheduler once more after the last update; torch's formula then
        # runs past the end of the cosine and the LR rises again. No update uses that value,
        # but logs and summaries read it: stay at the schedule's end (min_lr) instead.
        position = min(position, float(self.total_steps - 1))
        phases = onecycle_phases(self)
        lrs: list[float | torch.Tensor] = []
        for group in self.optimizer.param_groups:
            start = 0.0
            for i, phase in enumerate(phases):
                end = phase["end_step"]
                if position <= end or i == len(phases) - 1:
                    span = end - start
                    pct = (position - start) / span if span > 0 else 1.0
                    lrs.append(
                        onecycle_anneal(self, group[phase["start_lr"]], group[phase["end_lr"]], pct)
                    )
                    if self.cycle_momentum:
                        momentum = onecycle_anneal(
                            self, group[phase["start_momentum"]], group[phase["end_momentum"]], pct
                        )
                        if self.use_beta1:
                            group["betas"] = (momentum, *group["betas"][1:])
                        else:
                            group["momentum"] = momentum
                    break
                start = end
        return lrs

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # The hooks and the resolver are bound to this run's objects; checkpoints stay plain.
        for key in ("_hook", "_pre_hook", "_resolver", "_pending_updates", "_fused_found_inf"):
            state.pop(key, None)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A checkpoint saved before the schedule was resolved (a tuner's, before its trials)
        # restores the unresolved schedule; one of a resolved schedule (checkpoints of earlier
        # versions have no flag and were resolved at build time) is compared with this run's
        # real total, so resolve first.
        saved_resolved = bool(state_dict.get("resolved", True))
        if not saved_resolved:
            state = dict(state_dict)
            if self._resolver is None:  # no way to resolve later: keep this run's own plan
                state["resolved"] = True
            super().load_state_dict(state)
            return
        self.resolve()
        saved_total = state_dict.get("total_steps")
        if saved_total is None or saved_total == self.total_steps:
            super().load_state_dict({**state_dict, "resolved": self.resolved})
            # Resolving wrote the first step's LR into the groups; restore the saved position's.
            self._refresh()
            return
        anchor = rescale_anchor(state_dict, self.total_steps, self.on_schedule_mismatch)
        keep = {
            key: value
            for key, value in state_dict.items()
            if key not in ("total_steps", ONECYCLE_PHASES_KEY, "rescale_anchor", "resolved")
            and key not in ("on_schedule_mismatch", "on_skipped_step")
        }
        self.__dict__.update(keep)
        self.rescale_anchor = anchor
        # Recompute the current LR and momentum at the new position, as a fresh step would.
        self._refresh()
