"""Backbones for :class:`~lightning_recipes.classifier.ImageClassifier`."""

from __future__ import annotations

from typing import Any

import torchvision  # type: ignore[import-untyped]
from torch import nn

__all__ = ["SmallCNN", "build_backbone"]


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(nn.Sequential):
    """A five-convolution network for small images (8x8 digits up to 32x32 CIFAR).

    Two pooling stages keep an 8x8 input at 2x2 before global average pooling, so the same
    network serves 8x8 and 32x32 inputs.

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
        width: Channels of the first stage; later stages use 2x and 4x.
        dropout: Dropout before the classifier (training scales kept units by ``1/(1-p)``).

    Example:
        >>> import torch
        >>> SmallCNN(num_classes=10, in_channels=1)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, width: int = 32, dropout: float = 0.0
    ) -> None:
        w = width
        super().__init__(
            *_conv_bn(in_channels, w),
            *_conv_bn(w, w),
            nn.MaxPool2d(2),
            *_conv_bn(w, 2 * w),
            *_conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(4 * w, num_classes),
        )


def build_backbone(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """``"small_cnn"`` or any torchvision classification model name, with random weights.

    A torchvision model's first 3-channel convolution is replaced when ``in_channels != 3``.

    Raises:
        ValueError: ``name`` is neither ``"small_cnn"`` nor a torchvision classification model.
    """
    if name == "small_cnn":
        return SmallCNN(num_classes=num_classes, in_channels=in_channels)
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(
            f"`backbone` must be 'small_cnn' or a torchvision classification model name"
            f" (e.g. 'resnet18', 'mobilenet_v3_small'), got {name!r}"
        )
    # weights=None: nothing is downloaded; the model starts from random initialisation.
    model: nn.Module = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_first_conv(model, name, in_channels)
    return model


def _replace_first_conv(model: nn.Module, name: str, in_channels: int) -> None:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                # The same geometry; torch types these as tuples of any length.
                geometry: dict[str, Any] = {
                    "kernel_size": child.kernel_size,
                    "stride": child.stride,
                    "padding": child.padding,
                    "dilation": child.dilation,
                }
                conv = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    groups=child.groups if child.groups == 1 else in_channels,
                    bias=child.bias is not None,
                    **geometry,
                )
                setattr(parent, child_name, conv)
                return
    raise ValueError(f"`in_channels={in_channels}` is not supported for backbone {name!r}")
