"""Where a sweep's cells run: the executors, as one registry (MLflow's project backends and Lightning's
accelerators keep one each).

An executor starts ``eemlflow.train`` for a cell and returns a ``Job`` the scheduler polls, stops and reads, the
same for all: ``poll()`` (the exit code, None while running), ``terminate()`` (SIGTERM: the run ends KILLED with
its energy), ``wait(timeout)``, ``kill()``, ``tail()`` (the output's last line), ``lost()`` (whether the job
ended without seeing its training process end, as a Ray task whose worker or node was lost: the training may
still be closing its run) and ``attaches_log`` (whether the output is already on the run, as a Ray task attaches it
from its node). Adding one is its module and one line in ``REGISTRY``; the command line's ``--executor`` choices
are the registry's names.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from eemlflow.errors import EemlflowError


class Job(Protocol):
    """One cell's training process, wherever it runs."""

    attaches_log: bool

    def poll(self) -> int | None: ...
    def terminate(self) -> None: ...
    def wait(self, timeout: float) -> bool: ...
    def kill(self) -> None: ...
    def tail(self) -> str: ...
    def lost(self) -> bool: ...


@dataclass(frozen=True)
class ExecutorOptions:
    """What the command line gives an executor; each takes what applies to it and refuses what cannot."""

    tracking_uri: str
    gpus: Sequence[str] = ()  # local: one slot per GPU id (CUDA_VISIBLE_DEVICES per cell)
    ray_address: str = ""  # ray: `auto` or HOST:PORT; empty starts a local Ray
    ray_cpus_per_cell: float = 1.0


class Executor(Protocol):
    """Runs cells: ``slots`` says how many at once (each entry the GPU a cell gets, or None: the executor places
    it), ``checks_data_here`` whether the data must be on the machine that runs the sweep. ``start`` gets the cell's
    GPUs (``gpu``: one, or several comma-separated for a cell of several ``processes``)."""

    slots: list[str | None]
    checks_data_here: bool
    per_gpu: bool  # whether a slot is one GPU (a cell of several processes then takes one slot each)

    @classmethod
    def from_options(cls, options: ExecutorOptions) -> Executor: ...
    def start(self, command: Sequence[str], env: dict[str, str], log_path: str, run_id: str,
              gpu: str | None, processes: int = 1) -> Job: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


REGISTRY: dict[str, str] = {  # name -> "module:class", imported when chosen (Ray only for its users)
    "local": "eemlflow.sweep.local_executor:LocalExecutor",
    "ray": "eemlflow.sweep.ray_executor:RayExecutor",
}


def executor_class(name: str) -> type:
    """The executor class registered as ``name``; an ``EemlflowError`` listing the known ones otherwise."""
    if name not in REGISTRY:
        raise EemlflowError(f"unknown executor {name!r}: choose one of {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_executor(name: str, options: ExecutorOptions) -> Executor:
    """The executor ``name``, made from the command line's options (it refuses those it cannot honour)."""
    return executor_class(name).from_options(options)


def child_env(env: dict[str, str]) -> dict[str, str]:
    """A cell's environment: this process's without ``mlflow run``'s run variables (each cell gets its own run),
    plus ``env``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN")}, **env}


def last_line(text: str) -> str:
    """The last non-empty line of a process's output (at most 300 characters), for a one-line report."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
