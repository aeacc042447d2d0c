"""``ImageClassifier``: a ready image classifier trained with OneCycle."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_recipes.backbones import build_backbone
from lightning_recipes.module import OneCycleModule

__all__ = ["ImageClassifier"]


class ImageClassifier(OneCycleModule):
    """An image classifier on a :class:`OneCycleModule`, ready for mixed targets.

    The loss takes integer labels of shape ``(batch,)`` *and* probability targets of shape
    ``(batch, num_classes)`` (what Mixup, CutMix and FMix produce), through
    ``F.cross_entropy``, which accepts both. Training accuracy is measured against each
    sample's dominant target class. Top-5 accuracy is logged when there are more than 5
    classes. ``predict_step`` returns class probabilities.

    Logged keys: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``,
    ``test/acc`` (and ``*/acc_top5``).

    Args:
        backbone: ``"small_cnn"`` (default, for 8x8 to 32x32 inputs) or a torchvision
            classification model name such as ``"resnet18"`` (random weights, no download).
        num_classes: Number of classes.
        in_channels: Channels of the input images.
        label_smoothing: Label smoothing of the cross entropy (0 = none).
        channels_last: Keep weights and inputs in channels-last memory format.
        **kwargs: :class:`OneCycleModule` arguments (``max_lr``, ``optimizer``, ...).

    Example:
        >>> model = ImageClassifier(num_classes=10, in_channels=1)
        >>> model(torch.zeros(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        backbone: str = "small_cnn",
        num_classes: int = 10,
        in_channels: int = 3,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"`num_classes` must be an integer >= 2, got {num_classes!r}")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"`in_channels` must be an integer >= 1, got {in_channels!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last
        self.net = build_backbone(backbone, num_classes, in_channels)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        top_ks = (1, 5) if num_classes > 5 else (1,)
        for stage in ("train", "val", "test"):
            for k in top_ks:
                metric = MulticlassAccuracy(num_classes, top_k=k, average="micro")
                setattr(self, f"{stage}_acc{'' if k == 1 else f'_top{k}'}", metric)
        self._top_ks = top_ks

    @override
    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        x, y = _split_batch(batch)
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        labels = y if y.ndim == 1 else y.argmax(dim=1)
        # Synced in every stage: under DDP each process has its own shard, and the logged
        # value should be the mean over all of them, not the loss of rank 0's batch. (One
        # all-reduce of a scalar per step; torchmetrics objects below sync themselves.)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "train", sync_dist=True)
        for k in self._top_ks:
            suffix = "" if k == 1 else f"_top{k}"
            metric = getattr(self, f"{stage}_acc{suffix}")
            metric(logits, labels)
            self.log(f"{stage}/acc{suffix}", metric, prog_bar=k == 1)
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x = batch if isinstance(batch, Tensor) else _split_batch(batch)[0]
        return self(x).softmax(dim=1)


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, dict):
        return batch["image"], batch["target"]
    x, y = batch[0], batch[1]
    return x, y
