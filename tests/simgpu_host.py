"""The simulated GPU host (``tests/simgpu``): write its description and give the environment of a process that
runs on it. SIMULATED HARDWARE only: the real CodeCarbon, MLflow and eemlflow run on top (see simgpu/pynvml.py)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from conftest import REPO, cli_env

SIMGPU = REPO / "tests" / "simgpu"
UUIDS = ("GPU-5d9c1a7e-0000-4000-8000-000000000000", "GPU-5d9c1a7e-0000-4000-8000-000000000001")
MIGS = ("MIG-7a1b2c3d-0000-4000-8000-0000000000a0", "MIG-7a1b2c3d-0000-4000-8000-0000000000a1")


def write_host(folder: Path, watts: Sequence[float] = (100.0, 300.0), name: str = "NVIDIA H200",
               processes: dict[int, list[int]] | None = None, mig_on: int | None = None) -> Path:
    """A host with one GPU per entry of ``watts``; ``processes``: GPU index -> pids computing on it;
    ``mig_on``: the GPU split into the two MIG slices ``MIGS``."""
    devices = [{"name": name, "uuid": UUIDS[i] if i < len(UUIDS) else f"GPU-5d9c1a7e-0000-4000-8000-{i:012d}",
                "watts": w, "utilization": 50, "memory_total_mb": 143771, "memory_used_mb": 2048,
                "temperature_c": 45, "processes": (processes or {}).get(i, []),
                **({"mig": list(MIGS)} if mig_on == i else {})} for i, w in enumerate(watts)]
    path = folder / "simgpu.json"
    path.write_text(json.dumps({"t0": time.time() - 3600.0, "driver": "550.54.15", "devices": devices}))
    return path


def host_env(host: Path, tracking_uri: str | None = None, ledger: Path | None = None) -> dict[str, str]:
    """A command line's environment on the simulated host: its pynvml and nvidia-smi first."""
    env = cli_env(tracking_uri)
    env["PYTHONPATH"] = f"{SIMGPU}{os.pathsep}{env['PYTHONPATH']}"
    env["PATH"] = f"{SIMGPU}{os.pathsep}{env['PATH']}"
    env["EEMLFLOW_SIMGPU"] = str(host)
    if ledger is not None:
        env["EEMLFLOW_HOST_LEDGER"] = str(ledger)
    return env
