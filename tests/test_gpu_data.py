"""The device data path against timm's own transforms, on CPU tensors: same distributions, same recipe."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.transforms import RandomResizedCropAndInterpolation
from torch.utils._python_dispatch import TorchDispatchMode

from eemlflow.training.config import TrainConfig
from eemlflow.training.datasets import load_data
from eemlflow.training.device_data import DeviceLoader, sample_crop_boxes
from eemlflow.training.recipe import build_recipe, train_loss_fn, train_step

SIZE = 64


def test_crop_boxes_follow_timms_distribution():
    generator = torch.Generator().manual_seed(0)
    ours = sample_crop_boxes(20_000, 32, 32, generator).numpy().astype(float)
    random.seed(0)
    blank = Image.new("RGB", (32, 32))
    theirs = np.array([RandomResizedCropAndInterpolation.get_params(blank, (0.08, 1.0), (3 / 4, 4 / 3))
                       for _ in range(20_000)], dtype=float)
    for boxes in (ours, theirs):
        assert (boxes[:, 2] >= 1).all() and (boxes[:, 0] + boxes[:, 2] <= 32).all()
        assert (boxes[:, 1] + boxes[:, 3] <= 32).all()
    def stats(b):
        area = b[:, 2] * b[:, 3] / 1024
        return np.array([area.mean(), area.std(), np.log(b[:, 3] / b[:, 2]).mean(), np.log(b[:, 3] / b[:, 2]).std(),
                         b[:, 0].mean() / 32, b[:, 1].mean() / 32])
    assert np.allclose(stats(ours), stats(theirs), atol=0.01), (stats(ours), stats(theirs))


@pytest.fixture(scope="module")
def tinted_digits() -> np.ndarray:
    """Real digit images, tinted so that the three channels differ."""
    images = load_data("digits").train.images[:256].astype(np.float32)
    tint = np.random.default_rng(1).uniform(0.3, 1.0, (256, 1, 1, 3))
    return (images * tint).astype(np.uint8)


def _unnormalised_loader(images: np.ndarray, is_training: bool) -> DeviceLoader:
    return DeviceLoader(images, np.zeros(len(images), dtype=np.int64), batch_size=len(images),
                        is_training=is_training, input_size=(3, SIZE, SIZE), mean=(0, 0, 0), std=(1 / 255,) * 3,
                        crop_pct=0.875, device=torch.device("cpu"))


def test_train_outputs_match_timms_pil_pipeline_in_distribution(tinted_digits):
    random.seed(0)
    torch.manual_seed(0)
    timm_train = create_transform(SIZE, is_training=True, interpolation="random", color_jitter=0.4,
                                  use_prefetcher=True)
    repeats = 8
    theirs = np.stack([np.asarray(timm_train(Image.fromarray(im))) for _ in range(repeats) for im in tinted_digits])
    loader = _unnormalised_loader(np.concatenate([tinted_digits] * repeats), True)
    ours = torch.cat([loader.transform(x.float()) for x in loader.images.split(256)]).numpy()
    assert ours.shape == theirs.shape == (256 * repeats, 3, SIZE, SIZE)
    theirs = theirs.astype(np.float32)
    for reduce in (lambda a: a.mean(axis=(0, 2, 3)), lambda a: a.std(axis=(0, 2, 3)),
                   lambda a: a.reshape(len(a), -1).mean(1).std(), lambda a: a.reshape(len(a), 3, -1).std(2).mean()):
        assert np.allclose(reduce(ours), reduce(theirs), rtol=0.05), (reduce(ours), reduce(theirs))
    assert 0 <= ours.min() and ours.max() <= 255


def test_eval_output_matches_timms_resize_and_centre_crop(tinted_digits):
    timm_eval = create_transform(SIZE, is_training=False, interpolation="bicubic", crop_pct=0.875,
                                 use_prefetcher=True)
    theirs = np.stack([np.asarray(timm_eval(Image.fromarray(im))) for im in tinted_digits]).astype(np.float32)
    loader = _unnormalised_loader(tinted_digits, False)
    ours = loader.transform(loader.images.float()).numpy()
    # Same geometry; the residue is torch's bicubic kernel (a=-0.75) against PIL's (a=-0.5) on hard 8x8 edges:
    # 4.26 here, while bilinear in place of bicubic gives 6.09.
    assert np.abs(ours - theirs).mean() < 5
    assert abs(ours.mean() - theirs.mean()) < 1.5


def test_loader_batches_are_normalised_shuffled_and_drop_the_last_partial_batch():
    data = load_data("digits")
    loader = DeviceLoader(data.train.images, data.train.labels, batch_size=100, is_training=True,
                          input_size=(3, 32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                          crop_pct=0.95, device=torch.device("cpu"), channels_last=True)
    batches = list(loader)
    assert len(batches) == len(loader) == math.floor(len(data.train) / 100)
    x, y = batches[0]
    assert x.shape == (100, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64
    seen = torch.cat([b[1] for b in batches]).tolist()
    assert seen != data.train.labels[:len(seen)].tolist()  # shuffled


def test_two_ranks_shares_split_each_epochs_shuffle_and_the_evaluation_images_exactly():
    data = load_data("digits")
    n = len(data.train)
    identity = np.arange(n, dtype=np.int64)  # each image's label is its index: what a rank saw, exactly

    def shares(is_training: bool) -> list[list[int]]:
        loaders = [DeviceLoader(data.train.images, identity, batch_size=32, is_training=is_training,
                                input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.95,
                                device=torch.device("cpu"), seed=7, shard=(rank, 2)) for rank in (0, 1)]
        return [torch.cat([y for _, y in loader]).tolist() for loader in loaders]

    first, second = shares(is_training=True)
    assert len(first) == len(second) == (n // 2) // 32 * 32  # the same whole batches on every rank
    assert not set(first) & set(second)  # one shuffle, split: no image twice in an epoch
    assert first != sorted(first)
    first, second = shares(is_training=False)
    assert sorted(first + second) == list(range(n))  # the whole evaluation set, each image once


def test_batches_are_normalised_exactly_as_the_reference_formula():
    data = load_data("digits")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    loader = DeviceLoader(data.eval.images, data.eval.labels, batch_size=50, is_training=False,
                          input_size=(3, 32, 32), mean=mean, std=std, crop_pct=0.95, device=torch.device("cpu"))
    x, y = next(iter(loader))
    pixels = loader.transform(torch.from_numpy(data.eval.images[:50]).permute(0, 3, 1, 2).float())  # 0..255
    reference = (pixels / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x, reference, atol=1e-5)
    assert y.tolist() == data.eval.labels[:50].tolist()


def _flipped_fraction(hflip: float) -> float:
    """A left-to-right ramp keeps its direction through any crop and resize unless it is flipped."""
    ramp = np.broadcast_to(np.linspace(0, 255, 32, dtype=np.float32)[None, None, :, None], (1000, 32, 32, 3))
    loader = DeviceLoader(ramp.astype(np.uint8), np.zeros(1000, dtype=np.int64), batch_size=1000, is_training=True,
                          input_size=(3, SIZE, SIZE), mean=(0, 0, 0), std=(1 / 255,) * 3, crop_pct=0.875,
                          device=torch.device("cpu"), hflip=hflip, color_jitter=0.0, seed=3)
    x = loader.transform(loader.images.float())
    left, right = x[..., : SIZE // 4].mean(dim=(1, 2, 3)), x[..., -SIZE // 4:].mean(dim=(1, 2, 3))
    assert bool(((left - right).abs() > 0).all())  # every crop keeps a measurable ramp
    return float((left > right).float().mean())


def test_horizontal_flip_happens_with_timms_probability():
    assert _flipped_fraction(0.0) == 0.0
    assert _flipped_fraction(1.0) == 1.0
    assert abs(_flipped_fraction(0.5) - 0.5) < 0.05


class _Synchronising(TorchDispatchMode):
    """Records every operation that makes the host wait for the device: a tensor read back as a Python number
    (``.item()``, ``if tensor``), ``nonzero`` and boolean-mask gathers and scatters (their output size is data)."""

    READ_BACK = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.nonzero.default",
                 "aten.masked_select.default", "aten.masked_scatter_.default", "aten.masked_scatter.default",
                 "aten.unique_consecutive.default", "aten._unique2.default"}
    MASKED = {"aten.index.Tensor", "aten.index_put_.default", "aten.index_put.default", "aten._index_put_impl_.default"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in self.READ_BACK:
            self.seen.append(name)
        elif name in self.MASKED and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                         for i in (args[1] if len(args) > 1 else []) or []):
            self.seen.append(f"{name} with a boolean mask")
        return func(*args, **(kwargs or {}))


def test_a_training_step_on_the_device_data_path_never_waits_for_the_device():
    cfg = TrainConfig(model="test_resnet", dataset="digits", batch_size=64, img_size=32, workers=0, data_path="gpu")
    recipe = build_recipe(cfg, load_data("digits"), torch.device("cpu"))
    loss_fn = train_loss_fn()
    batches = iter(recipe.train_loader)
    with _Synchronising() as mode:
        x, y = next(batches)
        train_step(recipe, loss_fn, x, y)
    assert mode.seen == []
    with _Synchronising() as mode:  # the detector itself: what the old path did, a mask tested and gathered
        mask = x[:, 0, 0, 0] > 0
        if mask.any():
            x[mask].sum()
    assert mode.seen == ["aten._local_scalar_dense.default", "aten.index.Tensor with a boolean mask"]
