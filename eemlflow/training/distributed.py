"""Data-parallel training across the processes started by PyTorch's launcher (``torchrun``): this rank's device,
the process group, the DistributedDataParallel wrap, the sums over ranks, and what ranks tell each other.

Every function is the identity for a world of one (``Ranks()``, a process started without torchrun). NCCL on GPUs,
gloo on the CPU. The launcher also hosts a key-value store (``MASTER_ADDR:MASTER_PORT``) that outlives any one
rank: ``side_store`` connects to it, so that what a rank must tell the others (its energy, its error) survives the
rank's death.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from eemlflow.training.ranks import Ranks

# How long a collective (a gradient all-reduce, an evaluation sum) may wait for a late rank before failing.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """A rank's own device: ``cuda:LOCAL_RANK`` (made current) on GPUs; the CPU stays the CPU."""
    if device.type != "cuda" or not ranks.distributed:
        return device
    own = torch.device("cuda", ranks.local_rank)
    torch.cuda.set_device(own)
    return own


def join(ranks: Ranks, device: torch.device) -> None:
    """Join the run's process group (NCCL on GPUs, gloo on the CPU); nothing for a world of one."""
    if ranks.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT,
                                device_id=device if device.type == "cuda" else None)


def leave() -> None:
    """Leave the process group: a rank still waiting in a collective with this one fails at once instead of
    waiting for the time-out (how the others learn that this rank stopped)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a group already broken by a dead rank: nothing left to close
            pass


def data_parallel(model: torch.nn.Module, device: torch.device, ranks: Ranks) -> torch.nn.Module:
    """The model wrapped in DistributedDataParallel (gradients averaged over the ranks at each step), which also
    gives every rank rank 0's initial weights; the model itself for a world of one."""
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def summed(values: list[float], device: torch.device, ranks: Ranks) -> list[float]:
    """``values`` added up over every rank (each rank gets the sums)."""
    if not ranks.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def maximum(value: float, device: torch.device, ranks: Ranks) -> float:
    """The largest of the ranks' ``value``."""
    if not ranks.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def from_leader(value: Any, ranks: Ranks) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object: the run id, a resume point)."""
    if not ranks.distributed:
        return value
    box = [value if ranks.leader else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def side_store(timeout: timedelta) -> Any:
    """A client of the launcher's key-value store (``set``/``get``/``check``/``wait``), keyed apart for this
    launch (``TORCHELASTIC_RUN_ID`` and restart): it keeps what a rank wrote after the rank is gone."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout)
    prefix = f"eemlflow/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}/"
    return dist.PrefixStore(prefix, store)


def post_error(store: Any, rank: int, text: str) -> None:
    """Tell the other ranks why this one failed (rank 0 names it in the run's error)."""
    try:
        store.set(f"error/r{rank}", text[:2000])
    except Exception:  # the store is gone with the launcher: nobody is left to tell
        pass


def others_errors(store: Any, world_size: int, rank: int, wait_s: float = 3.0) -> list[str]:
    """``rank N: error`` for each other rank that said why it failed, waiting up to ``wait_s`` for one to say."""
    keys = [f"error/r{r}" for r in range(world_size) if r != rank]
    deadline = time.monotonic() + wait_s
    while True:
        try:
            found = [f"rank {key.removeprefix('error/r')}: {store.get(key).decode()}" for key in keys
                     if store.check([key])]
        except Exception:  # the store is gone with the launcher
            return []
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
