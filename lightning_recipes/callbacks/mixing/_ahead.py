"""The mixes of the coming batches, drawn several at a time where a batch is small.

On a small batch on the CPU (the embedded digits: 64 images of 8x8) a mixing hook costs what
its ops' fixed costs add up to, not what its bytes do, and inside a fit each op costs several
times what it costs in a loop: the forward and backward passes between two hooks have evicted
the processor's caches (``benchmarks/RESULTS.md``, the per-step table). So the callbacks draw
the mixes (lam, partners, box or masks) of :data:`AHEAD_BATCHES` batches in one hook, the
later ones with warm caches, and each hook then blends its batch with its own. What can be
made for all of them at once is (``MixKernel.finish``: per-sample FMix masks and the
per-sample CutMix boxes of images), for one batch's fixed costs.

Nothing changes but the time: every batch's draws come from its own reseeded sources
(:mod:`~lightning_recipes.callbacks.mixing._randomness`), so a draw made ahead is the draw
the batch would make itself, bit for bit. They are drawn for the current batch's shape and
dtype; a batch of another shape (the smaller last batch of an epoch) draws its own. A resumed
run draws from its checkpoint's batch count on, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_recipes.callbacks.mixing._kernels import Mixed
from lightning_recipes.functional._rows import rows_pay

__all__ = ["AHEAD_BATCHES", "AHEAD_BYTES", "DrawsAhead", "Mix"]

# Batches drawn in one hook (the longer the loop, the less of its draws' cost starts with
# cold caches), and the largest batch (bytes) whose mixes are drawn ahead: the masks held
# then take at most 8 MiB.
AHEAD_BATCHES = 32
AHEAD_BYTES = 256 * 1024

# A batch's mix, drawn: `mix(x, inplace)`; None leaves the batch unmixed.
Mix = Callable[[Tensor, bool], Mixed] | None
_Key = tuple[int, tuple[int, ...], torch.dtype]


class DrawsAhead:
    """The drawn mixes of the coming batches, by batch count, shape and dtype."""

    def __init__(self) -> None:
        self._mixes: dict[_Key, Mix] = {}

    @staticmethod
    def pays(x: Tensor) -> bool:
        """Whether the mixes of ``x``'s batches are drawn ahead: a small batch on the CPU,
        where no sample-at-a-time path of :mod:`~lightning_recipes.functional._rows` is
        taken (those draw as they blend)."""
        return (
            x.device.type == "cpu"
            and not x.requires_grad
            and x.numel() * x.element_size() <= AHEAD_BYTES
            and not rows_pay(x, 1.0, False)
        )

    def take(self, count: int, x: Tensor, draw: Callable[[Sequence[int]], list[Mix]]) -> Mix:
        """The mix of batch ``count`` (of ``x``'s shape and dtype), ``draw(counts)`` drawing
        those of the batch counts ``counts``: on a miss, those of the next
        :data:`AHEAD_BATCHES` batches are drawn with it, unless mixes of later batches (of
        another shape) are still held, as for the smaller last batch of an epoch, which
        then draws its own alone."""
        shape, dtype = tuple(x.shape), x.dtype
        key = (count, shape, dtype)
        if key in self._mixes:
            return self._mixes.pop(key)
        self._mixes = {key: mix for key, mix in self._mixes.items() if key[0] > count}
        if self._mixes:
            return draw([count])[0]
        counts = range(count, count + AHEAD_BATCHES)
        mixes = draw(counts)
        self._mixes = {(c, shape, dtype): mix for c, mix in zip(counts[1:], mixes[1:], strict=True)}
        return mixes[0]

    def clear(self) -> None:
        """Forgets the drawn mixes (a new seed or batch count, or mixing has stopped)."""
        self._mixes.clear()

    def __getstate__(self) -> dict[str, Any]:
        # The drawn mixes are closures, which `pickle` (`ddp_spawn`) cannot send; they are
        # drawn again from the batch count, the same.
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._mixes = {}
