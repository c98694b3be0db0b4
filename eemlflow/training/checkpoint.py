"""The full training state at an epoch boundary, written atomically, so that a killed run resumes exactly.

A checkpoint holds the model, optimizer and scheduler states, the number of epochs done, every random number
generator the next epochs draw from (torch's, numpy's, Python's, CUDA's, and the device data path's own
generators) and the settings and the kind of device (``cpu``/``cuda``) it was trained with: a run moves between
GPUs (another index, fewer or more visible) but not between the CPU and a GPU, whose generators and numerics
differ. Only the training device's CUDA generator is kept, and only a CUDA training touches CUDA at all. Written
after an epoch ends, it is the state "ready to start the next epoch": timm's loader draws its shuffle (and, with
workers=0, its augmentations) from the restored generators, so on the CPU with workers=0 a resumed run repeats
the uninterrupted one bit for bit. With loader worker processes the workers' own generators are not captured, so
a resumed run is statistically, not bitwise, the same. The caller may add its own picklable ``extra`` (the runner
keeps the energy measured so far there).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eemlflow.atomic import atomic_write
from eemlflow.errors import EemlflowError
from eemlflow.training.config import RESULT, TrainConfig, settings_of
from eemlflow.training.device_data import DeviceLoader
from eemlflow.training.recipe import Recipe

FORMAT = 1
# Settings that change what a run computes or measures: resuming with any other value would splice two different
# runs. ``device`` is checked as the kind of device the run lands on (``device_change``): auto and cuda on a GPU
# host are the same device.
RESULT_SETTINGS = tuple(k for k in settings_of(RESULT) if k != "device")


@dataclass(frozen=True)
class Checkpoint:
    """What was read back: the epochs done, the settings trained with, the caller's extra, the raw state."""

    epochs_done: int
    settings: dict[str, Any]
    extra: dict[str, Any]
    state: dict[str, Any]


def save_checkpoint(path: Path, recipe: Recipe, cfg: TrainConfig, epochs_done: int, extra: dict[str, Any]) -> None:
    """Write the state after ``epochs_done`` epochs; a temporary file renamed over the previous one."""
    state = {
        "format": FORMAT,
        "epochs_done": epochs_done,
        "settings": dataclasses.asdict(cfg),
        "device_type": recipe.device.type,
        "extra": extra,
        "model": unwrapped(recipe.model).state_dict(),
        "optimizer": recipe.optimizer.state_dict(),
        "scheduler": recipe.scheduler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(recipe.device) if recipe.device.type == "cuda" else None,
            "loaders": [loader.generator.get_state() if isinstance(loader, DeviceLoader) else None
                        for loader in (recipe.train_loader, recipe.eval_loader)],
        },
    }
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint; a missing or unreadable file is one clear error."""
    if not path.exists():
        raise EemlflowError(f"no checkpoint at {path}: the run cannot be resumed here (was it trained with "
                            "checkpoint_every=0, on another machine, or finished and its checkpoint removed?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise EemlflowError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise EemlflowError(f"{path} is not an eemlflow checkpoint of format {FORMAT}")
    return Checkpoint(state["epochs_done"], state["settings"], state["extra"], state)


def differing_settings(checkpoint: Checkpoint, cfg: TrainConfig) -> list[str]:
    """``name: checkpoint's -> now`` for each result-changing setting that differs."""
    now = dataclasses.asdict(cfg)
    return [f"{k}: {checkpoint.settings.get(k)!r} -> {now[k]!r}" for k in RESULT_SETTINGS
            if checkpoint.settings.get(k) != now[k]]


def device_change(checkpoint: Checkpoint, device_type: str) -> str | None:
    """Why the checkpoint cannot continue on a ``device_type`` device (None: it can). Checkpoints from before the
    device was recorded were written by CPU or CUDA runs alike: their CUDA generators say which."""
    trained_on = checkpoint.state.get("device_type") or ("cuda" if checkpoint.state["rng"].get("cuda") else None)
    if trained_on is None or trained_on == device_type:
        return None
    return (f"it was trained on {trained_on} and would continue on {device_type} here: its generators and numerics "
            f"are {trained_on}'s; resume it where it trained (device={trained_on}), or start a new run")


def restore(recipe: Recipe, checkpoint: Checkpoint) -> None:
    """Put the model, optimizer, scheduler and every generator back as they were when it was written."""
    state = checkpoint.state
    unwrapped(recipe.model).load_state_dict(state["model"])
    recipe.optimizer.load_state_dict(state["optimizer"])
    recipe.scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    cuda = rng.get("cuda")
    if cuda is not None and recipe.device.type == "cuda":  # one device's state (older checkpoints: every device's)
        torch.cuda.set_rng_state(cuda[0] if isinstance(cuda, (list, tuple)) else cuda, recipe.device)
    for loader, generator_state in zip((recipe.train_loader, recipe.eval_loader), rng["loaders"]):
        if isinstance(loader, DeviceLoader) and generator_state is not None:
            loader.generator.set_state(generator_state)


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module under ``torch.compile``'s and DistributedDataParallel's wrappers, whose state dict has the plain
    parameter names (a checkpoint of several ranks resumes in one process, and the other way round)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


def remove_checkpoint(path: Path) -> None:
    """Remove a finished run's checkpoint and its folder if nothing else is in it."""
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:  # the folder holds other files (a spool of unsent records): keep them
        pass

