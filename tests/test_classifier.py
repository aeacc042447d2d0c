"""ImageClassifier: loss, accuracy, prediction, memory format, backbones, argument checks."""

from __future__ import annotations

import re

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import ImageClassifier
from lightning_recipes.backbones import SmallCNN

# `training_step` called outside a Trainer: `self.log` warns that there is no trainer.
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def _batch(n: int = 16, classes: int = 10, channels: int = 1, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    p = torch.rand(n, classes, generator=g).softmax(dim=1)
    return x, y, p


def _model(**kwargs) -> ImageClassifier:
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_channels": 1, **kwargs}
    return ImageClassifier(**kwargs)


def _smoothed(p: torch.Tensor, eps: float) -> torch.Tensor:
    return p * (1 - eps) + eps / p.shape[1]


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_with_integer_labels(label_smoothing):
    model = _model(label_smoothing=label_smoothing)
    x, y, _ = _batch()
    loss = model.training_step((x, y), 0)
    logits = model(x)  # train mode, batch statistics: same as inside training_step
    expected = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    torch.testing.assert_close(loss, expected)
    # ... and the same as the textbook formula on one-hot targets.
    one_hot = _smoothed(F.one_hot(y, 10).float(), label_smoothing)
    torch.testing.assert_close(loss, -(one_hot * logits.log_softmax(1)).sum(1).mean())


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_loss_with_probability_targets(label_smoothing):
    model = _model(label_smoothing=label_smoothing)
    x, _, p = _batch()
    loss = model.training_step((x, p), 0)
    log_probs = model(x).log_softmax(dim=1)
    expected = -(_smoothed(p, label_smoothing) * log_probs).sum(1).mean()
    torch.testing.assert_close(loss, expected)
    assert loss.requires_grad


def test_dict_batches():
    model = _model()
    x, y, _ = _batch()
    loss = model.training_step({"image": x, "target": y}, 0)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y))


def test_train_accuracy_uses_argmax_of_soft_targets():
    model = _model()
    x, _, p = _batch(n=64)
    model.training_step((x, p), 0)
    expected = (model(x).argmax(1) == p.argmax(1)).float().mean()
    torch.testing.assert_close(model.train_acc.compute(), expected)
    # Neither 0 nor 1, so measuring against another class than the argmax would show.
    assert 0.0 < expected < 1.0


@pytest.mark.parametrize("num_classes", [5, 10])  # top-1 only, and top-1 with top-5
def test_training_step_counts_no_distinct_targets(monkeypatch, num_classes):
    # `torch.unique` returns a tensor whose size depends on the data: on CUDA, a host-device
    # sync on every training step. torchmetrics' argument check would count the distinct
    # targets with it, but skips that count when the predictions are floating point (logits),
    # so the accuracy metrics can keep `validate_args=True`. If this fails after a torchmetrics
    # upgrade, build the training metrics with `validate_args=False`.
    calls = []
    unique = torch.unique

    def counting_unique(*args, **kwargs):
        calls.append(args[0].shape)
        return unique(*args, **kwargs)

    monkeypatch.setattr(torch, "unique", counting_unique)
    model = _model(num_classes=num_classes)
    assert model.train_acc.validate_args is True
    x, y, p = _batch(classes=num_classes)
    model.training_step((x, y), 0)
    model.training_step((x, p), 1)
    assert calls == []
    # The scenario happened: the metrics did update, and the counter sees a direct call.
    assert model.train_acc.update_count == 2
    if num_classes > 5:
        assert model.train_acc_top5.update_count == 2
    torch.unique(y)
    assert calls == [y.shape]


@pytest.mark.parametrize(("num_classes", "top5"), [(5, False), (6, True), (10, True)])
def test_top5_accuracy_only_above_five_classes(num_classes, top5):
    model = _model(num_classes=num_classes)
    x, y, _ = _batch(n=12, classes=num_classes)
    for stage in ("train", "val", "test"):
        assert hasattr(model, f"{stage}_acc_top5") is top5
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    (metrics,) = trainer.validate(model, DataLoader(TensorDataset(x, y), batch_size=6))
    assert set(metrics) == {"val/loss", "val/acc"} | ({"val/acc_top5"} if top5 else set())
    model.eval()
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(
        torch.tensor(metrics["val/acc"]), (logits.argmax(1) == y).float().mean()
    )
    if top5:
        hit = (logits.topk(5, dim=1).indices == y[:, None]).any(1).float().mean()
        torch.testing.assert_close(torch.tensor(metrics["val/acc_top5"]), hit)


@pytest.mark.parametrize("batch_kind", ["tensor", "tuple", "dict"])
def test_predict_step_returns_probabilities(batch_kind):
    model = _model().eval()
    x, y, _ = _batch()
    batch = {"tensor": x, "tuple": (x, y), "dict": {"image": x, "target": y}}[batch_kind]
    with torch.no_grad():
        probs = model.predict_step(batch, 0)
        expected = model(x).softmax(dim=1)
    assert probs.shape == (16, 10)
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(16))
    torch.testing.assert_close(probs, expected)


def _is_channels_last(module: nn.Module) -> bool:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return bool(convs) and all(
        c.weight.is_contiguous(memory_format=torch.channels_last) and not c.weight.is_contiguous()
        for c in convs
    )


def test_channels_last_matches_contiguous(tmp_path):
    # 3 input channels: a 1-channel 3x3 kernel is laid out the same in both formats.
    fast = _model(in_channels=3, channels_last=True)
    plain = _model(in_channels=3, channels_last=False)
    plain.load_state_dict(fast.state_dict())
    assert _is_channels_last(fast.net)
    assert not any(
        m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
        for m in plain.net.modules()
        if isinstance(m, nn.Conv2d)
    )
    x, y, _ = _batch(channels=3)
    for mode in (True, False):  # batch statistics, then running statistics
        fast.train(mode)
        plain.train(mode)
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)

    # Training keeps the layout: the optimizer updates the channels-last weights in place.
    fast.train()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(fast, DataLoader(TensorDataset(x, y), batch_size=8))
    assert trainer.global_step == 2
    assert _is_channels_last(fast.net)


def test_torchvision_backbone_without_download(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a test tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    model = _model(backbone="resnet18", num_classes=10, in_channels=1).eval()
    assert model.net.conv1.in_channels == 1
    assert (model.net.conv1.out_channels, model.net.conv1.kernel_size) == (64, (7, 7))
    assert model.net.fc.out_features == 10
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_small_cnn_serves_8_and_32_pixels():
    model = _model().eval()
    assert isinstance(model.net, SmallCNN)
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_hyperparameters_saved():
    model = _model(backbone="small_cnn", num_classes=7, in_channels=2, label_smoothing=0.1)
    hp = model.hparams
    assert (hp.backbone, hp.num_classes, hp.in_channels, hp.label_smoothing) == (
        "small_cnn",
        7,
        2,
        0.1,
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"backbone": "resnet9000"}, ValueError, "`backbone` must be 'small_cnn' or a torchvision"),
        ({"backbone": None}, TypeError, "`backbone` must be a string, got NoneType"),
        ({"num_classes": 1}, ValueError, "`num_classes` must be an integer >= 2, got 1"),
        ({"num_classes": 10.0}, TypeError, "`num_classes` must be an integer, got 10.0"),
        ({"in_channels": 0}, ValueError, "`in_channels` must be an integer >= 1, got 0"),
        ({"in_channels": "1"}, TypeError, "`in_channels`"),
        ({"label_smoothing": 1.0}, ValueError, "`label_smoothing` must be in [0, 1), got 1.0"),
        ({"label_smoothing": -0.1}, ValueError, "`label_smoothing` must be in [0, 1), got -0.1"),
        ({"label_smoothing": "0.1"}, TypeError, "`label_smoothing`"),
        ({"channels_last": 1}, TypeError, "`channels_last`"),
    ],
)
def test_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        _model(**kwargs)


def test_backbone_without_rgb_convolution(monkeypatch):
    # Every torchvision classifier has a 3-channel first convolution; a stand-in has none.
    monkeypatch.setattr(
        torchvision.models,
        "get_model",
        lambda name, weights=None, num_classes=1000: nn.Sequential(
            nn.Flatten(), nn.Linear(3, num_classes)
        ),
    )
    expected = "`in_channels=1` is not supported for backbone 'resnet18'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        _model(backbone="resnet18", in_channels=1)
