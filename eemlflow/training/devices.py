"""Which torch device a run trains on, how NVML knows it, and how to wait for its queued work: what the runner,
the forecast and the idle baseline ask of a device before any recipe is built."""

from __future__ import annotations

from collections.abc import Callable

import torch

from eemlflow.errors import EemlflowError


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when there is one; asking for ``cuda`` without one is an error with the fix."""
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "cuda":
        raise EemlflowError("device=cuda but torch sees no GPU: check nvidia-smi and the CUDA build of torch, or use "
                            "device=auto")
    return torch.device("cpu")


def device_identity(device: torch.device) -> tuple[str, int, str | None]:
    """A torch device as (type, index, UUID): the UUID is what names the same physical GPU to NVML whatever
    ``CUDA_DEVICE_ORDER`` says (None on the CPU or where torch does not report it)."""
    if device.type != "cuda":
        return device.type, 0, None
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except Exception:  # an older torch without the property: CUDA_VISIBLE_DEVICES decides
        uuid = None
    return "cuda", index, uuid


def synchronizer(device: torch.device) -> Callable[[], None] | None:
    """What waits for ``device``'s queued work (before an energy counter is read), or None on the CPU."""
    if device.type != "cuda":
        return None
    return lambda: torch.cuda.synchronize(device)
