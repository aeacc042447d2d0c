"""``ImageClassifier``: a ready image classifier trained with OneCycle."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_recipes._validation import check_bool, check_int, check_label_smoothing, check_type
from lightning_recipes.backbones import build_backbone
from lightning_recipes.module import OneCycleModule

__all__ = ["ImageClassifier"]


class ImageClassifier(OneCycleModule):
    """An image classifier on a :class:`OneCycleModule`, ready for mixed targets.

    The loss takes integer labels of shape ``(batch,)`` *and* probability targets of shape
    ``(batch, num_classes)`` (what Mixup, CutMix and FMix produce), through
    ``F.cross_entropy``, which accepts both. Training accuracy is measured against each
    sample's dominant target class. Targets are checked: a label outside ``[0, num_classes)``
    or targets of the wrong shape raise a ``ValueError`` naming ``num_classes`` and the bad
    label, rather than ``F.cross_entropy``'s bare ``IndexError`` (or a device-side assert on
    CUDA). Reading a label's value on an accelerator synchronises with the host, so there
    training labels are checked on the first batch of each fit only; validation and test
    labels, and labels on the CPU, on every batch. Top-5 accuracy is logged when there are
    more than 5 classes. ``predict_step`` returns class probabilities.

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
        check_type(backbone, "backbone", str, "a string")
        check_int(num_classes, "num_classes", minimum=2)
        check_int(in_channels, "in_channels", minimum=1)
        check_label_smoothing(label_smoothing)
        check_bool(channels_last, "channels_last")
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
        self._train_labels_checked = False

    @override
    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out: Tensor = self.net(x)
        return out

    @override
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._train_labels_checked = False

    def _check_targets(self, x: Tensor, y: Tensor, stage: str) -> None:
        """Shape always (metadata); the label range where it costs no per-batch sync."""
        batch, classes = x.shape[0], self.num_classes
        if y.is_floating_point():
            if y.shape != (batch, classes):
                raise ValueError(
                    f"ImageClassifier: the {_STAGES[stage]} targets must be integer labels of"
                    f" shape ({batch},) or probabilities of shape ({batch}, {classes}) for"
                    f" `num_classes`={classes} columns, got shape {tuple(y.shape)}"
                )
            return
        if y.shape != (batch,):
            raise ValueError(
                f"ImageClassifier: the {_STAGES[stage]} targets must be integer labels of shape"
                f" ({batch},), got shape {tuple(y.shape)} and dtype {y.dtype}"
            )
        if stage == "train" and y.device.type != "cpu":
            if self._train_labels_checked:
                return
            self._train_labels_checked = True
        bad = ((y < 0) | (y >= classes)).nonzero().flatten()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(
                f"ImageClassifier: label {int(y[i])} at position {i} of the {_STAGES[stage]}"
                f" batch is outside [0, {classes}) for `num_classes`={classes} ({bad.numel()}"
                " in the batch); set `num_classes` to the data's, or map the labels to 0..C-1"
            )

    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        x, y = _split_batch(batch)
        self._check_targets(x, y, stage)
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
        probabilities: Tensor = self(x).softmax(dim=1)
        return probabilities


_STAGES = {"train": "training", "val": "validation", "test": "test"}


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, dict):
        return batch["image"], batch["target"]
    x, y = batch[0], batch[1]
    return x, y
