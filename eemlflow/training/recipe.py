"""The study's training recipe (timm train.py's defaults) and the epoch loop.

Everything is built through timm's own factories, so the recipe is timm's, not a re-implementation:
``resolve_data_config`` + ``create_loader`` (transforms, prefetcher with normalisation on the device),
``create_optimizer_v2`` (SGD + Nesterov, no weight decay on bias/norm), ``create_scheduler_v2`` (cosine,
per epoch), ``LabelSmoothingCrossEntropy`` and ``timm.utils.accuracy``. The two places where the factories'
defaults differ from train.py's are set explicitly: warmup epochs (train.py 5, factory 0) and the train
interpolation (train.py 'random', factory 'bilinear').

This module knows nothing of MLflow or energy: ``run_epochs`` yields one ``EpochResult`` per epoch and the
caller measures and logs around it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from timm.data import create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import accuracy, random_seed

from eemlflow.errors import EemlflowError
from eemlflow.training.config import TrainConfig
from eemlflow.training.data import ImageData
from eemlflow.training.device_data import DeviceLoader
from eemlflow.training.distributed import data_parallel, maximum, rank_device, summed
from eemlflow.training.models import create_model
from eemlflow.training.ranks import Ranks

# timm train.py defaults that make up the study's recipe.
MOMENTUM = 0.9
WEIGHT_DECAY = 2e-5
WARMUP_EPOCHS = 5
WARMUP_LR = 1e-5
MIN_LR = 0.0
LABEL_SMOOTHING = 0.1
TRAIN_INTERPOLATION = "random"
COLOR_JITTER = 0.4
HFLIP = 0.5
BATCH_LOG_INTERVAL = 10  # batches between loss read-backs (each one syncs the GPU)


@dataclass(frozen=True)
class EpochResult:
    """What timm logs per epoch, plus throughput. Losses are means over images; accuracies in %."""

    epoch: int
    train_loss: float
    eval_loss: float
    eval_top1: float
    eval_top5: float
    lr: float
    train_images: int
    train_seconds: float

    @property
    def images_per_s(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds > 0 else 0.0


@dataclass
class Recipe:
    """A model with its loaders, optimizer and schedule, ready for ``run_epochs``."""

    model: torch.nn.Module
    train_loader: object
    eval_loader: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    device: torch.device
    epochs: int
    input_size: tuple[int, int, int]
    num_classes: int
    precision: str = "fp32"
    ranks: Ranks = Ranks()  # this process among the run's (a world of one without torchrun)
    eval_images: int | None = None  # this rank's share of the validation set (its loader pads to equal shares)

    def autocast(self):
        """bf16 autocast in fast mode; a no-op context in the study's fp32."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def kernels(self):
        """The kernels a step may use. bf16 on a CPU leaves oneDNN out, forward and backward: torch 2.14's oneDNN
        bf16 convolution backward returns NaN gradients within a few steps (seen on a Xeon with and without AMX,
        the loss NaN from the first epoch on), while torch's own bf16 kernels train as fp32 does."""
        if self.precision == "bf16" and self.device.type == "cpu":
            return torch.backends.mkldnn.flags(enabled=False)
        return contextlib.nullcontext()


def build_recipe(cfg: TrainConfig, data: ImageData, device: torch.device, ranks: Ranks | None = None) -> Recipe:
    """Model, loaders, optimizer and scheduler exactly as timm train.py builds them for this config.

    Several ranks (torchrun): each trains on its share of every epoch's shuffled images (``per_process_batch_size``
    a step; DDP averages the gradients, so a step sees the global ``batch_size``) and evaluates its share of the
    validation set, summed over the ranks: the whole set, once. Seeds as in timm train.py: ``seed + rank`` for a
    rank's augmentations, rank 0's initial weights everywhere (DDP), the shuffle's seed ``seed`` on every rank.
    """
    ranks = ranks or Ranks()
    device = rank_device(device, ranks)
    random_seed(cfg.seed, ranks.rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    model = create_model(cfg.model, data.num_classes, cfg.img_size).to(device)
    data_cfg = resolve_data_config({"img_size": cfg.img_size} if cfg.img_size else {}, model=model)
    channels_last = cfg.mode == "fast"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.resolved_data_path == "gpu":
        train_loader, eval_loader = _device_loaders(cfg, data, data_cfg, device, channels_last, ranks)
    else:
        train_loader, eval_loader = _timm_loaders(cfg, data, data_cfg, device, ranks)
    optimizer = create_optimizer_v2(
        model, opt="sgd", lr=cfg.base_lr, weight_decay=WEIGHT_DECAY, momentum=MOMENTUM
    )
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=cfg.epochs, warmup_epochs=WARMUP_EPOCHS, warmup_lr=WARMUP_LR,
        min_lr=MIN_LR, updates_per_epoch=len(train_loader),
    )
    model = data_parallel(model, device, ranks)
    if cfg.compile:
        model = torch.compile(model)
    return Recipe(model, train_loader, eval_loader, optimizer, scheduler, device, cfg.epochs,
                  tuple(data_cfg["input_size"]), data.num_classes, cfg.precision, ranks,
                  len(range(ranks.rank, len(data.eval), ranks.world_size)))


def _timm_loaders(cfg: TrainConfig, data: ImageData, data_cfg: dict, device: torch.device, ranks: Ranks):
    """timm's own loaders: PIL transforms in worker processes, normalisation in the prefetcher; with several ranks,
    timm's distributed samplers (the training one shuffled with the run's seed, reseeded each epoch)."""
    common = dict(
        input_size=data_cfg["input_size"], batch_size=cfg.per_process_batch_size, mean=data_cfg["mean"],
        std=data_cfg["std"], num_workers=cfg.workers, device=device, use_prefetcher=True,
        distributed=ranks.distributed,
    )
    train = create_loader(data.train, is_training=True, hflip=HFLIP, color_jitter=COLOR_JITTER,
                          interpolation=TRAIN_INTERPOLATION, **common)
    if ranks.distributed:
        train.sampler.seed = cfg.seed  # torch's DistributedSampler shuffles with seed 0 unless told
    evaluation = create_loader(data.eval, is_training=False, interpolation=data_cfg["interpolation"],
                               crop_pct=data_cfg["crop_pct"], **common)
    return train, evaluation


def _device_loaders(cfg: TrainConfig, data: ImageData, data_cfg: dict, device: torch.device, channels_last: bool,
                    ranks: Ranks):
    """The same transforms done batch-wise on the device (``eemlflow.training.device_data``), the images held there:
    refused in one line when they would take more than half of the device's free memory (the model needs the rest)."""
    needed = data.train.images.nbytes + data.eval.images.nbytes
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        if needed > free / 2:
            raise EemlflowError(f"data_path=gpu would keep {needed / 2**30:.2f} GiB of images on {device}, which has "
                                f"{free / 2**30:.2f} GiB of {total / 2**30:.2f} GiB free (at most half is used for "
                                "them): use data_path=cpu (timm's loader)")
    common = dict(
        batch_size=cfg.per_process_batch_size, input_size=tuple(data_cfg["input_size"]), mean=data_cfg["mean"],
        std=data_cfg["std"], crop_pct=data_cfg["crop_pct"], device=device, seed=cfg.seed,
        channels_last=channels_last, shard=(ranks.rank, ranks.world_size),
    )
    train = DeviceLoader(data.train.images, data.train.labels, is_training=True, hflip=HFLIP,
                         color_jitter=COLOR_JITTER, **common)
    evaluation = DeviceLoader(data.eval.images, data.eval.labels, is_training=False,
                              eval_interpolation=data_cfg["interpolation"], **common)
    return train, evaluation


BatchCallback = Callable[[int, int, float | None], None]  # (batch index, batches, loss or None)


def train_loss_fn() -> torch.nn.Module:
    """timm train.py's training loss without mixup: cross-entropy with label smoothing 0.1."""
    return LabelSmoothingCrossEntropy(smoothing=LABEL_SMOOTHING)


def train_step(recipe: Recipe, loss_fn: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimisation step (forward under the recipe's precision, backward, SGD); returns the loss."""
    with recipe.kernels():
        with recipe.autocast():
            loss = loss_fn(recipe.model(x), y)
        recipe.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        recipe.optimizer.step()
    return loss


@torch.no_grad()
def eval_step(recipe: Recipe, x: torch.Tensor) -> torch.Tensor:
    """One evaluation forward pass under the recipe's precision; fp32 logits."""
    with recipe.kernels(), recipe.autocast():
        return recipe.model(x).float()


def run_epochs(recipe: Recipe, on_batch: BatchCallback | None = None, start_epoch: int = 0) -> Iterator[EpochResult]:
    """Train and evaluate epoch by epoch, yielding after each; the schedule steps once per epoch.

    ``start_epoch`` > 0 continues a run restored from a checkpoint written after that many epochs.
    """
    loss_fn = train_loss_fn().to(recipe.device)
    eval_loss_fn = torch.nn.CrossEntropyLoss().to(recipe.device)
    updates = start_epoch * len(recipe.train_loader)
    for epoch in range(start_epoch, recipe.epochs):
        lr = _mean_lr(recipe.optimizer)
        loss, images, seconds, updates = _train_epoch(recipe, loss_fn, updates, on_batch)
        eval_loss, top1, top5 = _evaluate(recipe, eval_loss_fn)
        recipe.scheduler.step(epoch + 1)
        yield EpochResult(epoch, loss, eval_loss, top1, top5, lr, images, seconds)


def _mean_lr(optimizer: torch.optim.Optimizer) -> float:
    lrs = [group["lr"] for group in optimizer.param_groups]
    return sum(lrs) / len(lrs)


def _train_epoch(recipe: Recipe, loss_fn, updates: int, on_batch: BatchCallback | None):
    recipe.model.train()
    sampler = getattr(recipe.train_loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):  # a distributed sampler: this epoch's shuffle
        sampler.set_epoch(updates // max(len(recipe.train_loader), 1))
    total = torch.zeros((), device=recipe.device)
    images = 0
    batches = len(recipe.train_loader)
    start = time.perf_counter()
    for i, (x, y) in enumerate(recipe.train_loader):
        loss = train_step(recipe, loss_fn, x, y)
        updates += 1
        recipe.scheduler.step_update(num_updates=updates)
        total += loss.detach() * x.shape[0]
        images += x.shape[0]
        if on_batch is not None:
            shown = loss.item() if (i + 1) % BATCH_LOG_INTERVAL == 0 or i + 1 == batches else None
            on_batch(i + 1, batches, shown)
    if recipe.device.type == "cuda":
        torch.cuda.synchronize(recipe.device)
    seconds = maximum(time.perf_counter() - start, recipe.device, recipe.ranks)
    loss_sum, images = summed([total.item(), float(images)], recipe.device, recipe.ranks)
    return (loss_sum / images if images else float("nan")), int(images), seconds, updates


@torch.no_grad()
def _evaluate(recipe: Recipe, loss_fn) -> tuple[float, float, float]:
    recipe.model.eval()
    loss_sum = top1_sum = top5_sum = torch.zeros((), device=recipe.device)
    n = 0
    k = min(5, recipe.num_classes)
    left = recipe.eval_images if recipe.ranks.distributed else None
    for x, y in recipe.eval_loader:
        if left is not None:  # a distributed sampler pads the last shares with repeated images: not counted
            x, y = x[:left], y[:left]
            left -= x.shape[0]
            if x.shape[0] == 0:
                continue
        out = eval_step(recipe, x)
        acc1, acc5 = accuracy(out, y, topk=(1, k))
        b = x.shape[0]
        loss_sum = loss_sum + loss_fn(out, y) * b
        top1_sum = top1_sum + acc1 * b
        top5_sum = top5_sum + acc5 * b
        n += b
    loss, top1, top5, n = summed([float(loss_sum), float(top1_sum), float(top5_sum), float(n)], recipe.device,
                                 recipe.ranks)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    return loss / n, top1 / n, top5 / n
