"""The datasets eemlflow trains on, as one registry (timm keeps one table in ``dataset_factory``): each entry says
its name, classes, training-set size, the files it needs under ``data_dir`` and the function that loads it.

The settings' choices (``TrainConfig.dataset``), the missing-files error, the efficiency columns' image counts and
the README's list are all read from ``REGISTRY``; adding a dataset is its loader and one line here. Imports only
the standard library and ``eemlflow.errors``: the loaders (numpy, torch, PIL) are imported when a dataset is
loaded, so that checking a setting or a sweep's files stays cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eemlflow.errors import EemlflowError

if TYPE_CHECKING:  # for type hints only
    from eemlflow.training.data import ImageData

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class CifarLayout:
    """Where torchvision's CIFAR download puts each file, and which key holds the labels."""

    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: str
    archive: str


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset. ``loader`` is ``"module:function"``, called as ``function(spec, data_dir, download)`` and
    returning an ``ImageData``; ``files`` are the paths under ``data_dir`` it needs (unless ``download``), and
    ``fetch`` says how to get them (``{data_dir}`` is filled in)."""

    name: str
    title: str
    num_classes: int
    train_images: int | None  # the training set's size, for rows that do not record it (a published CSV)
    loader: str
    doc: str
    files: tuple[str, ...] = ()
    fetch: str = ""
    cifar: CifarLayout | None = None
    checker: str = ""  # "module:function" (spec, data_dir, download) that checks what ``files`` cannot say
    identity: str = ""  # "module:function" (spec, data_dir) -> the content's digest, for data found at a path
    streamed: bool = False  # read from disk batch by batch (the GPU data path needs the images in memory)

    def missing(self, data_dir: str | Path) -> list[str]:
        """The needed files that are not under ``data_dir``."""
        return [f for f in self.files if not (Path(data_dir) / f).is_file()]

    def check(self, data_dir: str | Path, download: bool = False) -> None:
        """``EemlflowError`` naming the missing files, and how to get them, or what is wrong with the data's layout
        (cheap: no image is read)."""
        if self.checker:
            _call(self.checker, self, Path(data_dir), download)
            return
        missing = [] if download else self.missing(data_dir)
        if missing:
            folder = Path(data_dir) / Path(missing[0]).parent
            names = ", ".join(Path(f).name for f in missing)
            fetch = self.fetch.format(data_dir=data_dir)
            raise EemlflowError(f"{self.title} files missing in {folder}: {names}. {fetch}")

    def load(self, data_dir: str | Path = "data", download: bool = False) -> ImageData:
        return _call(self.loader, self, Path(data_dir), download)

    def content_digest(self, data_dir: str | Path) -> str | None:
        """What identifies the data a run trains on beyond its name (a folder's file list), None for a dataset
        that its name identifies."""
        return _call(self.identity, self, Path(data_dir)) if self.identity else None


def _call(target: str, *args: object) -> Any:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(*args)


def _cifar(name: str, title: str, classes: int, layout: CifarLayout) -> DatasetSpec:
    files = tuple(f"{layout.folder}/{f}" for f in (*layout.train_files, layout.test_file))
    fetch = (f"Download {layout.archive} from {CIFAR_URL} and extract it into {{data_dir}}/, or add -P download=true "
             "(--download) on a machine with internet access")
    return DatasetSpec(name, title, classes, 50_000, "eemlflow.training.data:load_cifar",
                       f"{title} (python pickle batches under data_dir/{layout.folder})", files, fetch, layout)


REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    _cifar("cifar10", "CIFAR-10", 10, CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                                                  "test_batch", "labels", "cifar-10-python.tar.gz")),
    _cifar("cifar100", "CIFAR-100", 100, CifarLayout("cifar-100-python", ("train",), "test", "fine_labels",
                                                     "cifar-100-python.tar.gz")),
    DatasetSpec("digits", "digits", 10, 1_438, "eemlflow.training.data:load_digits",
                "scikit-learn's 1,797 8x8 digits, split 80/20 (no download)"),
    DatasetSpec("synthetic", "synthetic", 10, 10_000, "eemlflow.training.data:make_synthetic",
                "random 32x32 noise, for throughput only"),
    DatasetSpec("folder", "image folder", 0, None, "eemlflow.training.folder:load_folder",
                "your own images: data_dir/train/<class>/*.png|jpg|jpeg and data_dir/val/<class>/..., streamed from "
                "disk (classes from the folder)", checker="eemlflow.training.folder:check_folder",
                identity="eemlflow.training.folder:folder_identity", streamed=True),
)}
NAMES: tuple[str, ...] = tuple(REGISTRY)


# timm's names for torchvision's datasets: ``torch/<name>`` (``torch/mnist``), loaded by timm's factory.
TORCHVISION_PREFIX = "torch/"


def dataset_spec(name: str) -> DatasetSpec:
    """The registry's entry for ``name`` (or for timm's ``torch/<name>``); an ``EemlflowError`` listing the known
    ones otherwise."""
    if name.startswith(TORCHVISION_PREFIX) and len(name) > len(TORCHVISION_PREFIX):
        return DatasetSpec(name, name, 0, None, "eemlflow.training.torchvision_data:load_torchvision",
                           "torchvision's dataset through timm's factory", checker=(
                               "eemlflow.training.torchvision_data:check_torchvision"), streamed=True)
    if name not in REGISTRY:
        raise EemlflowError(f"unknown dataset {name!r}: choose one of {', '.join(NAMES)}, or timm's "
                            f"{TORCHVISION_PREFIX}<name> (torchvision's, e.g. torch/mnist)")
    return REGISTRY[name]


def check_available(name: str, data_dir: str | Path = "data", download: bool = False) -> None:
    """Raise ``EemlflowError`` naming the missing files when a dataset cannot be loaded (cheap: no reading)."""
    dataset_spec(name).check(data_dir, download)


def load_data(name: str, data_dir: str | Path = "data", download: bool = False) -> ImageData:
    """Load a dataset by name. Files it needs must be under ``data_dir`` unless ``download`` is set."""
    return dataset_spec(name).load(data_dir, download)
