"""Where a mixing callback's randomness comes from: one seed per batch, three sources.

Every batch reseeds all sources from ``(seed, rank, batch count, callback)``, so a run resumed
from a checkpoint (which saves the seed and the batch count) draws exactly what the
uninterrupted run drew, and DDP processes (other ranks) mix differently.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lightning_recipes.functional.sampling import _concentration, _sample_beta

__all__ = ["BatchRandomness", "MethodChoice", "RandomSource", "per_sample_lam", "run_seed"]


class BatchRandomness(NamedTuple):
    """The sources of one batch's randomness, all seeded from the same per-batch seed.

    Attributes:
        python: Draws the per-batch numbers (the coin of ``p``, lam, RandomMix's method) as
            Python floats: no tensor op, and no device sync to read them.
        cpu_generator: Draws the CutMix box of a per-batch lam (Python ints, no device sync).
        device_generator: Draws everything else, on the data's device; on the CPU it is
            ``cpu_generator`` itself.
    """

    python: random.Random
    cpu_generator: torch.Generator
    device_generator: torch.Generator


def run_seed() -> int:
    """The run's seed: ``seed_everything`` exports it to every process; else torch's."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))


class RandomSource:
    """Owns the generators of a callback and reseeds them for each batch."""

    def __init__(self) -> None:
        self._python = random.Random()
        self._cpu_generator = torch.Generator()
        self._device_generator: torch.Generator | None = None

    def for_batch(self, key: str, device: torch.device) -> BatchRandomness:
        """The sources reseeded from ``key``, with the device generator on ``device``."""
        seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1
        self._python.seed(seed)
        self._cpu_generator.manual_seed(seed)
        if device.type == "cpu":
            return BatchRandomness(self._python, self._cpu_generator, self._cpu_generator)
        if self._device_generator is None or self._device_generator.device != device:
            self._device_generator = torch.Generator(device=device)
        self._device_generator.manual_seed(seed)
        return BatchRandomness(self._python, self._cpu_generator, self._device_generator)

    def __getstate__(self) -> dict[str, Any]:
        # `strategy="ddp_spawn"` sends the callbacks to each process through torch's
        # multiprocessing pickler, which cannot rebuild a `torch.Generator` there (the child
        # dies unpickling it). The generators hold nothing worth keeping: `for_batch` reseeds
        # them before every batch.
        return {"_python": self._python}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._python = state["_python"]
        self._cpu_generator = torch.Generator()
        self._device_generator = None


class MethodChoice:
    """Draws which of several methods mixes a batch (or each sample), with given probabilities.

    Args:
        probs: Probability of each method, in the callback's method order, summing to 1.
    """

    def __init__(self, probs: list[float]) -> None:
        # Upper ends of each method's interval of [0, 1), for drawing methods by inversion.
        ends = [sum(probs[: i + 1]) for i in range(len(probs))]
        self._ends = ends[:-1]

    def per_batch(self, python: random.Random) -> int:
        """One method's index for the batch, drawn on the host."""
        u = python.random()
        return sum(u >= end for end in self._ends)

    def per_sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """One method's index per sample, ``torch.long`` ``(batch_size,)`` on the generator's
        device."""
        u = torch.rand(batch_size, generator=generator, device=generator.device)
        choice = torch.zeros(batch_size, dtype=torch.long, device=generator.device)
        for end in self._ends:  # a loop over the (at most 3) methods
            choice += u >= end
        return choice


def per_sample_lam(
    alpha: float | Tensor, p: float, batch_size: int, generator: torch.Generator
) -> Tensor:
    """lam per sample on the generator's device, ``Beta(alpha, alpha)`` with one ``alpha`` for
    all or one per sample; 1 (unmixed) with probability ``1 - p``."""
    device = generator.device
    if isinstance(alpha, Tensor):
        lam = _sample_beta(alpha.unsqueeze(-1).expand(batch_size, 2).contiguous(), generator)
    else:
        lam = _sample_beta(_concentration(alpha, (batch_size,), device), generator)
    if p < 1.0:
        keep = torch.rand(batch_size, generator=generator, device=device) < p
        lam = torch.where(keep, lam, 1.0)
    return lam
