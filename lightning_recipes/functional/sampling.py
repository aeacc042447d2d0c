"""The randomness every mixing method shares: the mixing ratio and the partner of each sample.

Both are drawn from an explicit ``torch.Generator`` on the device where they are used, so a
training step needs no host-device transfer and a test can pin them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_recipes._compat import sample_dirichlet
from lightning_recipes._validation import check_alpha, check_int

__all__ = ["sample_lam", "sample_partners"]


def sample_lam(
    alpha: float,
    size: Sequence[int] = (),
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draws mixing ratios from ``Beta(alpha, alpha)`` (Zhang et al. 2018, "mixup").

    Args:
        alpha: Concentration of the symmetric Beta distribution; 1 is uniform on [0, 1],
            smaller values favour ratios near 0 and 1 (little mixing).
        size: Shape of the result; ``()`` for one ratio per batch, ``(batch,)`` per sample.
        generator: Source of randomness, on ``device``.
        device: Where to draw; defaults to the generator's device (else the CPU).

    Returns:
        A float32 tensor of shape ``size``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> lam = sample_lam(0.4, (8,), generator=g)
        >>> lam.shape, bool(((lam >= 0) & (lam <= 1)).all())
        (torch.Size([8]), True)
    """
    alpha = check_alpha(alpha)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    return _sample_beta(_concentration(alpha, tuple(size), torch.device(device)), generator)


@functools.lru_cache(maxsize=16)
def _concentration(alpha: float, size: tuple[int, ...], device: torch.device) -> Tensor:
    """``(*size, 2)`` float32 filled with ``alpha`` (cached: the callbacks draw from the same
    one on every batch, and the sampler only reads it)."""
    return torch.full((*size, 2), alpha, dtype=torch.float32, device=device)


def _sample_beta(concentration: Tensor, generator: torch.Generator | None) -> Tensor:
    """``Beta(a, b)`` for each row ``(a, b)`` of ``concentration`` ``(..., 2)``.

    Beta(a, b) is the first coordinate of Dirichlet(a, b), drawn from ``generator`` (see
    :func:`lightning_recipes._compat.sample_dirichlet`).
    """
    return sample_dirichlet(concentration, generator)[..., 0]


def sample_partners(
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draws the partner index of each sample: a random permutation without fixed points.

    The batch is shuffled into a random cycle and each sample is paired with the next one on
    it, so no sample is "mixed" with itself (a wasted, unmixed sample) for any batch size of
    2 or more, odd sizes included. timm's flipped pairing instead needs an even batch, and a
    plain random permutation leaves one sample unmixed per batch on average. A batch of one
    gets ``[0]``.

    Args:
        batch_size: Number of samples.
        generator: Source of randomness, on ``device``.
        device: Where to draw; defaults to the generator's device (else the CPU).

    Returns:
        A ``torch.long`` tensor ``perm`` of shape ``(batch_size,)``: sample ``i`` is mixed
        with sample ``perm[i]``.

    Example:
        >>> perm = sample_partners(5, generator=torch.Generator().manual_seed(0))
        >>> sorted(perm.tolist()), bool((perm != torch.arange(5)).all())
        ([0, 1, 2, 3, 4], True)
    """
    check_int(batch_size, "batch_size", minimum=1)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    return _sample_partners(batch_size, generator, torch.device(device))


def _sample_partners(
    batch_size: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """:func:`sample_partners` on checked arguments (the callbacks' batch sizes are)."""
    order = torch.randperm(batch_size, generator=generator, device=device)
    # perm[order[j]] = order[j - 1]: one cycle through the shuffled order.
    return torch.empty_like(order).scatter_(0, order, order.roll(1))
