"""One training run end to end: config -> data + model -> loop, measured by CodeCarbon, logged to MLflow.

Everything a user can get wrong is checked before a run is opened, so bad input leaves no run behind.
Once the run is open it always ends with a status: FINISHED, FAILED (the error as a tag) or KILLED (Ctrl-C or
SIGTERM), and in every case with the energy measured up to that point.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from eemlflow.errors import EemlflowError
from eemlflow.measure.energy import EnergyMonitor
from eemlflow.measure.gpu_ids import measured_gpu_ids
from eemlflow.measure.idle import IdlePower, dynamic_energy_kwh, given_baseline, measure_idle
from eemlflow.measure.projection import Budgets, Projection, Projector
from eemlflow.measure.readings import EnergyReading, EnergyResult
from eemlflow.resume import ResumePoint, prepare_resume
from eemlflow.store import connect
from eemlflow.store.environment import environment
from eemlflow.store.liveness import HeartbeatThread
from eemlflow.store.run import DEFAULT_EXPERIMENT, TrainingRun
from eemlflow.store.status import FAILED, FINISHED, KILLED, RUNNING
from eemlflow.training.checkpoint import checkpoint_path, remove_checkpoint, restore, save_checkpoint, unwrapped
from eemlflow.training.config import TrainConfig
from eemlflow.training.data import ImageData
from eemlflow.training.datasets import load_data
from eemlflow.training.models import check_model_name
from eemlflow.training.recipe import (
    EpochResult,
    Recipe,
    build_recipe,
    device_identity,
    resolve_device,
    run_epochs,
    synchronizer,
)

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """What the runner tells a progress display; the CLI passes a rich one."""

    def begin(self, cfg: TrainConfig, run_id: str, batches: int, url: str) -> None: ...
    def batch(self, index: int, batches: int, loss: float | None, energy: EnergyReading | None) -> None: ...
    def epoch(self, result: EpochResult, total: EnergyReading | None, projection: Projection | None) -> None: ...
    def end(self) -> None: ...


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that the run is closed as KILLED like on Ctrl-C."""


class BudgetReached(Exception):
    """The next epoch would take the run over a budget: it ends KILLED, resumable from its checkpoint."""

    def __init__(self, budget: str, reason: str) -> None:
        super().__init__(reason)
        self.budget = budget  # energy, emissions or time


@dataclass
class RunOutcome:
    run_id: str
    status: str
    url: str = ""  # the run's page in the MLflow UI (training view)
    epochs: list[EpochResult] = field(default_factory=list)
    energy: EnergyResult | None = None
    error: str | None = None
    unlogged: int = 0  # records the store did not take, kept in ``spool_path`` for a replay
    spool_path: str | None = None
    stopped: str | None = None  # why a budget stopped the run
    budget: str | None = None  # which: energy, emissions or time
    checkpoint: str | None = None  # where a stopped run's checkpoint is (None: it has none)
    projections: dict[int, float] = field(default_factory=dict)  # epoch (from 1) -> projected energy, kWh


def train_run(
    cfg: TrainConfig,
    *,
    tracking_uri: str | None = None,
    experiment_name: str = DEFAULT_EXPERIMENT,
    reporter: Reporter | None = None,
    system_metrics: bool = True,
) -> RunOutcome:
    """Train ``cfg`` into a new (or ``mlflow run``'s) MLflow run and return how it ended.

    Raises ``EemlflowError`` for bad input before any run is opened; KeyboardInterrupt after closing the
    run as KILLED. Any other failure during training ends the run FAILED and is returned, not raised.
    """
    check_model_name(cfg.model)
    device = resolve_device(cfg.device)
    gpu_ids = measured_gpu_ids(*device_identity(device))
    data = _load_data(cfg)
    client = connect(tracking_uri)
    point = prepare_resume(client, cfg, device.type) if cfg.resume else None

    run = TrainingRun.open(client, cfg, experiment_name, system_metrics=system_metrics, gpu_ids=gpu_ids)
    outcome = RunOutcome(run.run_id, RUNNING, run.url)
    progress = _Progress(point)
    ckpt = checkpoint_path(cfg.checkpoint_dir, run.run_id)
    trained: Callable[[], None] | None = None  # logs the trained model (log_model=true)
    monitor: EnergyMonitor | None = None
    heartbeat: HeartbeatThread | None = None
    idle: IdlePower | None = None  # the devices' idle baseline (idle_baseline_s)
    interrupted: BaseException | None = None
    try:
        with _sigterm_raises():
            run.log_segment(point.segment if point else 1, socket.gethostname(), os.getpid(),
                            datetime.now(timezone.utc).isoformat(timespec="seconds"))
            recipe = build_recipe(cfg, data, device)
            trained = lambda: run.log_model(unwrapped(recipe.model), next(iter(recipe.eval_loader))[0],  # noqa: E731
                                            cfg.register_as)
            if point is not None:
                restore(recipe, point.checkpoint)
                run.log_lost_energy(point.lost_energy_kwh)
            run.log_setup(cfg, data, str(device), recipe.input_size, environment(device), inputs=point is None)
            if cfg.idle_baseline_s:  # the sweep's, measured on these devices before its first cell, or our own
                idle = (given_baseline(gpu_ids, cfg.pue, cfg.idle_baseline_s)
                        or measure_idle(cfg.idle_baseline_s, cfg.country, gpu_ids, cfg.pue, synchronizer(device)))
            monitor = EnergyMonitor(
                cfg.country, country_given=cfg.country_given,
                measure_power_secs=cfg.measure_power_secs, pue=cfg.pue, gpu_ids=gpu_ids,
                synchronize=synchronizer(device),
            )
            monitor.start()
            heartbeat = HeartbeatThread(client.tracking_uri, run.run_id, progress.beat(monitor)).start()
            if reporter:
                reporter.begin(cfg, run.run_id, len(recipe.train_loader), run.url)
            _train_epochs(cfg, recipe, run, monitor, progress, outcome, ckpt, heartbeat, reporter)
        outcome.status = FINISHED
    except BudgetReached as e:
        outcome.status, outcome.stopped, outcome.budget = KILLED, str(e), e.budget
        outcome.checkpoint = str(ckpt) if ckpt.exists() else None
    except (KeyboardInterrupt, Terminated) as e:
        outcome.status, outcome.error, interrupted = KILLED, f"interrupted by {type(e).__name__}", e
    except Exception as e:  # the run must end FAILED with the error, whatever it was
        outcome.status, outcome.error = FAILED, f"{type(e).__name__}: {e}"
        log.error("training failed:\n%s", traceback.format_exc())
    finally:
        if reporter:
            reporter.end()
        if heartbeat is not None:
            heartbeat.stop()
        _close(run, monitor, outcome, progress.earlier, trained if cfg.log_model else None, idle)
    if outcome.status == FINISHED and not cfg.keep_checkpoint:
        remove_checkpoint(ckpt)
    if interrupted is not None:
        raise KeyboardInterrupt from interrupted
    return outcome


def _load_data(cfg: TrainConfig) -> ImageData:
    """The run's dataset, checked before any run opens: a batch larger than the training set trains nothing."""
    data = load_data(cfg.dataset, cfg.data_dir, cfg.download)
    if cfg.mode == "fast" and cfg.streamed:
        log.warning("mode=fast on dataset=%s: its images stream from disk through timm's loader (the GPU data path "
                    "needs them in memory); bf16 autocast still applies", cfg.dataset)
    if cfg.batch_size > len(data.train):
        raise EemlflowError(
            f"batch_size {cfg.batch_size} is larger than the {len(data.train)} training images of {data.name}: "
            "the recipe drops the last partial batch, so nothing would train; use a smaller batch_size"
        )
    return data


def _train_epochs(cfg: TrainConfig, recipe: Recipe, run: TrainingRun, monitor: EnergyMonitor, progress: _Progress,
                  outcome: RunOutcome, ckpt: Path, heartbeat: HeartbeatThread, reporter: Reporter | None) -> None:
    """The epochs left, each in its own energy window: logged with its projection, checkpointed every
    ``checkpoint_every``, the budgets checked before the next (``BudgetReached`` stops cleanly, every epoch kept)."""
    projector = Projector(cfg.epochs, progress.epochs_done, progress.spent_before)
    budgets = Budgets(cfg.energy_budget_kwh, cfg.emissions_budget_kg, cfg.time_budget_s)

    def on_batch(i: int, n: int, loss: float | None) -> None:
        if reporter:
            reporter.batch(i, n, loss, progress.whole_run(monitor.live()))

    def save() -> None:
        save_checkpoint(ckpt, recipe, cfg, progress.epochs_done,
                        {"segments": progress.earlier + [monitor.record_so_far() or {}], "written_at": time.time()})

    monitor.begin_window("epoch")
    _check_budgets(budgets, progress.whole_run(monitor.so_far()), projector, progress.epochs_done)
    saved_at = progress.epochs_done
    for result in run_epochs(recipe, on_batch, start_epoch=progress.epochs_done):
        energy = monitor.end_window("epoch")
        total = progress.whole_run(monitor.so_far())
        projection = projector.add(energy, total) if energy is not None and total is not None else None
        run.log_epoch(result, energy, total, projection)
        outcome.epochs.append(result)
        progress.epochs_done = result.epoch + 1
        if projection is not None:
            outcome.projections[progress.epochs_done] = projection.energy_kwh
        if cfg.checkpoint_every and progress.epochs_done % cfg.checkpoint_every == 0:
            save()
            saved_at = progress.epochs_done
        heartbeat.poke()
        if reporter:
            reporter.epoch(result, total, projection)
        if progress.epochs_done < cfg.epochs:
            try:
                _check_budgets(budgets, total, projector, progress.epochs_done)
            except BudgetReached:
                if cfg.checkpoint_every and saved_at != progress.epochs_done:
                    save()  # the stop is clean: keep every epoch trained for the resume
                raise
        monitor.begin_window("epoch")


def _check_budgets(budgets: Budgets, spent: EnergyReading | None, projector: Projector, epochs_done: int) -> None:
    """Before an epoch: raise ``BudgetReached`` when what is spent plus that epoch's projection crosses a budget."""
    breach = budgets.breach(spent, projector.next_epoch())
    if breach is not None:
        raise BudgetReached(breach[0], f"{breach[1]}, after {epochs_done} of {projector.epochs} epochs")


class _Progress:
    """How far this run is (epochs done, across segments) and its earlier segments' energy records."""

    def __init__(self, point: ResumePoint | None) -> None:
        self.epochs_done = point.checkpoint.epochs_done if point else 0
        self.earlier = point.earlier_segments if point else []
        readings = [EnergyReading.from_values(s) for s in self.earlier]
        self.spent_before = sum(readings[1:], readings[0]) if readings else None  # the earlier segments' energy

    def whole_run(self, segment: EnergyReading | None) -> EnergyReading | None:
        """This process's energy so far plus the earlier segments': the run's total so far."""
        if segment is None or self.spent_before is None:
            return segment
        return segment + self.spent_before

    def beat(self, monitor: EnergyMonitor):
        """What the heartbeat reports: epochs done and this process's energy so far (kWh)."""
        def state() -> tuple[int, float | None]:
            live = monitor.live()
            return self.epochs_done, live.energy_kwh if live else None
        return state


def _close(run: TrainingRun, monitor: EnergyMonitor | None, outcome: RunOutcome,
           earlier_segments: Sequence[dict] = (), log_model: Callable[[], None] | None = None,
           idle: IdlePower | None = None) -> None:
    """Log the energy measured so far (all segments) and end the run; signals are held off until this is done.
    A finished run's model (``log_model``) is logged after the energy is measured: it is not training."""
    with _signals_ignored():
        if monitor is not None:
            outcome.energy = monitor.stop(earlier_segments)
            run.log_energy(outcome.energy)
            if idle is not None:
                run.log_idle(idle, dynamic_energy_kwh(outcome.energy, idle), outcome.energy.cpu_ram_share)
            if outcome.status == FINISHED and outcome.energy.reading is not None:
                run.log_projection_errors(outcome.energy.reading.energy_kwh, outcome.projections,
                                          resumed=bool(earlier_segments))
        if outcome.status == FINISHED and log_model is not None:
            log_model()
        run.finish(outcome.status, outcome.error, outcome.stopped)
        outcome.unlogged, outcome.spool_path = run.writer.spooled, str(run.writer.spool_path)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    def handler(signum, frame):
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C while the run is being closed would leave it RUNNING: ignore signals until done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
