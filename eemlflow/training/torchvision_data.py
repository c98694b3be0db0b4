"""timm's ``torch/<name>`` datasets (torchvision's MNIST, KMNIST, Fashion-MNIST, CIFAR, ...) through timm's dataset
factory (``timm.data.create_dataset``), in ``data_dir`` as torchvision lays them out; downloaded only with
``download=true``. Their images are served as RGB, so one-channel datasets feed the study's 3-channel models
unchanged. A dataset that is not there says so in one line: where it was looked for, and that fetching it needs
``download=true`` and a network.
"""

from __future__ import annotations

from pathlib import Path

import torch

from eemlflow.errors import EemlflowError
from eemlflow.training.data import ImageData
from eemlflow.training.datasets import DatasetSpec


class RgbImages(torch.utils.data.Dataset):
    """A torchvision dataset's (PIL image, class) pairs as RGB images through ``transform`` (set by timm's loader)."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset
        self.transform = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        image = image.convert("RGB")
        return (self.transform(image) if self.transform is not None else image), int(target)


def _split(spec: DatasetSpec, data_dir: Path, download: bool, split: str) -> torch.utils.data.Dataset:
    from timm.data import create_dataset

    try:
        return create_dataset(spec.name, root=str(data_dir), split=split, download=download)
    except AssertionError as e:  # timm: "Unknown torchvision dataset <name>"
        raise EemlflowError(f"unknown dataset {spec.name!r} ({e}): timm's torch/ names include torch/mnist, "
                            "torch/kmnist, torch/fashion_mnist, torch/cifar10, torch/cifar100") from None
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True to download it"
        hint = ("the download failed: check the network" if download else
                "add -P download=true (--download) on a machine with internet access, or copy torchvision's files "
                "there")
        raise EemlflowError(f"{spec.name}: not in {data_dir} ({str(e).splitlines()[0]}); {hint}") from None
    except OSError as e:  # no network while downloading
        raise EemlflowError(f"{spec.name}: could not download it into {data_dir} ({e}): this needs a network") from None


def check_torchvision(spec: DatasetSpec, data_dir: Path, download: bool) -> None:
    if not download:
        _split(spec, data_dir, False, "train")


def load_torchvision(spec: DatasetSpec, data_dir: Path, download: bool) -> ImageData:
    train, evaluation = (_split(spec, data_dir, download, split) for split in ("train", "validation"))
    classes = len(getattr(train, "classes", None) or {int(t) for t in getattr(train, "targets", [])})
    return ImageData(spec.name, RgbImages(train), RgbImages(evaluation), classes, str(Path(data_dir).resolve()))
