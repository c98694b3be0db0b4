"""Image-folder datasets, laid out as timm and torchvision expect: ``train/<class>/*.png|jpg|jpeg`` and ``val/`` (or
``validation/``) beside it, found through timm's dataset factory (``timm.data.create_dataset``) and streamed from
disk by the loader's workers: only the file list is held in memory, so an ImageNet-sized folder works.

Bad layouts are refused before anything trains, one line each (no folder, no split, an empty split, a class in
``val/`` that ``train/`` lacks, images outside a class folder). An image that cannot be decoded stops the training
with its name (``UnreadableImage``) instead of being skipped, which timm's own dataset does: a partial epoch would
be measured as a whole one. The folder's identity is a digest of its file list (relative paths and sizes), the
same wherever the folder lives.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from eemlflow.errors import EemlflowError
from eemlflow.training.data import ImageData
from eemlflow.training.datasets import DatasetSpec

TRAIN_SPLITS = ("train", "training")
EVAL_SPLITS = ("val", "validation", "valid", "eval", "evaluation")
LAYOUT = "lay it out as train/<class>/*.png and val/<class>/*.png (jpg and jpeg too)"


class UnreadableImage(EemlflowError):
    """An image file that PIL cannot decode. A loader worker re-raises it in the training process with its own
    traceback in the message; the message kept is the original line, naming the file."""

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:  # torch's ExceptionWrapper: "...\nmodule.UnreadableImage: <message>"
            message = message.rstrip().splitlines()[-1].split("UnreadableImage: ", 1)[-1]
        super().__init__(message)


class FolderImages(torch.utils.data.Dataset):
    """(path, class index) samples served as RGB PIL images through ``transform`` (set by timm's loader)."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples
        self.transform = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            with Image.open(path) as f:
                image = f.convert("RGB")  # decodes the whole image: a truncated file fails here
        except (OSError, ValueError, SyntaxError) as e:
            raise UnreadableImage(f"image {path} cannot be read ({type(e).__name__}: {e}): replace or remove "
                                  "it and resume the run") from None
        if self.transform is not None:
            image = self.transform(image)
        return image, target


@dataclass(frozen=True)
class FolderListing:
    """A folder dataset's two splits as timm found them, its classes and its content digest."""

    root: Path
    train: list[tuple[str, int]]
    eval: list[tuple[str, int]]
    classes: dict[str, int]
    digest: str

    @property
    def name(self) -> str:
        """A readable name for the CSV's ``dataset`` column: ``folder:<the folder's name>``."""
        return f"folder:{self.root.name}"


def _split(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise EemlflowError(f"{root} has no {' or '.join(n + '/' for n in names[:2])} folder ({what}): {LAYOUT}")


def _samples(folder: Path) -> tuple[list[tuple[str, int]], dict[str, int]]:
    from timm.data import create_dataset

    try:
        found = create_dataset("", root=str(folder), split="train", search_split=False)
    except RuntimeError as e:  # timm: "Found 0 images in subfolders of ..."
        raise EemlflowError(f"{folder} has no images ({str(e).splitlines()[0]}): {LAYOUT}") from None
    return list(found.reader.samples), dict(found.reader.class_to_idx)


def list_folder(root: str) -> FolderListing:
    """The folder dataset at ``root``, checked; an ``EemlflowError`` saying what is wrong otherwise."""
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise EemlflowError(f"folder dataset {root} does not exist: give data_dir=the folder that holds train/ and "
                            "val/")
    train_dir, eval_dir = _split(path, TRAIN_SPLITS, "training images"), _split(path, EVAL_SPLITS, "evaluation images")
    train, classes = _samples(train_dir)
    if "" in classes:
        raise EemlflowError(f"{train_dir} has images outside a class folder: {LAYOUT}")
    found, eval_classes = _samples(eval_dir)
    extra = sorted(set(eval_classes) - set(classes))
    if extra:
        raise EemlflowError(f"{eval_dir} has classes that {train_dir.name}/ lacks: {', '.join(extra[:10])}"
                            f"{' ...' if len(extra) > 10 else ''}: every evaluation class must be trained on")
    names = {index: name for name, index in eval_classes.items()}
    evaluation = [(image, classes[names[index]]) for image, index in found]  # the training split's class indices
    return FolderListing(path, train, evaluation, classes, _digest(path, train + evaluation))


def _digest(root: Path, samples: list[tuple[str, int]]) -> str:
    """sha256 of the sorted (path relative to the dataset's folder, size in bytes) of every image."""
    entries = sorted(f"{os.path.relpath(p, root)}\t{os.path.getsize(p)}" for p, _ in samples)
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def check_folder(spec: DatasetSpec, data_dir: Path, download: bool) -> None:
    list_folder(str(data_dir))


def folder_identity(spec: DatasetSpec, data_dir: Path) -> str:
    return list_folder(str(data_dir)).digest


def load_folder(spec: DatasetSpec, data_dir: Path, download: bool) -> ImageData:
    listing = list_folder(str(data_dir))
    return ImageData(listing.name, FolderImages(listing.train), FolderImages(listing.eval), len(listing.classes),
                     str(listing.root), digest=listing.digest)
