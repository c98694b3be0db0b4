"""The study's augmentations, batch-wise on the training device (``data_path=gpu``), in the spirit of airbench.

The whole dataset sits on the device as uint8; each batch is cropped, resized, flipped, colour-jittered and
normalised there, so the CPU no longer bounds small models. The distributions are timm's: crop boxes are
sampled with the same algorithm as ``RandomResizedCropAndInterpolation.get_params`` (10 attempts, then a
centre crop), interpolation is bilinear or bicubic at random, ColorJitter(0.4, 0.4, 0.4) applies its three
factors in a random order per image. Crop-then-resize is one ``grid_sample`` per interpolation, with the flip
folded into the same affine map. Differences from PIL (documented, small): torch's bicubic kernel
(a = -0.75, PIL -0.5), no antialiasing when a crop is larger than the output (CIFAR is always upscaled), and
no uint8 rounding between jitter steps. The eval path is timm's resize(size / crop_pct) + centre crop,
expressed as the equivalent centre box.

Nothing here waits for the device: no ``.item()``, no ``if tensor``, no boolean-mask gather or scatter (each
one stops the CPU from queueing work ahead of the GPU). Each image's bilinear or bicubic resize is chosen with
``torch.where`` from both, which costs a second ``grid_sample`` and no synchronisation;
``tests/test_gpu_data.py`` counts the synchronising operations of a training step and expects none.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
ATTEMPTS = 10
GREY = (0.299, 0.587, 0.114)  # PIL's ITU-R 601-2 luma, which torchvision's jitter uses too


def sample_crop_boxes(n: int, height: int, width: int, generator: torch.Generator | None = None,
                      scale: tuple[float, float] = SCALE, ratio: tuple[float, float] = RATIO,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` RandomResizedCrop boxes as (top, left, h, w) rows, drawn like timm's ``get_params``."""
    area = height * width
    u = torch.rand(n, ATTEMPTS, 2, generator=generator, device=device, dtype=torch.float64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    ok = (w <= width) & (h <= height)
    first = torch.argmax(ok.to(torch.int8), dim=1)  # the first attempt that fits, as the loop would take
    any_ok = ok.any(dim=1)
    rows = torch.arange(n, device=device)
    w, h = w[rows, first], h[rows, first]
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    r = torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)
    top = torch.where(any_ok, torch.floor(r[:, 0] * (height - h + 1)), torch.floor((height - h) / 2))
    left = torch.where(any_ok, torch.floor(r[:, 1] * (width - w + 1)), torch.floor((width - w) / 2))
    return torch.stack([top, left, h, w], dim=1).float()


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int, mode: str,
                flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each NCHW float image to its (top, left, h, w) box and resize to ``size``, in one grid_sample."""
    n, _, height, width = images.shape
    top, left, h, w = boxes.to(images.dtype).unbind(1)
    sx, sy = w / width, h / height
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = sx if flip is None else torch.where(flip, -sx, sx)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    out = F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)
    return out.clamp_(0, 255)


def color_jitter(x: torch.Tensor, strength: float = 0.4, generator: torch.Generator | None = None) -> torch.Tensor:
    """torchvision's ColorJitter(brightness, contrast, saturation = strength) on [0, 255] floats, per image."""
    n = x.shape[0]
    factors = 1 - strength + 2 * strength * torch.rand(n, 3, generator=generator, device=x.device)
    order = torch.argsort(torch.rand(n, 3, generator=generator, device=x.device), dim=1)
    weights = torch.tensor(GREY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    for position in range(3):
        op = order[:, position].view(n, 1, 1, 1)
        f = factors.gather(1, order[:, position:position + 1]).view(n, 1, 1, 1).to(x.dtype)
        grey = (x * weights).sum(1, keepdim=True)
        brightness = x * f
        contrast = f * x + (1 - f) * grey.mean(dim=(2, 3), keepdim=True)
        saturation = f * x + (1 - f) * grey
        x = torch.where(op == 0, brightness, torch.where(op == 1, contrast, saturation)).clamp_(0, 255)
    return x


class DeviceLoader:
    """Batches of normalised images made on the device, with timm's train or eval transform.

    Iterates ``(images, labels)`` like timm's prefetching loader: images N x 3 x S x S (float32, optionally
    channels_last), labels int64, both on ``device``. Training batches are shuffled and the last partial
    batch is dropped, as in timm. ``shard=(rank, ranks)``: this rank's share of each epoch's shuffle (every rank
    draws the same permutation, its generator seeded alike) and of the evaluation images.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, is_training: bool,
                 input_size: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...],
                 crop_pct: float, device: torch.device, seed: int = 0, hflip: float = 0.5,
                 color_jitter: float = 0.4, eval_interpolation: str = "bicubic",
                 channels_last: bool = False, shard: tuple[int, int] = (0, 1)) -> None:
        self.images = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
        self.labels = torch.from_numpy(labels).to(device)
        self.batch_size, self.is_training, self.size = batch_size, is_training, input_size[-1]
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.crop_pct, self.hflip, self.jitter = crop_pct, hflip, color_jitter
        self.eval_mode = "bilinear" if eval_interpolation == "bilinear" else "bicubic"
        self.device, self.channels_last = device, channels_last
        self.rank, self.ranks = shard
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        height, width = self.images.shape[2:]
        scale_size = math.floor(self.size / crop_pct)
        side_h, side_w = height * self.size / scale_size, width * self.size / scale_size
        # The eval transform's one centre box, made once: a tensor built from Python numbers is a host copy.
        self.eval_box = torch.tensor([(height - side_h) / 2, (width - side_w) / 2, side_h, side_w], device=device)

    def _share(self) -> int:
        """How many images this rank sees an epoch (training: an equal share of all, the rest dropped)."""
        n = len(self.images)
        return n // self.ranks if self.is_training else len(range(self.rank, n, self.ranks))

    def __len__(self) -> int:
        n = self._share()
        return n // self.batch_size if self.is_training else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        if self.is_training:
            order = torch.randperm(n, generator=self.generator, device=self.device)[self.rank::self.ranks]
        else:
            order = torch.arange(n, device=self.device)[self.rank::self.ranks]
        for b in range(len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.transform(self.images[index].float())
            x = (x - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[index]

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """timm's train (random crop, flip, jitter) or eval (resize + centre crop) transform on a float batch."""
        n, _, height, width = x.shape
        if not self.is_training:
            return crop_resize(x, self.eval_box.expand(n, 4), self.size, self.eval_mode)
        boxes = sample_crop_boxes(n, height, width, self.generator, device=x.device)
        flip = torch.rand(n, generator=self.generator, device=x.device) < self.hflip
        bicubic = torch.rand(n, generator=self.generator, device=x.device) < 0.5  # timm's 'random' interpolation
        out = torch.where(bicubic.view(n, 1, 1, 1), crop_resize(x, boxes, self.size, "bicubic", flip),
                          crop_resize(x, boxes, self.size, "bilinear", flip))
        return color_jitter(out, self.jitter, self.generator) if self.jitter > 0 else out
