"""A picture of mixed training images with their soft targets, for the mixing callbacks.

matplotlib is imported only when a grid is drawn (``save_grid=True``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["render_grid", "save_grid"]


def save_grid(trainer: pl.Trainer, x: Tensor, targets: Tensor, name: str, samples: int) -> None:
    """Saves the first ``samples`` mixed images of the epoch as
    ``<log_dir>/mix_grids/<name>-epoch=NNN.png`` and adds them to a TensorBoard logger.

    Costs one device-to-host copy of ``samples`` images; inputs that are not 2-D images
    ``(batch, channels, height, width)`` get a warning and no grid.
    """
    if x.ndim != 4:
        rank_zero_warn(
            f"{name}(save_grid=True) draws 2-D images of shape (batch, channels, height,"
            f" width), got shape {tuple(x.shape)}; no grid is saved."
        )
        return
    epoch = trainer.current_epoch
    figure = render_grid(x[:samples], targets[:samples], f"{name}, epoch {epoch}")
    folder = Path(trainer.log_dir or trainer.default_root_dir) / "mix_grids"
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / f"{name}-epoch={epoch:03d}.png", dpi=100)
    add_figure = getattr(getattr(trainer.logger, "experiment", None), "add_figure", None)
    if add_figure is not None:  # TensorBoard
        add_figure(f"mix_grid-{name}", figure, trainer.global_step)


def render_grid(images: Tensor, targets: Tensor, title: str, top: int = 2) -> Figure:
    """Draws ``images`` ``(n, C, H, W)`` in a grid, each titled with the
    ``top`` classes of its soft target as ``class:weight``.

    Each image is scaled to [0, 1] on its own; 1 channel is drawn grey, 3 as RGB, others by
    their first channel. Uses matplotlib's object API, so no pyplot state or GUI is touched.
    """
    from matplotlib.figure import Figure

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
