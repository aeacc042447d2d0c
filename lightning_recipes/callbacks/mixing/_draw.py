"""One batch's mixing in two steps: :func:`draw_mix` samples, :func:`apply_mix` applies.

The draw order (the coin of ``p``, the method, lam, the partners, then the kernel's box or
mask) is fixed: a resumed run and the pinned draws of the tests rely on it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

import torch
from torch import Tensor

from lightning_recipes.callbacks.mixing._kernels import (
    Apply,
    CutMixKernel,
    Mixed,
    MixKernel,
    MixUpKernel,
    WeightMap,
    apply_map,
)
from lightning_recipes.callbacks.mixing._randomness import (
    BatchRandomness,
    MethodChoice,
    per_sample_lam,
)
from lightning_recipes.functional._rows import blend_box_rows, rows_pay
from lightning_recipes.functional.sampling import _sample_partners

__all__ = ["Draw", "Methods", "Staged", "apply_mix", "draw_mix", "finish_staged", "stage"]


class Methods(NamedTuple):
    """The methods a callback mixes with.

    Attributes:
        kernels: One kernel per method.
        alphas: The ``Beta(alpha, alpha)`` concentration of each method's lam.
        choice: How one method is drawn for a batch (or a sample); None when there is one
            method and nothing to draw (a RandomMix of one method still draws, so that its
            random stream does not depend on ``probs``).
    """

    kernels: tuple[MixKernel, ...]
    alphas: tuple[float, ...]
    choice: MethodChoice | None


class Draw(NamedTuple):
    """The randomness of one batch's mix, drawn before anything is mixed.

    Attributes:
        method: Index of the method of the batch, or ``(batch,)`` indices, one per sample.
        lam: Weight of each sample itself: a Python float or ``(batch,)``.
        perm: Partner index of each sample.
        generator: The generator the kernel draws its box or mask from.
    """

    method: int | Tensor
    lam: float | Tensor
    perm: Tensor
    generator: torch.Generator


def draw_mix(
    methods: Methods,
    p: float,
    per_sample: bool,
    batch_size: int,
    randomness: BatchRandomness,
    device: torch.device,
) -> Draw | None:
    """Draws method, lam and partners of a batch, or returns None to leave it unmixed.

    Per batch, the coin of ``p``, the method and lam are Python numbers from
    ``randomness.python`` (reading them costs no device sync); per sample, they are tensors
    drawn on the data's device, with lam 1 (unmixed) for the samples that lose the coin.
    """
    kernels, alphas, choice = methods
    python, generator = randomness.python, randomness.device_generator
    if not per_sample:
        if p < 1.0 and python.random() >= p:
            return None
        index = 0 if choice is None else choice.per_batch(python)
        lam = python.betavariate(alphas[index], alphas[index])
        perm = _sample_partners(batch_size, generator, device)
        if kernels[index].batch_draw_on_cpu:
            generator = randomness.cpu_generator
        return Draw(index, lam, perm, generator)
    method: int | Tensor = 0
    alpha: float | Tensor = alphas[0]
    if choice is not None:
        method = choice.per_sample(batch_size, generator)
        alpha = _alpha_per_sample(alphas, method)
    lam_per_sample = per_sample_lam(alpha, p, batch_size, generator)
    perm = _sample_partners(batch_size, generator, device)
    return Draw(method, lam_per_sample, perm, generator)


def apply_mix(methods: Methods, x: Tensor, draw: Draw, inplace: bool) -> Mixed:
    """Mixes ``x`` as ``draw`` says: one method's kernel, or one per sample composed."""
    method, lam, perm, generator = draw
    if not isinstance(method, Tensor):
        return methods.kernels[method].mix(x, lam, perm, generator, inplace)
    if isinstance(lam, Tensor) and _ratio_and_boxes(methods.kernels) and rows_pay(x, 1.0, inplace):
        return _mix_ratio_and_boxes(methods.kernels, x, method, lam, perm, generator)
    (mix,) = finish_staged(x, [stage(methods, x, draw)])
    return cast(Callable[[Tensor, bool], Mixed], mix)(x, inplace)


class Staged(NamedTuple):
    """A batch's mix drawn ahead of its batch (:func:`stage`), for :func:`finish_staged`.

    Attributes:
        parts: Each kernel of the mix with what its :meth:`~MixKernel.draw` returned: one,
            or one per method of a per-sample choice (their maps are then multiplied).
        perm: The partners.
    """

    parts: tuple[tuple[MixKernel, object], ...]
    perm: Tensor


def stage(methods: Methods, x: Tensor, draw: Draw) -> Staged:
    """Draws the rest of a batch's randomness now (the kernels' boxes or masks, or what they
    are made from), so that a callback can draw the mixes of the coming batches before they
    arrive; :func:`finish_staged` makes them, with the result of ``apply_mix(methods, x,
    draw, inplace)`` bit for bit where ``apply_mix`` takes no sample-at-a-time path (on the
    CPU, ``_rows.rows_pay`` is false for ``x``)."""
    method, lam, perm, generator = draw
    if not isinstance(method, Tensor):
        kernel = methods.kernels[method]
        return Staged(((kernel, kernel.draw(x, lam, generator)),), perm)
    # Each kernel maps the samples that did not choose it with lam = 1: weight 1 everywhere
    # (no box, a full mask). A sample's map is then the product of all kernels' maps, and its
    # weight the product of their weights (`finish_staged`): one multiplication per extra
    # kernel instead of a `where` over the full masks, and no sample-dependent shapes (so no
    # device sync).
    parts = tuple(
        (kernel, kernel.draw(x, torch.where(method == index, lam, 1.0), generator))
        for index, kernel in enumerate(methods.kernels)
    )
    return Staged(parts, perm)


def finish_staged(
    x: Tensor, staged: Sequence[Staged | None]
) -> list[Callable[[Tensor, bool], Mixed] | None]:
    """The mix of each staged batch (of ``x``'s shape and dtype), ``mix(x, inplace)``, or
    None for a batch left unmixed. Each kernel finishes all its batches' draws at once."""
    slots: dict[int, list[tuple[int, int]]] = {}  # by kernel: (batch, part) of its draws
    kernels: dict[int, MixKernel] = {}
    for i, batch in enumerate(staged):
        for j, (kernel, _) in enumerate(batch.parts if batch is not None else ()):
            slots.setdefault(id(kernel), []).append((i, j))
            kernels[id(kernel)] = kernel
    finished: dict[tuple[int, int], WeightMap | Apply] = {}
    for key, where in slots.items():
        drawn = [cast(Staged, staged[i]).parts[j][1] for i, j in where]
        finished.update(zip(where, kernels[key].finish(x, drawn), strict=True))
    mixes: list[Callable[[Tensor, bool], Mixed] | None] = []
    for i, batch in enumerate(staged):
        if batch is None:
            mixes.append(None)
            continue
        made = [finished[i, j] for j in range(len(batch.parts))]
        if len(made) == 1 and not isinstance(made[0], WeightMap):  # a paste
            mixes.append(_mixing(made[0], batch.perm))
        else:
            maps = _product([cast(WeightMap, m) for m in made])
            mixes.append(_mixing(_applying(maps), batch.perm))
    return mixes


def _applying(weight_map: WeightMap) -> Apply:
    """What blends a batch with its partners through ``weight_map``."""
    return lambda x, perm, inplace: apply_map(x, perm, weight_map, inplace)


def _mixing(apply: Apply, perm: Tensor) -> Callable[[Tensor, bool], Mixed]:
    """What mixes a batch with ``apply`` and its partners ``perm``."""
    return lambda x, inplace: apply(x, perm, inplace)


def _product(maps: Sequence[WeightMap]) -> WeightMap:
    """The product of the maps and of their weights (one map: itself)."""
    weight = functools.reduce(torch.mul, [m.weight for m in maps])
    weights = functools.reduce(torch.mul, [m.weights for m in maps])
    return WeightMap(weight, weights)


def _ratio_and_boxes(kernels: tuple[MixKernel, ...]) -> bool:
    """Whether the kernels are one CutMix and at most one MixUp (RandomMix's default)."""
    cutmix = [k for k in kernels if isinstance(k, CutMixKernel)]
    mixup = [k for k in kernels if isinstance(k, MixUpKernel)]
    return len(cutmix) == 1 and len(mixup) <= 1 and len(kernels) == len(cutmix) + len(mixup)


def _mix_ratio_and_boxes(
    kernels: tuple[MixKernel, ...],
    x: Tensor,
    method: Tensor,
    lam: Tensor,
    perm: Tensor,
    generator: torch.Generator,
) -> Mixed:
    """:func:`apply_mix` of MixUp and CutMix per sample, on the CPU with large samples: the
    product of their maps (the MixUp ratio outside the box, 0 inside) blended a sample at a
    time through the boxes, without a mask; the same draws, in the same order, and the same
    bits as the product of the maps."""
    boxes: list[list[tuple[int, int]]] = []
    outside: Tensor | None = None
    weights = []
    for index, kernel in enumerate(kernels):
        kernel_lam = torch.where(method == index, lam, 1.0)
        if isinstance(kernel, CutMixKernel):
            boxes, kernel_weights = kernel.boxes(x, kernel_lam, generator)
        else:
            ratio, kernel_weights = kernel.weight_map(x, kernel_lam, generator)
            outside = ratio if isinstance(ratio, Tensor) else None
        weights.append(kernel_weights)
    mixed, mixed_weights = blend_box_rows(
        x, perm, boxes, functools.reduce(torch.mul, weights), outside
    )
    return Mixed(mixed, mixed_weights, perm)


def _alpha_per_sample(alphas: tuple[float, ...], method: Tensor) -> float | Tensor:
    """The concentration of each sample's method; one float when all methods share it."""
    if len(set(alphas)) == 1:
        return alphas[0]
    alpha = torch.full(method.shape, alphas[-1], device=method.device)
    for index, value in enumerate(alphas[:-1]):
        alpha = torch.where(method == index, value, alpha)
    return alpha
