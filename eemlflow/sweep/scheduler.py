"""Running a grid's pending cells, one per slot (a GPU, or the machine) at a time, each in its own process.

The child run is created here and handed over through ``MLFLOW_RUN_ID``, exactly as ``mlflow run`` hands its run
to the entry point; a crash or out-of-memory in one cell cannot take the sweep down. Failed cells are retried;
Ctrl-C or SIGTERM stops the running cells (they end KILLED with their energy) and starts no new one.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path

from mlflow.entities import Metric, Run, RunTag
from mlflow.tracking import MlflowClient

from eemlflow.measure.idle import IDLE_ENV
from eemlflow.measure.projection import projection_error_pct
from eemlflow.measure.units import WH_PER_KWH
from eemlflow.store.liveness import staleness
from eemlflow.store.schema import (
    ATTEMPT_TAG,
    CELL_TAG,
    EMISSIONS_METRIC,
    ENERGY_METRIC,
    ERROR_TAG,
    FORECAST,
    PARENT_RUN_TAG,
    STATUS_TAG,
    STOPPED_TAG,
)
from eemlflow.store.status import FAILED, FINISHED, KILLED, RUNNING
from eemlflow.store.writer import RetryingWrites, now_ms
from eemlflow.sweep.bookkeeping import cell_states, has_checkpoint, log_cell_forecast
from eemlflow.sweep.executors import Executor
from eemlflow.sweep.forecast import CellForecast
from eemlflow.sweep.grid import Cell, Grid
from eemlflow.sweep.idle_process import slot_baselines
from eemlflow.sweep.local_executor import LocalExecutor
from eemlflow.sweep.slots import Slot, claim, release, slots_needed
from eemlflow.sweep.tally import QuietReporter, SweepReporter, SweepView, Tally, counted

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 2.0  # how often a run trained by another live process is looked at
CLOSE_WAIT_S = 30.0  # how long a stopped cell's process may take to close its run before the sweep does


class Sweep:
    """Runs the pending cells of a grid under one parent run, one per slot at a time."""

    def __init__(self, client: MlflowClient, grid: Grid, experiment_id: str, parent_id: str, tracking_uri: str,
                 retries: int = 1, gpus: Sequence[str] = (), reporter: SweepReporter | None = None,
                 skip_running: bool = False, forecasts: dict[str, CellForecast] | None = None,
                 budget_kwh: float | None = None, executor: Executor | None = None) -> None:
        """``forecasts``: cell id -> its forecast (logged on its run, scored when it finishes, refined as cells
        finish); ``budget_kwh``: the whole grid's energy, done cells included: no cell starts whose forecast
        would cross it."""
        self.client, self.grid, self.experiment_id, self.parent_id = client, grid, experiment_id, parent_id
        self.store = RetryingWrites(client)  # the sweep's own writes, retried like a training's
        self.tracking_uri, self.retries, self.skip_running = tracking_uri, retries, skip_running
        self.forecasts, self.budget_kwh = forecasts or {}, budget_kwh
        self.spent_before_kwh = 0.0  # energy of the grid's cells finished by earlier invocations
        self.executor = executor or LocalExecutor(gpus)
        self.slots = [Slot(gpu) for gpu in self.executor.slots]
        self.reporter = reporter or QuietReporter()
        self.logs = Path(tempfile.mkdtemp(prefix="eemlflow-sweep-"))
        self.idle: dict[str | None, str] = {}  # slot -> the idle baseline measured there (``idle_process``)

    def run(self) -> Tally:
        """Train the grid's pending cells (retrying failed ones), wait for those a live process trains elsewhere;
        what happened, counted."""
        tally = Tally(total=len(self.grid.cells))
        pending, watched = self._sort_cells(tally)
        self.reporter.note(f"sweep {self.grid.name}: {counted(len(pending) + len(watched), 'cell')} to train, "
                           f"{len(self.slots)} at a time ({self.executor.describe()})")
        attempts: Counter = Counter()
        if self.executor.checks_data_here:  # the slots are this machine's (a cluster's cells measure their own)
            self.idle = slot_baselines([s.gpu for s in self.slots], [c for c, _ in pending], self.reporter.note)
        self.reporter.begin(self._view(tally, pending))
        try:
            last_watch = 0.0
            while pending or watched or any(s.process for s in self.slots):
                for slot in self.slots:
                    if slot.free and pending:
                        if not claim(self.slots, slot, slots_needed(pending[0][0], self.executor.per_gpu)):
                            continue  # the next cell waits for enough free GPUs
                        cell, resume = pending.popleft()
                        if not self._within_budget(cell, tally):
                            release(slot)
                            continue
                        attempts[cell.cell_id] += 1
                        self._start(slot, cell, attempts[cell.cell_id], resume)
                    elif slot.process is not None and slot.process.poll() is not None:
                        cell, status = self._collect(slot, tally)
                        if status == "STOPPED":
                            tally.stopped.append(cell.config.run_name)  # its own budget: a retry would stop again
                        elif status != FINISHED:
                            if attempts[cell.cell_id] <= self.retries:
                                tally.retried += 1
                                pending.append((cell, self._resumable(slot.last_run_id)))
                            else:
                                tally.failed.append(cell.config.run_name)
                if watched and time.time() - last_watch > WATCH_INTERVAL_S:
                    last_watch = time.time()
                    self._watch(watched, pending, tally)
                self.reporter.update(self._view(tally, pending))
                time.sleep(0.2)
        except KeyboardInterrupt:
            self._interrupt(tally)
            raise
        finally:
            self.reporter.end()
            shutil.rmtree(self.logs, ignore_errors=True)  # every log is attached to its run by now
            if tally.forecast_measured_kwh > 0:
                error = projection_error_pct(tally.forecast_kwh, tally.forecast_measured_kwh)
                self.store.log_batch(self.parent_id, metrics=[
                    Metric(FORECAST.grid_error_pct, error, now_ms(), 0)])
        return tally

    def _sort_cells(self, tally: Tally) -> tuple[deque, dict[str, tuple[Cell, str]]]:
        """The grid's cells by their state in the store: done ones counted, those a live process trains elsewhere
        watched (run id), the rest pending (with the run to resume, if any); a stale run with no checkpoint is
        ended FAILED and trained anew."""
        states = cell_states(self.client, self.experiment_id)
        pending: deque = deque()
        watched: dict[str, tuple[Cell, str]] = {}
        for cell in self.grid.cells:
            state = states.get(cell.cell_id)
            if state is not None and state.state == "done":
                tally.skipped += 1
                self.spent_before_kwh += state.energy_kwh
            elif state is not None and state.state == "running":
                if self.skip_running:
                    tally.left_running += 1
                else:
                    watched[cell.cell_id] = (cell, state.run_id)
                    self.reporter.note(f"{cell.config.run_name}: run {state.run_id} is being trained by a live "
                                       "process; waiting for it (--skip-running leaves it)")
            else:
                if state is not None and state.state == "failed" and \
                        self.client.get_run(state.run_id).info.status == RUNNING:  # stale, nothing to resume
                    self._end(state.run_id, FAILED, "stale: its process is gone and left no checkpoint here")
                pending.append((cell, state.run_id if state is not None and state.state == "resumable" else None))
        return pending, watched

    def _forecast_kwh(self, cell: Cell) -> float:
        """The cell's forecast energy in kWh, as calibrated (0 without a forecast)."""
        forecast = self.forecasts.get(cell.cell_id)
        return forecast.energy_kwh if forecast else 0.0

    def _within_budget(self, cell: Cell, tally: Tally) -> bool:
        """Whether ``cell`` may start under the grid's budget: done + running + its own forecast stay within it."""
        if self.budget_kwh is None:
            return True
        ratio = tally.forecast_ratio
        running = sum(self._forecast_kwh(s.cell) for s in self.slots if s.cell is not None)
        committed = self.spent_before_kwh + tally.energy_kwh + ratio * (running + self._forecast_kwh(cell))
        if committed <= self.budget_kwh:
            return True
        tally.over_budget.append(cell.config.run_name)
        self.reporter.note(f"{cell.config.run_name}: not started: with its forecast "
                           f"{ratio * self._forecast_kwh(cell):.4g} kWh the grid would reach {committed:.4g} kWh, over "
                           f"the budget of {self.budget_kwh:g} kWh")
        return False

    def _start(self, slot: Slot, cell: Cell, attempt: int, resume: str | None = None) -> None:
        """A training process for ``cell``: in a new child run, or continuing run ``resume`` from its checkpoint."""
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_EXPERIMENT_ID": self.experiment_id}
        if slot.gpu in self.idle:
            env[IDLE_ENV] = self.idle[slot.gpu]
        command = cell.command()
        if resume:
            self.store.log_batch(resume, tags=[RunTag(ATTEMPT_TAG, str(attempt)),
                                               RunTag(PARENT_RUN_TAG, self.parent_id)])
            command += ["--resume", resume]
            run_id = resume
        else:
            run_id = self.store.create_run(self.experiment_id, run_name=cell.config.run_name, tags={
                PARENT_RUN_TAG: self.parent_id, CELL_TAG: cell.cell_id, ATTEMPT_TAG: str(attempt),
            }).info.run_id
            env["MLFLOW_RUN_ID"] = run_id
        if cell.cell_id in self.forecasts:
            log_cell_forecast(self.store, run_id, self.forecasts[cell.cell_id])
        slot.log_path = str(self.logs / f"{cell.config.run_name}-{cell.cell_id}-{attempt}.log")
        slot.process = self.executor.start(command, env, slot.log_path, run_id, slot.gpus,
                                           processes=cell.config.nproc_per_node)
        slot.cell, slot.run_id, slot.started, slot.resumed = cell, run_id, time.time(), bool(resume)
        if resume:
            self.reporter.note(f"{cell.config.run_name}: resuming run {resume} from its checkpoint")

    def _resumable(self, run_id: str) -> str | None:
        """``run_id`` when its checkpoint is here (the next attempt continues it), else None (train anew)."""
        return run_id if run_id and has_checkpoint(self.client.get_run(run_id)) else None

    def _watch(self, watched: dict, pending: deque, tally: Tally) -> None:
        """Cells a live process trains elsewhere (e.g. a sweep killed before its child): count them once done."""
        for cell_id, (cell, run_id) in list(watched.items()):
            run = self.client.get_run(run_id)
            if run.info.status == RUNNING and staleness(run) is None:
                continue
            del watched[cell_id]
            if run.info.status == FINISHED:
                tally.done += 1
                tally.energy_kwh += run.data.metrics.get(ENERGY_METRIC, 0.0)
                tally.emissions_kg += run.data.metrics.get(EMISSIONS_METRIC, 0.0)
                self.reporter.note(f"{cell.config.run_name}: FINISHED by the process that was training it")
            else:
                pending.append((cell, self._resumable(run_id)))

    def _collect(self, slot: Slot, tally: Tally) -> tuple[Cell, str]:
        """A child process ended: its run's status (a run it could not close is FAILED) and its energy."""
        cell, run_id = slot.cell, slot.run_id
        lost = slot.process.lost()  # a lost Ray worker's training may still be stopping itself (eemlflow.parent)
        run = self._await_close(run_id) if lost else self.client.get_run(run_id)
        status = run.info.status
        if status == RUNNING:
            status = FAILED
            self._end(run_id, status, f"training process exited with code {slot.process.poll()}: "
                                      f"{slot.process.tail()}")
        self._attach_log(slot)
        resumed = " (resumed)" if slot.resumed else ""
        line = f"{cell.config.run_name}: {status}{resumed} in {time.time() - slot.started:.0f} s"
        if status == FINISHED:
            measured = run.data.metrics.get(ENERGY_METRIC, 0.0)
            tally.done += 1
            tally.resumed += slot.resumed
            tally.durations.append(time.time() - slot.started)
            tally.energy_kwh += measured
            tally.emissions_kg += run.data.metrics.get(EMISSIONS_METRIC, 0.0)
            line += f", {measured * WH_PER_KWH:.3f} Wh"
            forecast = self.forecasts.get(cell.cell_id)
            if forecast is not None and measured > 0 and not slot.resumed:  # a resumed run measured only its rest
                error = projection_error_pct(forecast.energy_kwh, measured)
                self.store.log_batch(run_id, metrics=[Metric(FORECAST.error_pct, error, now_ms(), 0)])
                tally.forecast_kwh += forecast.energy_kwh
                tally.forecast_measured_kwh += measured
                line += f" (forecast {forecast.energy_kwh * WH_PER_KWH:.3f} Wh, {error:+.0f} %)"
        elif run.data.tags.get(STOPPED_TAG):
            status = "STOPPED"
            line += f": stopped by its {run.data.tags[STOPPED_TAG]}"
        elif lost:  # its output was on the worker: not attached
            line += f" ({slot.process.tail()}); its output was lost with its Ray worker"
        else:
            line += f" ({slot.process.tail()}); its output: {Path(slot.log_path).name} in the run's artifacts"
        self.reporter.note(line)
        slot.last_run_id = run_id
        slot.cell, slot.process, slot.run_id = None, None, ""
        release(slot)
        return cell, status

    def _interrupt(self, tally: Tally) -> None:
        """Ctrl-C or SIGTERM: no new cells; running ones get SIGTERM (which a child handles even when it was
        started with SIGINT ignored) and end KILLED with their energy logged."""
        self.reporter.note("interrupted: stopping running cells (they end KILLED); rerun the command to resume")
        busy = [s for s in self.slots if s.process is not None]
        for slot in busy:
            slot.process.terminate()
        for slot in busy:
            if not slot.process.wait(timeout=120):
                slot.process.kill()
            if self._await_close(slot.run_id).info.status == RUNNING:
                self._end(slot.run_id, KILLED, "the sweep was stopped and the training process did not close its run")
            self._attach_log(slot)

    def _await_close(self, run_id: str) -> Run:
        """The run once its process closed it; still RUNNING when its process is known gone without closing it, or
        after ``CLOSE_WAIT_S``: a remote task may report before its training process has closed the run."""
        deadline = time.time() + CLOSE_WAIT_S
        while (run := self.client.get_run(run_id)).info.status == RUNNING and staleness(run) is None \
                and time.time() < deadline:
            time.sleep(0.5)
        return run

    def _end(self, run_id: str, status: str, error: str) -> None:
        """End a run its training process could not close, with eemlflow's status and the reason as tags."""
        self.store.log_batch(run_id, tags=[RunTag(STATUS_TAG, status), RunTag(ERROR_TAG, error)])
        self.store.set_terminated(run_id, status)

    def _attach_log(self, slot: Slot) -> None:
        """The child's output, as an artifact of its run (the sweep's temporary folder goes at the end)."""
        if slot.process is not None and slot.process.attaches_log:
            return  # a Ray task attached it from its node
        try:
            self.store.log_artifact(slot.run_id, slot.log_path)
        except Exception as e:  # an artifact store out of reach must not stop the sweep
            log.warning("could not attach %s to run %s: %s", slot.log_path, slot.run_id, e)

    def _view(self, tally: Tally, pending: deque) -> SweepView:
        left = None
        if self.forecasts:
            left = tally.forecast_ratio * (sum(self._forecast_kwh(c) for c, _ in pending)
                                           + sum(self._forecast_kwh(s.cell) for s in self.slots if s.cell))
        return SweepView(self.grid.name, tally, len(pending), sum(1 for s in self.slots if s.process is not None),
                         len(self.slots), left)

