"""The image datasets eemlflow trains on, as uint8 arrays in memory.

CIFAR-10/100 are read from the python on-disk format that torchvision downloads (pickled batches), so that
a copy made by any tool works and the tests can write small real files. scikit-learn's 8x8 ``digits`` are
real images that need no download. ``synthetic`` is random noise, for throughput measurements only.
Every dataset yields PIL images, so the study's timm transforms (upscaling, crops, jitter) apply unchanged.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eemlflow.errors import EemlflowError
from eemlflow.training.datasets import CIFAR_URL, DatasetSpec

log = logging.getLogger(__name__)

class ArrayImageDataset(torch.utils.data.Dataset):
    """HWC uint8 RGB images and int labels, served as PIL images through ``transform``.

    timm's ``create_loader`` sets ``transform`` to the study's train or eval transform.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected N x H x W x 3 uint8 images, got {images.shape} {images.dtype}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.astype(np.int64)
        self.transform = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


@dataclass(frozen=True)
class ImageData:
    """A dataset's two splits and what the MLflow run should say about it."""

    name: str
    train: ArrayImageDataset
    eval: ArrayImageDataset
    num_classes: int
    source: str
    synthetic: bool = False
    digest: str = ""  # the content's digest where the data was found at a path (a folder), else empty

    @property
    def in_memory(self) -> bool:
        """Whether the images are arrays in memory (the GPU data path and MLflow's numpy dataset need them)."""
        return hasattr(self.train, "images")


def load_cifar(spec: DatasetSpec, data_dir: Path, download: bool) -> ImageData:
    """CIFAR-10/100 from torchvision's on-disk python format under ``data_dir`` (downloaded first if asked)."""
    layout = spec.cifar
    folder = data_dir / layout.folder
    if download and spec.missing(data_dir):
        _download_cifar(spec.name, data_dir)
    spec.check(data_dir)
    train = [_read_batch(folder / f, layout.label_key) for f in layout.train_files]
    test = _read_batch(folder / layout.test_file, layout.label_key)
    images = np.concatenate([b[0] for b in train])
    labels = np.concatenate([b[1] for b in train])
    for split, split_labels in (("training", labels), ("test", test[1])):
        if split_labels.size and (split_labels.min() < 0 or split_labels.max() >= spec.num_classes):
            raise EemlflowError(
                f"{spec.title} {split} labels in {folder} fall outside 0-{spec.num_classes - 1}: "
                "the files are not a real copy of the dataset"
            )
    return ImageData(
        spec.name, ArrayImageDataset(images, labels), ArrayImageDataset(*test), spec.num_classes, str(folder.resolve())
    )


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch: rows of 3072 bytes (R, G, B planes of 32x32) and a label list."""
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="latin1")
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
        raise EemlflowError(
            f"{path} is not a CIFAR batch in the python format ({type(e).__name__}: {e}); "
            f"re-extract the archive from {CIFAR_URL}"
        ) from None
    return np.ascontiguousarray(data), labels


def _download_cifar(name: str, data_dir: Path) -> None:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    log.info("downloading %s into %s", name, data_dir)
    try:
        for train in (True, False):
            cls(root=str(data_dir), train=train, download=True)
    except Exception as e:  # network errors come in many types; the message says what happened
        raise EemlflowError(f"could not download {name} into {data_dir}: {e}") from None


def load_digits(spec: DatasetSpec, data_dir: Path, download: bool) -> ImageData:
    """scikit-learn's 1,797 8x8 digits (16 grey levels), as RGB uint8, split 80/20 with a fixed seed.

    Read from the file scikit-learn ships (``load_digits`` reads the same one), without importing scikit-learn:
    that import costs seconds, paid by every training on digits."""
    table = _digits_table()
    target = table[:, -1].astype(int)
    grey = np.clip(np.rint(table[:, :-1].reshape(-1, 8, 8) * (255 / 16)), 0, 255).astype(np.uint8)
    images = np.repeat(grey[..., None], 3, axis=-1)
    order = np.random.default_rng(0).permutation(len(images))
    n_eval = len(images) // 5
    ev, tr = order[:n_eval], order[n_eval:]
    return ImageData(spec.name, ArrayImageDataset(images[tr], target[tr]), ArrayImageDataset(images[ev], target[ev]),
                     spec.num_classes, "sklearn.datasets.load_digits")


def _digits_table() -> np.ndarray:
    """scikit-learn's digits.csv.gz: 64 pixel columns and the label, one row per image."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.exists():  # laid out otherwise: let scikit-learn find it
        from sklearn.datasets import load_digits

        digits = load_digits()
        return np.column_stack([digits.data, digits.target])
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",")


def make_synthetic(spec: DatasetSpec, data_dir: Path, download: bool, n_eval: int = 1_000) -> ImageData:
    """Random 32x32 images with random labels: for throughput only, accuracy means nothing."""
    rng = np.random.default_rng(0)
    def make(n: int) -> ArrayImageDataset:
        return ArrayImageDataset(
            rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, spec.num_classes, n)
        )
    return ImageData(spec.name, make(spec.train_images), make(n_eval), spec.num_classes, "random noise (seed 0)",
                     synthetic=True)
