"""Writes small CIFAR-10/100 copies in the real on-disk (python pickle) format, as torchvision extracts it."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def _batch(n: int, num_classes: int, label_key: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    # Each class gets its own mean colour so that the images are not pure noise.
    base = (labels[:, None] * (255 // num_classes)).astype(np.uint8)
    data = np.clip(base + rng.integers(0, 40, (n, 3072)), 0, 255).astype(np.uint8)
    return {"batch_label": "testing batch", "data": data, label_key: labels.tolist(),
            "filenames": [f"img_{i}.png" for i in range(n)]}


def write_cifar10(root: Path, per_batch: int = 20, test: int = 30) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_batch(per_batch, 10, "labels", i)))
    (folder / "test_batch").write_bytes(pickle.dumps(_batch(test, 10, "labels", 99)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return folder


def write_cifar100(root: Path, train: int = 120, test: int = 40) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n, seed in (("train", train, 1), ("test", test, 2)):
        batch = _batch(n, 100, "fine_labels", seed)
        batch["coarse_labels"] = [ln // 5 for ln in batch["fine_labels"]]
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)]}))
    return folder
