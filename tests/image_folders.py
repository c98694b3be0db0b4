"""Writes image-folder datasets as a user would have them: scikit-learn's digits saved as PNG files in
``train/<digit>/`` and ``val/<digit>/`` (the same 80/20 split as the built-in ``digits``)."""

from __future__ import annotations

from pathlib import Path

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
