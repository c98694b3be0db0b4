"""Cells as processes on this machine, one per slot: a GPU each (``--gpus``), or the machine."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from eemlflow.sweep.executors import ExecutorOptions, child_env, last_line


class LocalJob:
    """A training process on this machine, its output in a file the scheduler attaches to the run."""

    attaches_log = False

    def __init__(self, process: subprocess.Popen, log_path: str) -> None:
        self.process, self.log_path = process, log_path

    def poll(self) -> int | None:
        return self.process.poll()

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> bool:
        try:
            self.process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def tail(self) -> str:
        return last_line(Path(self.log_path).read_text(errors="replace"))

    def lost(self) -> bool:
        return False  # the training is this job's own process: its exit was seen


class LocalExecutor:
    """One process a cell on this machine; ``gpus`` are the slots (``CUDA_VISIBLE_DEVICES`` per cell)."""

    checks_data_here = True  # the cells read the data here

    def __init__(self, gpus: Sequence[str] = ()) -> None:
        self.gpus = list(gpus)
        self.slots: list[str | None] = list(self.gpus) or [None]
        self.per_gpu = bool(self.gpus)  # without --gpus, a cell of several CPU processes has the machine

    @classmethod
    def from_options(cls, options: ExecutorOptions) -> LocalExecutor:
        return cls(options.gpus)

    def start(self, command: Sequence[str], env: dict[str, str], log_path: str, run_id: str,
              gpu: str | None, processes: int = 1) -> LocalJob:
        gpu_env = {"CUDA_VISIBLE_DEVICES": gpu, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"} if gpu is not None else {}
        full = child_env({**env, **gpu_env})
        with open(log_path, "w") as out:
            process = subprocess.Popen(list(command), env=full, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # Ctrl-C reaches it through the sweep only
        return LocalJob(process, log_path)

    def describe(self) -> str:
        """Where the cells run, for the sweep's first line."""
        return f"a process on GPU {', '.join(self.gpus)} each" if self.gpus else "a process on this machine each"

    def close(self) -> None:
        """Nothing to release."""
