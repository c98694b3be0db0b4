"""One training run end to end: config -> data + model -> loop, measured by CodeCarbon, logged to MLflow.

Everything a user can get wrong is checked before a run is opened, so bad input leaves no run behind.
Once the run is open it always ends with a status: FINISHED, FAILED (the error as a tag) or KILLED (Ctrl-C or
SIGTERM), and in every case with the energy measured up to that point.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from eemlflow.errors import EemlflowError
from eemlflow.measure.energy import EnergyMonitor
from eemlflow.measure.gpu_ids import measured_gpu_ids
from eemlflow.measure.idle import IdlePower, given_baseline, measure_idle
from eemlflow.measure.projection import Budgets, Projector
from eemlflow.measure.ranks import RankMeter
from eemlflow.measure.readings import EnergyReading
from eemlflow.resume import ResumePoint, prepare_resume
from eemlflow.runner.closing import close_run, signals_ignored, sigterm_raises
from eemlflow.runner.outcome import BudgetReached, Reporter, RunOutcome, Terminated
from eemlflow.runner.ranks import (
    COLLECTIVE_WAIT,
    PEER_ENDED,
    FollowerRun,
    collective_failed,
    peer_lost,
    stopped_by_peer,
)
from eemlflow.runner.stopping import AgreedStop
from eemlflow.store import connect
from eemlflow.store.environment import environment
from eemlflow.store.liveness import HeartbeatThread
from eemlflow.store.run import DEFAULT_EXPERIMENT, TrainingRun
from eemlflow.store.status import FAILED, FINISHED, KILLED, RUNNING
from eemlflow.training.checkpoint import remove_checkpoint, restore, save_checkpoint, unwrapped
from eemlflow.training.config import TrainConfig, checkpoint_path
from eemlflow.training.data import ImageData
from eemlflow.training.datasets import load_data
from eemlflow.training.devices import device_identity, resolve_device, synchronizer
from eemlflow.training.distributed import (
    from_leader,
    join,
    leave,
    others_errors,
    post_error,
    rank_device,
    side_store,
)
from eemlflow.training.model_names import check_model_name
from eemlflow.training.ranks import Ranks
from eemlflow.training.recipe import BATCH_LOG_INTERVAL, Recipe, build_recipe, run_epochs

log = logging.getLogger(__name__)


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

    Started by torchrun (``Ranks.from_environment``), this is one rank of the run: rank 0 opens, logs and closes
    the MLflow run, the others train beside it and hand it their energy (``RankMeter``).
    """
    ranks = Ranks.from_environment()
    check_model_name(cfg.model)
    device = rank_device(resolve_device(cfg.device), ranks)
    gpu_ids = measured_gpu_ids(*device_identity(device))
    data = _load_data(cfg)
    join(ranks, device)
    store = side_store(COLLECTIVE_WAIT) if ranks.distributed else None
    client = connect(tracking_uri) if ranks.leader else None
    point = prepare_resume(client, cfg, device.type) if cfg.resume and client is not None else None
    run = (TrainingRun.open(client, cfg, experiment_name, system_metrics=system_metrics, gpu_ids=gpu_ids)
           if client is not None else None)
    run_id, point = from_leader((run.run_id if run else "", point), ranks)
    run = run or FollowerRun(run_id)
    outcome = RunOutcome(run.run_id, RUNNING, run.url)
    progress = _Progress(point)
    ckpt = checkpoint_path(cfg.checkpoint_dir, run.run_id)
    trained: Callable[[], None] | None = None  # logs the trained model (log_model=true)
    monitor: EnergyMonitor | RankMeter | None = None
    heartbeat: HeartbeatThread | None = None
    idle: IdlePower | None = None  # the devices' idle baseline (idle_baseline_s)
    interrupted: BaseException | None = None
    by_peer = False  # the run failed because another rank ended: rank 0 names that rank's error
    try:
        with sigterm_raises():
            run.log_segment(point.segment if point else 1, socket.gethostname(), os.getpid(),
                            datetime.now(timezone.utc).isoformat(timespec="seconds"))
            recipe = build_recipe(cfg, data, device, ranks)
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
                synchronize=synchronizer(device), measure_host=ranks.host_leader,
            )
            if store is not None:
                monitor = RankMeter(monitor, store, ranks.rank, ranks.world_size, ranks.host_leader)
            monitor.start()
            if client is not None:
                heartbeat = HeartbeatThread(client.tracking_uri, run.run_id, progress.beat(monitor)).start()
            if reporter and ranks.leader:
                reporter.begin(cfg, run.run_id, len(recipe.train_loader), run.url)
            # A stop signal on one rank stops them all at the same batch (a GPU's CPU side may run batches ahead).
            stop = AgreedStop(store, lead=1 if device.type == "cpu" else BATCH_LOG_INTERVAL + 2)
            with stop.signals():
                _train_epochs(cfg, recipe, run, monitor, progress, outcome, ckpt, heartbeat, reporter, stop)
        outcome.status = FINISHED
    except BudgetReached as e:
        outcome.status, outcome.stopped, outcome.budget = KILLED, str(e), e.budget
        outcome.checkpoint = str(ckpt) if ckpt.exists() else None
    except (KeyboardInterrupt, Terminated) as e:
        if stopped_by_peer(e, ranks):  # torchrun stopped the ranks left after one ended
            outcome.status, outcome.error, by_peer = FAILED, PEER_ENDED, True
        else:
            outcome.status, outcome.error, interrupted = KILLED, f"interrupted by {type(e).__name__}", e
    except Exception as e:  # the run must end FAILED with the error, whatever it was
        outcome.status, outcome.error = FAILED, f"{type(e).__name__}: {e}"
        by_peer = collective_failed(e, ranks)
        if by_peer:
            outcome.error = peer_lost(e)
        if not ranks.leader:  # one line: its own error (rank 0 names it in the run's error) or a broken collective
            log.error("rank %d: training failed: %s", ranks.rank, outcome.error.splitlines()[0][:300])
            log.debug("rank %d:\n%s", ranks.rank, traceback.format_exc())
        elif not by_peer:  # rank 0's own failure; a lost peer is the command's one line
            log.error("training failed:\n%s", traceback.format_exc())
        if store is not None and not by_peer:  # its own error, for rank 0 to name
            post_error(store, ranks.rank, outcome.error)
    finally:  # a stop signal now (torchrun's, after another rank ended) must not cut the closing short
        with signals_ignored():
            if reporter:
                reporter.end()
            if heartbeat is not None:
                heartbeat.stop()
            leave()  # a rank still waiting in a collective with this one fails now, and stops measuring too
            if store is not None and ranks.leader and by_peer:
                said = others_errors(store, ranks.world_size, ranks.rank)
                outcome.error = f"{'; '.join(said)} ({outcome.error})" if said else outcome.error
            close_run(run, monitor, outcome, progress.earlier, trained if cfg.log_model else None, idle)
    if outcome.status == FINISHED and not cfg.keep_checkpoint and ranks.leader:
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


def _train_epochs(cfg: TrainConfig, recipe: Recipe, run: TrainingRun, monitor: EnergyMonitor | RankMeter,
                  progress: _Progress, outcome: RunOutcome, ckpt: Path, heartbeat: HeartbeatThread | None,
                  reporter: Reporter | None, stop: AgreedStop) -> None:
    """The epochs left, each in its own energy window: logged with its projection, checkpointed every
    ``checkpoint_every``, the budgets checked before the next (``BudgetReached`` stops cleanly, every epoch kept);
    a stop signal taken at the batch the ranks agree on (``stop``)."""
    projector = Projector(cfg.epochs, progress.epochs_done, progress.spent_before)
    budgets = Budgets(cfg.energy_budget_kwh, cfg.emissions_budget_kg, cfg.time_budget_s)

    def on_batch(i: int, n: int, loss: float | None) -> None:
        stop.at_batch()
        if reporter:
            reporter.batch(i, n, loss, progress.whole_run(monitor.live()))

    def save() -> None:
        if not recipe.ranks.leader:  # rank 0 writes the run's one checkpoint; every rank resumes from it
            return
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
        if heartbeat is not None:
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

    def beat(self, monitor: EnergyMonitor | RankMeter):
        """What the heartbeat reports: epochs done and this process's energy so far (kWh)."""
        def state() -> tuple[int, float | None]:
            live = monitor.live()
            return self.epochs_done, live.energy_kwh if live else None
        return state


