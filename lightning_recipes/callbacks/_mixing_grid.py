"""A picture of mixed training images with their soft targets, for the mixing callbacks."""

from __future__ import annotations

import math

from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["render_grid"]


def render_grid(images: Tensor, targets: Tensor, title: str, top: int = 2) -> Figure:
    """Draws ``images`` ``(n, C, H, W)`` in a grid, each titled with the
    ``top`` classes of its soft target as ``class:weight``.

    Each image is scaled to [0, 1] on its own; 1 channel is drawn grey, 3 as RGB, others by
    their first channel. Uses matplotlib's object API, so no pyplot state or GUI is touched.
    """
    images = images.detach().float().cpu()
    if images.shape[1] not in (1, 3):
        images = images[:, :1]
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    images = (images - low) / (high - low).clamp_min(1e-12)
    weights, classes = targets.detach().float().cpu().topk(min(top, targets.shape[1]), dim=1)

    n = images.shape[0]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    figure = Figure(figsize=(1.8 * cols, 1.9 * rows + 0.4))
    figure.suptitle(title)
    for i in range(n):  # once per epoch, on at most `grid_samples` images
        axis = figure.add_subplot(rows, cols, i + 1)
        image = images[i].permute(1, 2, 0).numpy()
        if image.shape[2] == 1:
            axis.imshow(image[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
        else:
            axis.imshow(image)
        label = " ".join(
            f"{c}:{w:.2f}" for c, w in zip(classes[i].tolist(), weights[i].tolist(), strict=True)
        )
        axis.set_title(label, fontsize=8)
        axis.set_axis_off()
    figure.tight_layout()
    return figure
