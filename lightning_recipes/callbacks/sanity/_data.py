"""Rules ``batchnorm_batch`` and ``finite_inputs``: what each batch holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_recipes.callbacks.sanity._modes import _Rules, listing


class _DataRules(_Rules):
    """Reads the batch size on each training batch, and the values of every batch."""

    def check_batchnorm_batch(
        self, batchnorms: list[tuple[str, nn.Module]], batch: Any, where: str
    ) -> None:
        """A training batch of one sample while a BatchNorm layer uses batch statistics."""
        if not batchnorms or not self._on("batchnorm_batch") or _batch_size(batch) != 1:
            return
        # In eval mode BatchNorm uses running statistics, unless it tracks none.
        active = [
            f"'{n}' ({type(m).__name__})"
            for n, m in batchnorms
            if m.training or not m.track_running_stats
        ]
        if active:
            self._report(
                "batchnorm_batch",
                "batch1",
                f"{where} has 1 sample on this device while BatchNorm layer(s) {listing(active)}"
                " are in training mode. Fix: `DataLoader(..., drop_last=True)`, a larger batch"
                " size, or GroupNorm / LayerNorm.",
            )

    def check_finite_inputs(self, batch: Any, where: str) -> None:
        if not self._on("finite_inputs"):
            return
        tensors = list(_float_tensors(batch, "batch"))
        if not tensors:
            return
        # One flag per tensor, read on the host at once: a single synchronisation.
        device = tensors[0][1].device
        flags = torch.stack([t.isfinite().all().to(device) for _, t in tensors]).cpu()
        if bool(flags.all()):
            return
        for (name, t), finite in zip(tensors, flags.tolist(), strict=True):
            if not finite:
                self._report(
                    "finite_inputs",
                    name,
                    f"{where}: `{name}` holds {_non_finite_samples(t)}. Fix: find where they come"
                    " from (a normalisation by a zero std, a corrupt file), or drop such samples"
                    " in the Dataset or a `collate_fn`.",
                )


def _batch_size(batch: Any) -> int | None:
    """Size of the first dimension of the first tensor in a (nested) batch, if any."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        for item in batch:
            size = _batch_size(item)
            if size is not None:
                return size
    return None


def _float_tensors(batch: Any, name: str) -> Iterable[tuple[str, Tensor]]:
    """The floating-point tensors of a (nested) list, tuple or dict batch, with their names."""
    if isinstance(batch, Tensor):
        if batch.is_floating_point() and batch.numel():
            yield name, batch
    elif isinstance(batch, Mapping):
        for key, item in batch.items():
            yield from _float_tensors(item, f"{name}[{key!r}]")
    elif isinstance(batch, (list, tuple)):
        for i, item in enumerate(batch):
            yield from _float_tensors(item, f"{name}[{i}]")


def _non_finite_samples(t: Tensor) -> str:
    """``NaN in samples [1, 3] of 4``: which samples hold NaN / inf (for a broken tensor)."""
    rows = t.detach().reshape(t.shape[0], -1) if t.ndim else t.detach().reshape(1, 1)
    parts = []
    for label, mask in (("NaN", rows.isnan().any(1)), ("inf", rows.isinf().any(1))):
        samples = [str(i) for i in mask.nonzero().flatten().tolist()]
        if samples:
            parts.append(f"{label} in samples [{listing(samples)}]")
    return f"{' and '.join(parts)} of {rows.shape[0]}"
