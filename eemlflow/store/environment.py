"""What a reader needs to reproduce a run, as tags: the versions of everything that trains and measures it, and the
GPUs it was given. One job: ``environment(device)``; the run's records put it on the run (``store.run``).
"""

from __future__ import annotations

import os
import platform
from typing import Any

import mlflow

import eemlflow
from eemlflow.measure.nvml import open_nvml


def environment(device: Any) -> dict[str, str]:
    """Versions and hardware that a reader needs to reproduce the run, as tags."""
    import codecarbon
    import timm
    import torch

    env = {
        "versions.eemlflow": eemlflow.__version__,
        "versions.torch": torch.__version__,
        "versions.timm": timm.__version__,
        "versions.mlflow": mlflow.__version__,
        "versions.codecarbon": codecarbon.__version__,
        "versions.python": platform.python_version(),
        "versions.cuda": str(torch.version.cuda or ""),
    }
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:  # which GPUs the launcher gave (a sweep: one a cell)
        env["gpu.cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    if getattr(device, "type", "") == "cuda":
        env["gpu.name"] = torch.cuda.get_device_name(device)
        env["gpu.count_visible"] = str(torch.cuda.device_count())
        try:
            env["versions.gpu_driver"] = str(open_nvml().nvmlSystemGetDriverVersion())
        except Exception as e:  # NVML is optional: the run still trains without it
            env["versions.gpu_driver"] = f"unknown ({type(e).__name__})"
    return env
