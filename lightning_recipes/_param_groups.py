"""Parameter groups of a OneCycle optimizer: one peak LR per name prefix, decayed or not.

By default biases and normalisation parameters get no weight decay, the "no bias decay" of
He et al. 2019 (Bag of Tricks for Image Classification, section 3.3); 0-d parameters (a learned
temperature or scale) are never decayed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from lightning_recipes._compat import NORM_LAYERS

__all__ = ["onecycle_param_groups"]

_NORM_TYPES = (
    *NORM_LAYERS,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)


def onecycle_param_groups(
    module: nn.Module,
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    max_lr: float,
    weight_decay: float,
    decay_norm_and_bias: bool,
    param_group_max_lr: Mapping[str, float] | None,
) -> list[dict[str, Any]]:
    """Split trainable parameters into groups by peak LR and weight decay.

    Each group carries ``"name"`` (the prefix without its trailing dot, or ``"default"``, and
    ``"/no_decay"`` for the undecayed group), ``"params"``, ``"weight_decay"`` and ``"max_lr"``.
    Empty groups are left out; frozen parameters (``requires_grad=False``) are skipped. The
    order is the default groups, then each prefix's in sorted order, decayed before undecayed.

    Args:
        module: The module whose layers tell biases and normalisation parameters apart.
        named_parameters: The parameters to group, with their names in ``module``.
        max_lr: Peak LR of parameters no prefix matches.
        weight_decay: Weight decay of the decayed groups.
        decay_norm_and_bias: ``False``: only parameters of 2 or more dims that are neither a
            bias nor in a normalisation layer are decayed. ``True``: every parameter of 1 or
            more dims. 0-d parameters are never decayed. Lazy parameters not yet materialised
            are grouped by what they become (a weight >= 2-d, a bias or norm parameter 1-d).
        param_group_max_lr: Peak LR by parameter-name prefix; the longest matching one wins.
    """
    peaks = dict(param_group_max_lr or {})
    longest_first = sorted(peaks, key=len, reverse=True)
    no_decay = _bias_and_norm_names(module)
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        prefix = next((p for p in longest_first if name.startswith(p)), "")
        decay = _decays(name, param, no_decay, decay_norm_and_bias)
        key = (prefix, decay)
        if key not in groups:
            label = prefix.rstrip(".") or "default"
            groups[key] = {
                "name": label if decay else f"{label}/no_decay",
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "max_lr": peaks.get(prefix, max_lr),
            }
        groups[key]["params"].append(param)
    return [
        groups[(prefix, decay)]
        for prefix in ["", *sorted(peaks)]
        for decay in (True, False)
        if (prefix, decay) in groups
    ]


def _decays(name: str, param: nn.Parameter, no_decay: set[str], decay_all: bool) -> bool:
    """Whether ``param`` gets weight decay; lazy parameters by what they will become."""
    if isinstance(param, nn.parameter.UninitializedParameter):
        # A lazy layer's weight is a matrix or a kernel once materialised (>= 2-d); its bias
        # and a lazy norm layer's parameters are 1-d.
        return decay_all or name not in no_decay
    if decay_all:
        return param.ndim >= 1
    return name not in no_decay and param.ndim > 1


def _bias_and_norm_names(module: nn.Module) -> set[str]:
    names = set()
    for module_name, sub in module.named_modules():
        for param_name, _ in sub.named_parameters(recurse=False):
            if isinstance(sub, _NORM_TYPES) or param_name == "bias":
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names
