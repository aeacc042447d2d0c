"""The package's uses of private torch and Lightning APIs, each with a fallback or a clear
error, so that an upgrade that removes one breaks here, next to its test
(``tests/test_compat.py``). They are tested on the newest releases and on the oldest that
``pyproject.toml`` allows (``.ci/oldest``, ``docs/oldest.md``).
"""

from __future__ import annotations

import inspect
import signal
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from lightning.fabric.plugins.environments.slurm import SLURMEnvironment
from torch import Tensor, nn

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler, OneCycleLR

#: A local path or a URL, as Lightning's checkpoint functions take it (the same type as
#: Lightning's private ``lightning.fabric.utilities.types._PATH``).
PATH: TypeAlias = str | Path


def request_graceful_stop(trainer: pl.Trainer) -> None:
    """Make Lightning's loops stop as they do on SIGTERM: after the current batch, raising
    ``SIGTERMException`` (Lightning 2.x reads ``trainer._signal_connector.received_sigterm``).

    Without that flag (another Lightning version) a ``KeyboardInterrupt`` stops the run at once,
    which is Lightning's own Ctrl-C behaviour.
    """
    connector = getattr(trainer, "_signal_connector", None)
    if connector is None or not hasattr(connector, "received_sigterm"):
        raise KeyboardInterrupt
    connector.received_sigterm = True


def slurm_requeue_signal(trainer: pl.Trainer) -> signal.Signals | None:
    """The signal on which Lightning saves ``hpc_ckpt_<N>.ckpt`` and requeues the job: that of
    a ``SLURMEnvironment(auto_requeue=True)`` (SIGUSR1 by default), else ``None``.

    Reads ``trainer._accelerator_connector.cluster_environment`` (a single-device strategy has
    no ``cluster_environment``); without it, the strategy's, and ``None`` when neither exists.
    """
    connector = getattr(trainer, "_accelerator_connector", None)
    environment = getattr(connector, "cluster_environment", None)
    if environment is None:
        environment = getattr(trainer.strategy, "cluster_environment", None)
    if not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
        return None
    return environment.requeue_signal


def save_and_requeue_on_slurm(trainer: pl.Trainer, signum: int) -> None:
    """What Lightning does on the SLURM requeue signal: save ``hpc_ckpt_<N>.ckpt`` in
    ``default_root_dir`` (every rank takes part) and, on global rank 0, ``scontrol requeue``
    the job (``trainer._signal_connector._slurm_sigusr_handler_fn``).

    Raises:
        RuntimeError: another Lightning version, without that handler.
    """
    connector = getattr(trainer, "_signal_connector", None)
    requeue = getattr(connector, "_slurm_sigusr_handler_fn", None)
    if requeue is None:
        raise RuntimeError(
            "This Lightning version has no `_SignalConnector._slurm_sigusr_handler_fn`: the"
            " SLURM requeue of `InterruptCheckpoint` needs Lightning 2.x"
        )
    requeue(signum, None)


@contextmanager
def no_hpc_checkpoint_loaded() -> Iterator[None]:
    """Within this block, ``trainer.test(model)`` and the like evaluate ``model`` as it is.

    On SLURM, Lightning replaces ``ckpt_path=None`` by the newest ``hpc_ckpt_<N>.ckpt`` of
    ``default_root_dir`` when there is one (``_CheckpointConnector._parse_ckpt_path`` asks
    ``SLURMEnvironment.detect()``): after a requeued fit, the test of the final weights would
    load the requeue checkpoint instead. ``detect`` answers ``False`` meanwhile; the cluster
    environment of an existing trainer is already chosen.
    """
    detect = SLURMEnvironment.__dict__["detect"]
    SLURMEnvironment.detect = staticmethod(lambda: False)  # type: ignore[method-assign]
    try:
        yield
    finally:
        SLURMEnvironment.detect = detect  # type: ignore[method-assign]


def should_update_logs(trainer: pl.Trainer) -> bool:
    """Whether Lightning sends this step's metrics to the loggers (every ``log_every_n_steps``).

    Reads ``trainer._logger_connector.should_update_logs``; without it (another Lightning
    version) every step counts as a logging step, which logs more but loses nothing.
    """
    connector = getattr(trainer, "_logger_connector", None)
    return connector is None or bool(connector.should_update_logs)


def callback_state_key(callback: pl.Callback, **kwargs: Any) -> str:
    """The key under which a checkpoint holds ``callback``'s state: its class's qualified name
    and ``kwargs`` (``callback._generate_state_key(**kwargs)``).

    Without that method (another Lightning version) the key is built as Lightning 2.x builds it,
    so checkpoints keep matching their callbacks.
    """
    generate = getattr(callback, "_generate_state_key", None)
    if callable(generate):
        return str(generate(**kwargs))
    return f"{type(callback).__qualname__}{kwargs!r}"


_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def cli_method_arguments(cli: LightningCLI, subcommand: str) -> list[str]:
    """The arguments of the trainer method run by ``subcommand`` (``ckpt_path`` for ``fit``)
    that sit in its config beside ``model``, ``data`` and ``trainer``.

    Reads ``cli._subcommand_method_arguments``; without it, the method's parameters less those
    that ``cli.subcommands()`` leaves out, which is how LightningCLI picks them.
    """
    added = getattr(cli, "_subcommand_method_arguments", None)
    if isinstance(added, dict) and subcommand in added:
        return list(added[subcommand])
    skip = cli.subcommands().get(subcommand, set())
    parameters = inspect.signature(getattr(cli.trainer_class, subcommand)).parameters.values()
    skip = {"self", *skip}
    return [p.name for p in parameters if p.name not in skip and p.kind in _NAMED]


def cli_subcommand_parser(cli: LightningCLI, subcommand: str) -> LightningArgumentParser:
    """The parser of one subcommand of ``cli`` (``cli._subcommand_parsers[subcommand]``), which
    can save that subcommand's config as a file that ``--config`` reads.

    Raises:
        RuntimeError: Where ``cli`` does not keep its subcommand parsers there.
    """
    parsers = getattr(cli, "_subcommand_parsers", None)
    if isinstance(parsers, dict) and subcommand in parsers:
        parser: LightningArgumentParser = parsers[subcommand]
        return parser
    raise RuntimeError(
        f"{type(cli).__name__} has no parser for {subcommand!r} in `_subcommand_parsers`; this"
        " Lightning version cannot save the subcommand's config: use a Lightning 2.x release"
    )


def saved_class_path(hyper_parameters: Mapping[str, Any] | None) -> str | None:
    """The model class that LightningCLI recorded in a checkpoint's ``hyper_parameters``.

    LightningCLI (subclass mode) stores it under its private key ``_class_path``. None where the
    key is missing: a model not built by LightningCLI, or a Lightning that does not record it.
    """
    saved = (hyper_parameters or {}).get("_class_path")
    return saved if isinstance(saved, str) else None


def grad_scale_tensor(scaler: Any) -> Tensor | None:
    """The loss scale of a ``torch.amp.GradScaler`` as a tensor, without a host-device sync.

    ``scaler._get_scale_async()`` returns the tensor where the public ``get_scale()`` would call
    ``.item()``; without it the ``_scale`` attribute is read, and without that None comes back
    (as before the first ``scaler.scale(loss)``), so the caller sees no scaler.
    """
    getter = getattr(scaler, "_get_scale_async", None)
    scale = getter() if callable(getter) else getattr(scaler, "_scale", None)
    return scale if isinstance(scale, Tensor) else None


def sample_dirichlet(concentration: Tensor, generator: torch.Generator | None) -> Tensor:
    """One ``Dirichlet`` sample per row of ``concentration`` (``(..., k)``), from ``generator``.

    ``torch._sample_dirichlet`` is what ``torch.distributions.Dirichlet`` (and ``Beta``) sample
    with, and unlike them it takes a generator. Without it, ``generator=None`` falls back to
    independent ``torch.distributions.Gamma(concentration, 1)`` draws on the global random state,
    normalised to sum to 1 (a Dirichlet sample); an explicit generator cannot be honoured by any
    public torch sampler, so that is a ``RuntimeError``.
    """
    sampler = getattr(torch, "_sample_dirichlet", None)
    if sampler is not None:
        sample: Tensor = sampler(concentration, generator=generator)
        return sample
    if generator is None:
        gammas = torch.distributions.Gamma(concentration, torch.ones_like(concentration)).sample()
        # Small concentrations can underflow every draw of a row to 0: the row is then uniform.
        gammas = gammas.clamp_min(torch.finfo(gammas.dtype).tiny)
        return gammas / gammas.sum(-1, keepdim=True)
    raise RuntimeError(
        f"torch {torch.__version__} has no `torch._sample_dirichlet`, the only Beta/Dirichlet"
        " sampler that takes a `generator`; pass `generator=None`, or use a torch that has it"
    )


def is_view(x: Tensor) -> bool:
    """Whether ``x`` shares its storage with another tensor it was made from (``x._is_view()``).

    Falls back to ``x._base is not None``, and to False (no view detected) without either.
    """
    check = getattr(x, "_is_view", None)
    if callable(check):
        return bool(check())
    return getattr(x, "_base", None) is not None


def view_base(x: Tensor) -> Tensor:
    """The tensor ``x`` is a view of (``x._base``), or ``x`` itself where torch does not say."""
    base = getattr(x, "_base", None)
    return x if base is None else base


def foreach_norm(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The 2-norm of each tensor (all on one device), each in the tensor's dtype.

    ``torch._foreach_norm`` computes them in one fused kernel; the fallback is one
    ``torch.linalg.vector_norm`` per tensor, the same values.
    """
    fused = getattr(torch, "_foreach_norm", None)
    if fused is not None:
        return list(fused(list(tensors)))
    return [torch.linalg.vector_norm(t) for t in tensors]


_WITHIN_STEP = "_get_lr_called_within_step"
_LAST_LR = "_last_lr"


@contextmanager
def get_lr_within_step(scheduler: LRScheduler) -> Iterator[None]:
    """Let ``scheduler.get_lr()`` be called outside ``step()`` without torch's warning.

    torch warns when ``get_lr()`` runs while ``_get_lr_called_within_step`` is False, the flag
    its own ``step()`` sets around the call; this sets it for the block and puts the previous
    value back. A torch without the flag has no warning to silence: setting it is harmless.
    """
    previous = getattr(scheduler, _WITHIN_STEP, False)
    setattr(scheduler, _WITHIN_STEP, True)
    try:
        yield
    finally:
        setattr(scheduler, _WITHIN_STEP, previous)


def onecycle_anneal(
    scheduler: OneCycleLR, start: float | Tensor, end: float | Tensor, pct: float
) -> float | Tensor:
    """``OneCycleLR``'s interpolation from ``start`` to ``end`` at ``pct`` in [0, 1], by its
    ``anneal_strategy`` (``"cos"`` or ``"linear"``).

    torch 2.x calls it ``_anneal_func``; earlier releases had a public ``anneal_func``
    attribute, used where the method is missing. Without either, a ``RuntimeError``.
    """
    anneal = getattr(scheduler, "_anneal_func", None) or getattr(scheduler, "anneal_func", None)
    if anneal is None:
        raise RuntimeError(
            f"torch {torch.__version__}'s `OneCycleLR` has neither `_anneal_func` nor"
            " `anneal_func`; `GuardedOneCycleLR` needs one of them: use a torch that has it"
        )
    value: float | Tensor = anneal(start, end, pct)
    return value


def set_last_lr(scheduler: LRScheduler, lrs: list[float]) -> None:
    """Make ``scheduler.get_last_lr()`` return ``lrs`` (it returns ``scheduler._last_lr``)."""
    setattr(scheduler, _LAST_LR, lrs)


def scheduler_step_count(scheduler: LRScheduler) -> int:
    """How many times ``scheduler.step()`` has run, the call in its constructor included
    (``scheduler._step_count``): 0 while that first call runs.

    Falls back to ``last_epoch + 1``, the same count for a scheduler built with the default
    ``last_epoch=-1`` and stepped without an ``epoch`` argument.
    """
    count = getattr(scheduler, "_step_count", None)
    return count if isinstance(count, int) else scheduler.last_epoch + 1


#: The attribute (and ``state_dict`` key) of ``OneCycleLR``'s phases.
ONECYCLE_PHASES_KEY = "_schedule_phases"


def onecycle_phases(scheduler: OneCycleLR) -> list[dict[str, Any]]:
    """``OneCycleLR``'s phases (``_schedule_phases``): one dict per phase with its
    ``end_step`` and the param-group keys of its start and end LR and momentum.

    Raises:
        RuntimeError: Where the scheduler has no such list (a torch that renamed it).
    """
    phases = getattr(scheduler, ONECYCLE_PHASES_KEY, None)
    if not isinstance(phases, list):
        raise RuntimeError(
            f"torch {torch.__version__}'s `OneCycleLR` has no `{ONECYCLE_PHASES_KEY}` list;"
            " `GuardedOneCycleLR` needs it: use a torch that has it"
        )
    return phases


def set_onecycle_phases(scheduler: OneCycleLR, phases: list[dict[str, Any]]) -> None:
    """Replace ``OneCycleLR``'s phases (read back by :func:`onecycle_phases`)."""
    setattr(scheduler, ONECYCLE_PHASES_KEY, phases)


def steps_with_amp_scaling(optimizer: Optimizer) -> bool:
    """Whether ``GradScaler`` hands the overflow check to the optimizer (fused optimizers).

    Such an optimizer (``_step_supports_amp_scaling``) is always called by ``scaler.step`` and
    skips the update inside its kernel, leaving a ``found_inf`` tensor as the only trace. False
    where the attribute is missing: the step is then taken to have happened.
    """
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def amp_found_inf(optimizer: Optimizer) -> Tensor | None:
    """The ``found_inf`` tensor that ``GradScaler.step`` hands to an optimizer that
    :func:`steps_with_amp_scaling` (nonzero where the step was skipped), read in a step hook.

    None where there is none: no scaler, another optimizer, or a torch that passes it otherwise;
    the step is then taken to have happened.
    """
    found = getattr(optimizer, "found_inf", None)
    return found if isinstance(found, Tensor) else None


def _private_class(module: Any, name: str, fallback: tuple[type, ...]) -> tuple[type, ...]:
    cls = getattr(module, name, None)
    return (cls,) if isinstance(cls, type) else fallback


def _dims(family: str) -> tuple[type, ...]:
    return tuple(getattr(nn, f"{lazy}{family}{d}d") for lazy in ("", "Lazy") for d in (1, 2, 3))


# torch's private base classes of its layer families, and the public subclasses they have in
# torch 2.x as the fallback where a base is gone.
_BATCHNORM_FALLBACK = (*_dims("BatchNorm"), nn.SyncBatchNorm)
_NORM_FALLBACK = _BATCHNORM_FALLBACK + _dims("InstanceNorm")
_DROPOUT_FALLBACK: tuple[type, ...] = (nn.Dropout, nn.AlphaDropout, nn.FeatureAlphaDropout)
_DROPOUT_FALLBACK += tuple(getattr(nn, f"Dropout{d}d") for d in (1, 2, 3))
#: BatchNorm and InstanceNorm layers (``nn.modules.batchnorm._NormBase``).
NORM_LAYERS = _private_class(nn.modules.batchnorm, "_NormBase", _NORM_FALLBACK)
#: BatchNorm layers, SyncBatchNorm included (``nn.modules.batchnorm._BatchNorm``).
BATCHNORM_LAYERS = _private_class(nn.modules.batchnorm, "_BatchNorm", _BATCHNORM_FALLBACK)
#: Dropout layers (``nn.modules.dropout._DropoutNd``).
DROPOUT_LAYERS = _private_class(nn.modules.dropout, "_DropoutNd", _DROPOUT_FALLBACK)
