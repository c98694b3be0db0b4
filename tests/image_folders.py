"""Writes datasets as a user would have them: scikit-learn's digits saved as PNG files in ``train/<digit>/`` and
``val/<digit>/`` (the same 80/20 split as the built-in ``digits``), or as torchvision's MNIST files (the raw idx
format it reads from ``MNIST/raw/``)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from eemlflow.training.datasets import load_data


def write_digit_folder(root: Path, per_split: int | None = None) -> Path:
    """The digits as PNGs under ``root`` (``per_split``: the first that many images of each split, else all)."""
    digits = load_data("digits")
    for split, images in (("train", digits.train), ("val", digits.eval)):
        count = len(images) if per_split is None else per_split
        for i in range(count):
            folder = root / split / str(images.labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images.images[i]).save(folder / f"{i:04d}.png")
    return root


def write_mnist(root: Path, per_split: int = 200) -> Path:
    """The first ``per_split`` digits of each split, upscaled to 28x28 grey, as torchvision's MNIST raw files."""
    digits = load_data("digits")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, images in (("train", digits.train), ("t10k", digits.eval)):
        grey = np.stack([np.asarray(Image.fromarray(img[..., 0]).resize((28, 28)))
                         for img in images.images[:per_split]])
        header = struct.pack(">IIII", 2051, len(grey), 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + grey.tobytes())
        labels = images.labels[:per_split].astype(np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(labels)) + labels.tobytes())
    return root
