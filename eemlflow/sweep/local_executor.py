"""Where a cell's training process runs: here (``LocalLauncher``) or on a Ray cluster (``ray_executor``).

A launcher starts ``eemlflow.train`` for a cell and returns a handle the scheduler polls, stops and reads, the
same for both: ``poll()`` (the exit code, None while running), ``terminate()`` (SIGTERM: the run ends KILLED
with its energy), ``wait(timeout)``, ``kill()``, ``tail()`` (the output's last line) and ``attaches_log`` (whether
the output is already on the run, as a Ray task attaches it from its node).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Optional, Protocol, Sequence


class Handle(Protocol):
    attaches_log: bool

    def poll(self) -> Optional[int]: ...
    def terminate(self) -> None: ...
    def wait(self, timeout: float) -> bool: ...
    def kill(self) -> None: ...
    def tail(self) -> str: ...


class Launcher(Protocol):
    name: str
    capacity: int  # cells that can run at once

    def start(self, command: Sequence[str], env: dict[str, str], log_path: str, run_id: str,
              gpu: Optional[str]) -> Handle: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def base_env() -> dict[str, str]:
    """This process's environment without ``mlflow run``'s run variables (each cell gets its own run)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN")}


class LocalProcess:
    """A training process on this machine, its output in a file the scheduler attaches to the run."""

    attaches_log = False

    def __init__(self, process: subprocess.Popen, log_path: str) -> None:
        self.process, self.log_path = process, log_path

    def poll(self) -> Optional[int]:
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


class LocalLauncher:
    """One process a cell on this machine; ``gpus`` are the slots (``CUDA_VISIBLE_DEVICES`` per cell)."""

    name = "local"

    def __init__(self, gpus: Sequence[str] = ()) -> None:
        self.gpus = list(gpus)
        self.capacity = len(self.gpus) or 1

    def start(self, command: Sequence[str], env: dict[str, str], log_path: str, run_id: str,
              gpu: Optional[str]) -> LocalProcess:
        full = {**base_env(), **env}
        if gpu is not None:
            full.update(CUDA_VISIBLE_DEVICES=gpu, CUDA_DEVICE_ORDER="PCI_BUS_ID")
        with open(log_path, "w") as out:
            process = subprocess.Popen(list(command), env=full, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # Ctrl-C reaches it through the sweep only
        return LocalProcess(process, log_path)

    def describe(self) -> str:
        """Where the cells run, for the sweep's first line."""
        return f"a process on GPU {', '.join(self.gpus)} each" if self.gpus else "a process on this machine each"

    def close(self) -> None:
        """Nothing to release."""
