"""Data modules: DigitsDataModule, ImageFolderDataModule, CIFAR10DataModule.

Every check here is against an independent computation (numpy class counts, PIL-drawn
colours, hand-normalised pixels) and nothing is ever downloaded: CIFAR-10 is a fabricated
five-batch tree whose md5 sums are patched into torchvision's file list.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from lightning_recipes import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule
from lightning_recipes.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from lightning_recipes.data.image_folder import IMAGENET_MEAN, IMAGENET_STD

# CPU-only runs: `pin_memory=True` warns that there is no accelerator to pin for.
pytestmark = pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")

N_DIGITS = 1797
SPLITS = ("train", "val", "test")


def _split_tensors(dm: DigitsDataModule) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """All images and labels of each split, read through the loaders' datasets."""
    loaders = {
        "train": dm.train_dataloader(),
        "val": dm.val_dataloader(),
        "test": dm.test_dataloader(),
    }
    return {name: tuple(loader.dataset.tensors) for name, loader in loaders.items()}


@pytest.fixture(scope="module")
def digits_raw() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return digits.images.astype(np.int64), digits.target.astype(np.int64)


@pytest.fixture(scope="module")
def digits_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    return _split_tensors(dm)


# --------------------------------------------------------------------------- DigitsDataModule
def test_digits_split_sizes_add_up(digits_splits):
    sizes = {name: len(y) for name, (_, y) in digits_splits.items()}
    assert sum(sizes.values()) == N_DIGITS
    # sklearn rounds the held-out sizes up: ceil(0.2 * 1797), then ceil(0.125 * 1437).
    assert sizes == {"train": 1257, "val": 180, "test": 360}


@pytest.mark.parametrize(("split", "fraction"), [("train", 0.7), ("val", 0.1), ("test", 0.2)])
def test_digits_splits_are_stratified(digits_splits, digits_raw, split, fraction):
    _, labels = digits_raw
    per_class = np.bincount(labels, minlength=10)
    counts = np.bincount(digits_splits[split][1].numpy(), minlength=10)
    # A stratified split keeps every class within one image of its share.
    np.testing.assert_array_less(np.abs(counts - fraction * per_class), 1.0 + 1e-9)


def _raw_pixels(splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Undo the affine standardisation without knowing its parameters.

    The raw pixels are the integers 0..16 and both extremes occur, so the smallest value of
    all splits is 0 and the largest is 16.
    """
    lo = min(x.min().item() for x, _ in splits.values())
    hi = max(x.max().item() for x, _ in splits.values())
    return {
        name: np.rint((x.numpy() - lo) / (hi - lo) * 16).astype(np.int64)
        for name, (x, _) in splits.items()
    }


def test_digits_splits_partition_the_data_set(digits_splits, digits_raw):
    images, labels = digits_raw
    raw = _raw_pixels(digits_splits)
    everything = Counter(
        (*img.ravel().tolist(), int(label)) for img, label in zip(images, labels, strict=True)
    )
    # The splits together hold every (image, label) exactly as often as the data set does: a
    # sample in two splits would leave another one out (the digits hold a few duplicates, so
    # this compares multisets).
    seen: Counter = Counter()
    for name, (_, y) in digits_splits.items():
        seen.update(
            (*img.ravel().tolist(), int(label))
            for img, label in zip(raw[name], y.numpy(), strict=True)
        )
    assert seen == everything


def test_digits_standardised_with_train_statistics(digits_splits, digits_raw):
    raw = _raw_pixels(digits_splits)
    x_train = digits_splits["train"][0]
    assert x_train.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert x_train.std().item() == pytest.approx(1.0, abs=1e-5)
    # Validation and test use the *training* mean and std (no leak of their own statistics).
    train01 = raw["train"].astype(np.float64) / 16.0
    mean, std = train01.mean(), train01.std(ddof=1)
    for split in ("val", "test"):
        expected = (raw[split] / 16.0 - mean) / std
        np.testing.assert_allclose(digits_splits[split][0].numpy(), expected, atol=1e-5)


def test_digits_split_deterministic_per_seed(digits_splits):
    again = DigitsDataModule(seed=0)
    again.setup()
    other = DigitsDataModule(seed=1)
    other.setup()
    again_t, other_t = _split_tensors(again), _split_tensors(other)
    for name in SPLITS:
        torch.testing.assert_close(again_t[name][0], digits_splits[name][0], rtol=0, atol=0)
        torch.testing.assert_close(again_t[name][1], digits_splits[name][1], rtol=0, atol=0)
    assert not torch.equal(other_t["test"][0], digits_splits["test"][0])
    assert not torch.equal(other_t["val"][1], digits_splits["val"][1])


def test_digits_loaders_shapes_and_order(digits_splits):
    dm = DigitsDataModule(batch_size=64)
    assert (dm.num_classes, dm.in_channels, dm.image_size, dm.image_shape) == (10, 1, 8, (1, 8, 8))
    dm.setup("fit")
    train = dm.train_dataloader()
    assert len(train) == 1257 // 64  # drop_last
    x, y = next(iter(train))
    assert (x.shape, x.dtype, y.shape, y.dtype) == (
        (64, 1, 8, 8),
        torch.float32,
        (64,),
        torch.int64,
    )
    # Evaluation loaders are unshuffled and keep the last partial batch.
    x_val = torch.cat([batch[0] for batch in dm.val_dataloader()])
    torch.testing.assert_close(x_val, digits_splits["val"][0], rtol=0, atol=0)
    assert len(dm.test_dataloader()) == -(-360 // 64)
    assert len(dm.predict_dataloader()) == len(dm.test_dataloader())


def test_digits_upscaled_to_image_size(digits_splits):
    dm = DigitsDataModule(batch_size=16, image_size=32)
    assert (dm.image_size, dm.image_shape) == (32, (1, 32, 32))
    dm.setup()
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (16, 1, 32, 32)
    # Bilinear upscaling of the standardised 8x8 images, same samples in the same order.
    expected = F.interpolate(
        digits_splits["val"][0][:16], size=32, mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(x, expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "`batch_size` must be an integer >= 1, got 0"),
        ({"batch_size": 8.0}, TypeError, "`batch_size` must be an integer, got 8.0"),
        ({"num_workers": -1}, ValueError, "`num_workers` must be an integer >= 0, got -1"),
        ({"val_fraction": 0.0}, ValueError, "`val_fraction` must be in (0, 1), got 0.0"),
        ({"val_fraction": "0.1"}, TypeError, "`val_fraction`"),
        ({"test_fraction": 1.0}, ValueError, "`test_fraction` must be in (0, 1), got 1.0"),
        (
            {"val_fraction": 0.4, "test_fraction": 0.5},
            ValueError,
            "`val_fraction + test_fraction` must leave at least 10% for training, got 0.4 + 0.5",
        ),
        ({"image_size": 4}, ValueError, "`image_size` must be an integer >= 8, got 4"),
        ({"image_size": 16.0}, TypeError, "`image_size` must be None or an integer, got 16.0"),
        ({"seed": "0"}, TypeError, "`seed`"),
    ],
)
def test_digits_errors(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        DigitsDataModule(**kwargs)


# ---------------------------------------------------------------------- ImageFolderDataModule
CLASSES = ("cat", "dog", "owl")
# One solid colour a class: any crop or resize of a PNG keeps it, so every output pixel is
# known exactly and ties each image to its label.
COLOURS = {"cat": (255, 0, 0), "dog": (0, 128, 255), "owl": (64, 64, 64)}


def _write_pngs(folder: Path, classes: tuple[str, ...], per_class: int) -> None:
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40, 30), COLOURS[name]).save(folder / name / f"{i}.png")


def _normalised(colour: tuple[int, int, int]) -> torch.Tensor:
    rgb = torch.tensor(colour, dtype=torch.float32) / 255.0
    return (rgb - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    _write_pngs(root / "train", CLASSES, per_class=4)
    _write_pngs(root / "val", CLASSES, per_class=2)
    return root


def _check_pixels(x: torch.Tensor, y: torch.Tensor) -> None:
    for image, label in zip(x, y, strict=True):
        expected = _normalised(COLOURS[CLASSES[label]]).view(3, 1, 1).expand_as(image)
        torch.testing.assert_close(image, expected, rtol=0, atol=1e-5)


def test_image_folder_loaders(image_tree):
    dm = ImageFolderDataModule(image_tree, image_size=16, batch_size=4, num_workers=0)
    assert dm.num_classes == 3
    assert dm.classes == list(CLASSES)
    assert (dm.in_channels, dm.image_shape) == (3, (3, 16, 16))

    train = dm.train_dataloader()
    assert len(train) == 3  # 12 images, drop_last
    labels = []
    for x, y in train:
        assert (x.shape, x.dtype, y.dtype) == ((4, 3, 16, 16), torch.float32, torch.int64)
        _check_pixels(x, y)
        labels += y.tolist()
    assert Counter(labels) == {0: 4, 1: 4, 2: 4}

    x, y = next(iter(dm.val_dataloader()))
    assert (x.shape, x.dtype) == ((4, 3, 16, 16), torch.float32)
    assert y.tolist() == [0, 0, 1, 1]  # unshuffled, class order
    _check_pixels(x, y)
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 6  # last batch kept


def test_image_folder_eval_centre_crop(tmp_path):
    # A 40x30 image whose left and right thirds are black and the middle white: resizing the
    # short side to 16 / 0.5 = 32 and centre-cropping 16 keeps only the white middle.
    root = tmp_path / "images"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        (root / split / "b").mkdir(parents=True)
        pixels = np.zeros((30, 40, 3), np.uint8)
        pixels[:, 10:30] = 255
        for name in ("a", "b"):
            Image.fromarray(pixels).save(root / split / name / "0.png")
    dm = ImageFolderDataModule(
        root, image_size=16, batch_size=2, num_workers=0, crop_fraction=0.5, mean=(0, 0, 0),
        std=(1, 1, 1),
    )  # fmt: skip
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 16, 16)
    torch.testing.assert_close(x, torch.ones_like(x))


def test_image_folder_test_falls_back_to_val(image_tree):
    dm = ImageFolderDataModule(image_tree, image_size=8, batch_size=32, num_workers=0)
    assert len(dm.test_dataloader().dataset) == 6
    assert len(dm.predict_dataloader().dataset) == 6
    assert Path(dm.test_dataloader().dataset.root) == image_tree / "val"

    _write_pngs(image_tree / "test", CLASSES, per_class=1)
    assert len(dm.test_dataloader().dataset) == 3
    assert Path(dm.predict_dataloader().dataset.root) == image_tree / "test"


def test_image_folder_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(repr(str(missing)))):
        ImageFolderDataModule(missing)


def test_image_folder_missing_train(image_tree):
    for path in (image_tree / "train").rglob("*.png"):
        path.unlink()
    for folder in sorted((image_tree / "train").iterdir()):
        folder.rmdir()
    (image_tree / "train").rmdir()
    with pytest.raises(FileNotFoundError, match=re.escape(repr(str(image_tree / "train")))):
        ImageFolderDataModule(image_tree)


def test_image_folder_missing_val(tmp_path):
    root = tmp_path / "images"
    _write_pngs(root / "train", CLASSES, per_class=1)
    with pytest.raises(FileNotFoundError, match=re.escape(repr(str(root / "val")))):
        ImageFolderDataModule(root)


def test_image_folder_train_without_images(tmp_path):
    root = tmp_path / "images"
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "loose.png").write_bytes(b"")  # a file, not a class folder
    _write_pngs(root / "val", CLASSES, per_class=1)
    expected = f"Class folder {str(root / 'train' / 'cat')!r} holds no image"
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        ImageFolderDataModule(root)


def test_image_folder_train_without_class_folders(tmp_path):
    root = tmp_path / "images"
    (root / "train").mkdir(parents=True)
    (root / "train" / "loose.png").write_bytes(b"")  # a file, not a class folder
    _write_pngs(root / "val", CLASSES, per_class=1)
    expected = f"{str(root / 'train')!r} holds no class sub-folder"
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        ImageFolderDataModule(root)


def test_image_folder_val_classes_differ(tmp_path):
    root = tmp_path / "images"
    _write_pngs(root / "train", CLASSES, per_class=1)
    _write_pngs(root / "val", CLASSES[:2], per_class=1)
    expected = (
        f"The class folders of {str(root / 'val')!r} (['cat', 'dog']) differ from those of"
        f" {str(root / 'train')!r} (['cat', 'dog', 'owl'])"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        ImageFolderDataModule(root)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"crop_fraction": 0.0}, ValueError, "`crop_fraction` must be in (0, 1], got 0.0"),
        ({"crop_fraction": 1.5}, ValueError, "`crop_fraction` must be in (0, 1], got 1.5"),
        ({"crop_fraction": "1"}, TypeError, "`crop_fraction`"),
        ({"batch_size": 0}, ValueError, "`batch_size` must be an integer >= 1, got 0"),
        ({"num_workers": -2}, ValueError, "`num_workers` must be an integer >= 0, got -2"),
        ({"image_size": 0}, ValueError, "`image_size` must be an integer >= 1, got 0"),
        ({"image_size": 8.0}, TypeError, "`image_size` must be an integer, got 8.0"),
    ],
)
def test_image_folder_argument_errors(image_tree, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        ImageFolderDataModule(image_tree, **kwargs)


# -------------------------------------------------------------------------- CIFAR10DataModule
PER_BATCH = 8  # images in each fabricated batch: 5 x 8 = 40 training, 8 test


def _pickle(path: Path, obj: dict) -> str:
    path.write_bytes(pickle.dumps(obj))
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """A CIFAR-10 python-format tree with random pixels, and the pixels it holds.

    The real files were pickled by Python 2, so their dict keys load as ``str`` with
    ``encoding="latin1"``; torchvision reads ``entry["data"]`` and ``entry["labels"]``.
    """
    root = tmp_path / "cifar"
    folder = root / torchvision.datasets.CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels: dict[str, np.ndarray] = {}
    labels: dict[str, list[int]] = {}
    sums = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels[name] = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        labels[name] = rng.integers(0, 10, size=PER_BATCH).tolist()
        entry = {"data": pixels[name], "labels": labels[name], "batch_label": name}
        sums[name] = _pickle(folder / name, entry)
    meta_md5 = _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "train_list", [[n, sums[n]] for n, _ in cifar.train_list])
    monkeypatch.setattr(cifar, "test_list", [["test_batch", sums["test_batch"]]])
    monkeypatch.setattr(cifar, "meta", {**cifar.meta, "md5": meta_md5})
    monkeypatch.setattr(cifar, "download", _no_download)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", _no_download)
    train = np.concatenate([pixels[f"data_batch_{i}"] for i in range(1, 6)])
    train_labels = [label for i in range(1, 6) for label in labels[f"data_batch_{i}"]]
    data = {
        "train": (train, train_labels),
        "test": (pixels["test_batch"], labels["test_batch"]),
    }
    return root, data


def _no_download(*args, **kwargs):
    raise AssertionError("a test tried to download")


def _cifar_normalised(rows: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(rows.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _all(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_cifar_loaders(cifar_root):
    root, data = cifar_root
    dm = CIFAR10DataModule(root, batch_size=4, num_workers=0, val_size=8, seed=0)
    assert (dm.num_classes, dm.in_channels, dm.image_shape) == (10, 3, (3, 32, 32))
    dm.prepare_data()
    dm.setup("fit")

    train = dm.train_dataloader()
    assert len(train.dataset) == 5 * PER_BATCH - 8
    x, y = next(iter(train))
    assert (x.shape, x.dtype, y.dtype) == ((4, 3, 32, 32), torch.float32, torch.int64)

    # Test set: the official test batch, unaugmented, normalised with the CIFAR statistics.
    x_test, y_test = _all(dm.test_dataloader())
    test_pixels, test_labels = data["test"]
    torch.testing.assert_close(x_test, _cifar_normalised(test_pixels))
    assert y_test.tolist() == test_labels

    # Validation: `val_size` unaugmented training images, disjoint from the training subset.
    x_val, y_val = _all(dm.val_dataloader())
    assert x_val.shape == (8, 3, 32, 32)
    train_pixels, train_labels = data["train"]
    reference = _cifar_normalised(train_pixels)
    val_idx = [int((reference - img).abs().flatten(1).amax(1).argmin()) for img in x_val]
    torch.testing.assert_close(x_val, reference[val_idx])
    assert y_val.tolist() == [train_labels[i] for i in val_idx]
    train_idx = set(train.dataset.indices)
    assert set(val_idx).isdisjoint(train_idx)
    assert set(val_idx) | train_idx == set(range(5 * PER_BATCH))


def test_cifar_holdout_deterministic_per_seed(cifar_root):
    root, _ = cifar_root

    def val_indices(seed: int) -> list[int]:
        dm = CIFAR10DataModule(root, batch_size=4, num_workers=0, val_size=8, seed=seed)
        dm.setup()
        return list(dm.val_dataloader().dataset.indices)

    assert val_indices(0) == val_indices(0)
    assert val_indices(0) != val_indices(1)


def test_cifar_val_size_not_smaller_than_data(cifar_root):
    root, _ = cifar_root
    dm = CIFAR10DataModule(root, num_workers=0, val_size=5 * PER_BATCH)
    with pytest.raises(ValueError, match=re.escape("`val_size` (40) must be smaller than 40")):
        dm.setup()


def test_cifar_missing_folder_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", _no_download)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", _no_download)
    dm = CIFAR10DataModule(tmp_path / "empty", download=False, num_workers=0)
    dm.prepare_data()  # download=False: nothing to fetch, nothing raised
    folder = tmp_path / "empty" / "cifar-10-batches-py"
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"CIFAR-10 not found at {str(folder)!r}")
    ):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match="pass `download=True`"):
        dm.train_dataloader()
    assert not folder.exists()


def test_cifar_download_true_asks_torchvision(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        torchvision.datasets.CIFAR10, "download", lambda self: calls.append(self.train)
    )
    dm = CIFAR10DataModule(tmp_path, download=True, num_workers=0)
    # The patched download fetches nothing, so torchvision then finds no files.
    with pytest.raises(RuntimeError, match="Dataset not found or corrupted"):
        dm.prepare_data()
    assert calls == [True]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"val_size": 0}, ValueError, "`val_size` must be an integer >= 1, got 0"),
        ({"val_size": 50000}, ValueError, "`val_size` must be in [1, 49999], got 50000"),
        ({"val_size": 10.5}, TypeError, "`val_size` must be an integer, got 10.5"),
        ({"batch_size": -1}, ValueError, "`batch_size` must be an integer >= 1, got -1"),
        ({"num_workers": 1.5}, TypeError, "`num_workers` must be an integer, got 1.5"),
    ],
)
def test_cifar_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        CIFAR10DataModule(**kwargs)


def test_image_folder_class_folder_without_images(tmp_path):
    root = tmp_path / "images"
    _write_pngs(root / "train", CLASSES[:2], per_class=1)
    _write_pngs(root / "val", CLASSES[:2], per_class=1)
    (root / "train" / "empty").mkdir()
    # torchvision's ImageFolder would list `empty` as a class and fail in the first epoch.
    with pytest.raises(FileNotFoundError, match=r"Class folder '.*train/empty' holds no image"):
        ImageFolderDataModule(root, image_size=8, num_workers=0)
