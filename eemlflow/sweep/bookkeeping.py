"""The sweep's records in MLflow: which cells are done, the parent run, and its totals over the children."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient

from eemlflow.store import experiment_id_for, search_all_runs
from eemlflow.store.liveness import staleness
from eemlflow.store.schema import (
    CELL_TAG,
    EMISSIONS_METRIC,
    ENERGY_METRIC,
    FORECAST,
    LOST_ENERGY_METRIC,
    SEGMENTS_TAG,
    SWEEP,
    SWEEP_TAG,
)
from eemlflow.store.status import FINISHED, RUNNING
from eemlflow.store.writer import RetryingWrites, now_ms
from eemlflow.sweep.forecast import CellForecast, grid_total, to_csv
from eemlflow.sweep.grid import Grid
from eemlflow.training.config import CHECKPOINT_DIR, checkpoint_path

FORECAST_ARTIFACT = "forecast/forecast.csv"
FORECAST_WHERE_TAG = "eemlflow.forecast_calibrated_on"  # the GPU and process the forecast was calibrated in

@dataclass(frozen=True)
class CellState:
    """Where a cell stands: ``done``, ``running`` (a live process trains it), ``resumable`` (its latest run was
    stopped or lost and its checkpoint is here), ``failed`` (stopped, no checkpoint); ``run_id`` is that run."""

    state: str
    run_id: str = ""
    energy_kwh: float = 0.0  # a done cell's measured energy


def cell_states(client: MlflowClient, experiment_id: str) -> dict[str, CellState]:
    """cell_id -> its state, from its runs in the experiment; a cell without runs is absent (pending)."""
    runs: dict[str, list] = {}
    for run in search_all_runs(client, [experiment_id], f"tags.`{CELL_TAG}` LIKE '%'"):
        runs.setdefault(run.data.tags[CELL_TAG], []).append(run)
    states: dict[str, CellState] = {}
    for cell_id, cell_runs in runs.items():
        done = [r for r in cell_runs if r.info.status == FINISHED]
        latest = max(cell_runs, key=lambda r: r.info.start_time or 0)
        if done:
            states[cell_id] = CellState("done", done[0].info.run_id, done[0].data.metrics.get(ENERGY_METRIC, 0.0))
        elif latest.info.status == RUNNING and staleness(latest) is None:
            states[cell_id] = CellState("running", latest.info.run_id)
        elif has_checkpoint(latest):
            states[cell_id] = CellState("resumable", latest.info.run_id)
        else:
            states[cell_id] = CellState("failed", latest.info.run_id)
    return states


def has_checkpoint(run) -> bool:
    """Whether the run's checkpoint is on this machine (where its params say it was written)."""
    return checkpoint_path(run.data.params.get("checkpoint_dir") or CHECKPOINT_DIR, run.info.run_id).exists()


def open_parent(client: MlflowClient, grid: Grid, experiment: str | None) -> tuple[str, str]:
    """(experiment id, parent run id): ``mlflow run``'s run if launched so, else this grid's earlier parent
    (reopened, so a resumed sweep stays one parent), else a new one."""
    client = RetryingWrites(client)
    if os.environ.get("MLFLOW_RUN_ID"):
        run = client.get_run(os.environ["MLFLOW_RUN_ID"])
        return run.info.experiment_id, run.info.run_id
    experiment_id = experiment_id_for(client, experiment or grid.experiment)
    earlier = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{grid.sweep_id}'",
                                 max_results=1)
    if earlier:
        client.update_run(earlier[0].info.run_id, status=RUNNING)
        return experiment_id, earlier[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"sweep-{grid.name}", tags={SWEEP_TAG: grid.sweep_id})
    return experiment_id, run.info.run_id


def close_parent(client: MlflowClient, grid: Grid, experiment_id: str, parent_id: str, status: str) -> None:
    """The parent's totals cover every FINISHED cell of the grid, from this and earlier invocations."""
    client = RetryingWrites(client)
    from mlflow.entities import Metric

    ids = {c.cell_id for c in grid.cells}
    done = [r for r in search_all_runs(client, [experiment_id], "attributes.status = 'FINISHED'")
            if r.data.tags.get(CELL_TAG) in ids]
    finished = {r.data.tags[CELL_TAG] for r in done}
    now = now_ms()
    totals = {
        SWEEP.cells: len(ids),
        SWEEP.done: len(finished),
        SWEEP.failed_or_pending: len(ids) - len(finished),
        SWEEP.energy_kwh: sum(r.data.metrics.get(ENERGY_METRIC, 0.0) for r in done),
        SWEEP.emissions_kg: sum(r.data.metrics.get(EMISSIONS_METRIC, 0.0) for r in done),
        SWEEP.resumed: sum(1 for r in done if int(r.data.tags.get(SEGMENTS_TAG) or 1) > 1),
        SWEEP.lost_energy_kwh: sum(r.data.metrics.get(LOST_ENERGY_METRIC, 0.0) for r in done),
    }
    client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in totals.items()])
    client.set_terminated(parent_id, status)


def log_forecast(client: MlflowClient, parent_id: str, forecasts: list[CellForecast], where: str) -> None:
    """The grid's forecast on its parent run: totals as metrics, every cell's in ``forecast/forecast.csv``, where
    it was calibrated as a tag."""
    client = RetryingWrites(client)
    from mlflow.entities import Metric

    total, now = grid_total(forecasts), now_ms()
    client.log_batch(parent_id, metrics=[Metric(FORECAST.grid_energy_kwh, total.energy_kwh, now, 0),
                                         Metric(FORECAST.grid_duration_s, total.duration_s, now, 0),
                                         Metric(FORECAST.grid_emissions_kg, total.emissions_kg, now, 0)])
    client.set_tag(parent_id, FORECAST_WHERE_TAG, where)
    client.log_text(parent_id, to_csv(forecasts), FORECAST_ARTIFACT)


def log_cell_forecast(store: RetryingWrites, run_id: str, forecast: CellForecast) -> None:
    """What was predicted for a cell, on its run (``store``: the sweep's retrying writes), before it trains."""
    from mlflow.entities import Metric

    now = now_ms()
    store.log_batch(run_id, metrics=[Metric(FORECAST.energy_kwh, forecast.energy_kwh, now, 0),
                                     Metric(FORECAST.duration_s, forecast.duration_s, now, 0),
                                     Metric(FORECAST.emissions_kg, forecast.emissions_kg, now, 0)])
