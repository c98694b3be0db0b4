"""Running a grid's pending cells, one per slot (a GPU, or the machine) at a time, each in its own process.

The child run is created here and handed over through ``MLFLOW_RUN_ID``, exactly as ``mlflow run`` hands its run
to the entry point; a crash or out-of-memory in one cell cannot take the sweep down. Failed cells are retried;
Ctrl-C or SIGTERM stops the running cells (they end KILLED with their energy) and starts no new one.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from mlflow.entities import RunTag
from rich.console import Console
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient

from eemlflow.sweep.bookkeeping import cell_states
from eemlflow.measure.energy import WH_PER_KWH
from eemlflow.store.schema import (ATTEMPT_TAG, CELL_TAG, EMISSIONS_METRIC, ENERGY_METRIC, ERROR_TAG, PARENT_RUN_TAG,
                                   STATUS_TAG)
from eemlflow.sweep.grid import Cell, Grid

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """A place to run one cell at a time: one GPU (``CUDA_VISIBLE_DEVICES``), or the machine."""

    gpu: Optional[str]
    cell: Optional[Cell] = None
    run_id: str = ""
    process: Optional[subprocess.Popen] = None
    started: float = 0.0
    log_path: str = ""


@dataclass
class Tally:
    total: int
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    retried: int = 0
    energy_kwh: float = 0.0
    emissions_kg: float = 0.0
    durations: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.time)


class Sweep:
    """Runs the pending cells of a grid under one parent run, one per slot at a time."""

    def __init__(self, client: MlflowClient, grid: Grid, experiment_id: str, parent_id: str, tracking_uri: str,
                 retries: int = 1, gpus: Sequence[str] = (), console: Optional[Console] = None) -> None:
        self.client, self.grid, self.experiment_id, self.parent_id = client, grid, experiment_id, parent_id
        self.tracking_uri, self.retries = tracking_uri, retries
        self.slots = [Slot(g) for g in gpus] or [Slot(None)]
        self.console = console or Console(stderr=True)
        self.logs = Path(tempfile.mkdtemp(prefix="eemlflow-sweep-"))

    def run(self) -> Tally:
        states = cell_states(self.client, self.experiment_id)
        pending = deque(c for c in self.grid.cells if states.get(c.cell_id) != "done")
        tally = Tally(total=len(self.grid.cells), skipped=len(self.grid.cells) - len(pending))
        attempts: Counter = Counter()
        live = Live(self._table(tally, pending), console=self.console, refresh_per_second=2,
                    transient=True) if self.console.is_terminal else None
        try:
            if live:
                live.start()
            while pending or any(s.process for s in self.slots):
                for slot in self.slots:
                    if slot.process is None and pending:
                        cell = pending.popleft()
                        attempts[cell.cell_id] += 1
                        self._start(slot, cell, attempts[cell.cell_id])
                    elif slot.process is not None and slot.process.poll() is not None:
                        cell, status = self._collect(slot, tally)
                        if status != "FINISHED":
                            if attempts[cell.cell_id] <= self.retries:
                                tally.retried += 1
                                pending.append(cell)
                            else:
                                tally.failed.append(cell.config.run_name)
                if live:
                    live.update(self._table(tally, pending))
                time.sleep(0.2)
        except KeyboardInterrupt:
            self._interrupt(tally)
            raise
        finally:
            if live:
                live.stop()
            shutil.rmtree(self.logs, ignore_errors=True)  # every log is attached to its run by now
        return tally

    def _start(self, slot: Slot, cell: Cell, attempt: int) -> None:
        run = self.client.create_run(self.experiment_id, run_name=cell.config.run_name, tags={
            PARENT_RUN_TAG: self.parent_id, CELL_TAG: cell.cell_id, ATTEMPT_TAG: str(attempt),
        })
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN")}
        env.update(MLFLOW_RUN_ID=run.info.run_id, MLFLOW_TRACKING_URI=self.tracking_uri,
                   MLFLOW_EXPERIMENT_ID=self.experiment_id)
        if slot.gpu is not None:
            env.update(CUDA_VISIBLE_DEVICES=slot.gpu, CUDA_DEVICE_ORDER="PCI_BUS_ID")
        slot.log_path = str(self.logs / f"{cell.config.run_name}-{cell.cell_id}-{attempt}.log")
        with open(slot.log_path, "w") as out:
            slot.process = subprocess.Popen(cell.command(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # Ctrl-C reaches it through us only
        slot.cell, slot.run_id, slot.started = cell, run.info.run_id, time.time()

    def _collect(self, slot: Slot, tally: Tally) -> tuple[Cell, str]:
        """A child process ended: its run's status (a run it could not close is FAILED) and its energy."""
        cell, run_id = slot.cell, slot.run_id
        run = self.client.get_run(run_id)
        status = run.info.status
        if status == "RUNNING":
            status = "FAILED"
            self._end(run_id, status, f"training process exited with code {slot.process.returncode}")
        self._attach_log(slot)
        line = f"{cell.config.run_name}: {status} in {time.time() - slot.started:.0f} s"
        if status == "FINISHED":
            tally.done += 1
            tally.durations.append(time.time() - slot.started)
            tally.energy_kwh += run.data.metrics.get(ENERGY_METRIC, 0.0)
            tally.emissions_kg += run.data.metrics.get(EMISSIONS_METRIC, 0.0)
            line += f", {run.data.metrics.get(ENERGY_METRIC, 0.0) * WH_PER_KWH:.3f} Wh"
        else:
            line += f" ({_last_line(slot.log_path)}); its output: {Path(slot.log_path).name} in the run's artifacts"
        self.console.print(line, highlight=False, soft_wrap=True)
        slot.cell, slot.process, slot.run_id = None, None, ""
        return cell, status

    def _interrupt(self, tally: Tally) -> None:
        """Ctrl-C: no new cells; running ones get SIGINT and end KILLED with their energy logged."""
        self.console.print("interrupted: stopping running cells (they end KILLED); rerun the command to resume")
        busy = [s for s in self.slots if s.process is not None]
        for slot in busy:
            slot.process.send_signal(signal.SIGINT)
        for slot in busy:
            try:
                slot.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                slot.process.kill()
                slot.process.wait()
            if self.client.get_run(slot.run_id).info.status == "RUNNING":
                self._end(slot.run_id, "KILLED", "the sweep was stopped and the training process did not close its run")
            self._attach_log(slot)

    def _end(self, run_id: str, status: str, error: str) -> None:
        """End a run its training process could not close, with eemlflow's status and the reason as tags."""
        self.client.log_batch(run_id, tags=[RunTag(STATUS_TAG, status), RunTag(ERROR_TAG, error)])
        self.client.set_terminated(run_id, status)

    def _attach_log(self, slot: Slot) -> None:
        """The child's output, as an artifact of its run (the sweep's temporary folder goes at the end)."""
        try:
            self.client.log_artifact(slot.run_id, slot.log_path)
        except Exception as e:  # an artifact store out of reach must not stop the sweep
            log.warning("could not attach %s to run %s: %s", slot.log_path, slot.run_id, e)

    def _table(self, tally: Tally, pending: deque) -> Table:
        running = sum(1 for s in self.slots if s.process is not None)
        elapsed = time.time() - tally.started
        eta = "n/a"
        if tally.durations:
            per_cell = sum(tally.durations) / len(tally.durations)
            eta = f"{per_cell * (len(pending) + running) / len(self.slots) / 60:.1f} min"
        table = Table(title=f"sweep {self.grid.name}")
        for name in ("cells", "done", "running", "failed", "pending", "elapsed", "ETA", "energy"):
            table.add_column(name, justify="right")
        table.add_row(str(tally.total), str(tally.done + tally.skipped), str(running), str(len(tally.failed)),
                      str(len(pending)), f"{elapsed / 60:.1f} min", eta,
                      f"{tally.energy_kwh * WH_PER_KWH:.3f} Wh ({tally.energy_kwh:.4g} kWh)")
        return table


def _last_line(path: str) -> str:
    lines = [l for l in Path(path).read_text(errors="replace").splitlines() if l.strip()]
    return lines[-1][:300] if lines else "no output"
