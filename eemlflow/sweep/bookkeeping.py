"""The sweep's records in MLflow: which cells are done, the parent run, and its totals over the children."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient

from eemlflow.store import experiment_id_for, search_all_runs
from eemlflow.store.schema import CELL_TAG, EMISSIONS_METRIC, ENERGY_METRIC, SWEEP, SWEEP_TAG
from eemlflow.sweep.grid import Grid

def cell_states(client: MlflowClient, experiment_id: str) -> dict[str, str]:
    """cell_id -> "done" (a FINISHED run exists) or "failed" (only FAILED/KILLED runs); absent = pending."""
    states: dict[str, str] = {}
    for run in search_all_runs(client, [experiment_id], f"tags.`{CELL_TAG}` LIKE '%'"):
        cell_id = run.data.tags[CELL_TAG]
        if run.info.status == "FINISHED":
            states[cell_id] = "done"
        elif run.info.status in ("FAILED", "KILLED") and states.get(cell_id) != "done":
            states[cell_id] = "failed"
    return states


def open_parent(client: MlflowClient, grid: Grid, experiment: Optional[str]) -> tuple[str, str]:
    """(experiment id, parent run id): ``mlflow run``'s run if launched so, else this grid's earlier parent
    (reopened, so a resumed sweep stays one parent), else a new one."""
    if os.environ.get("MLFLOW_RUN_ID"):
        run = client.get_run(os.environ["MLFLOW_RUN_ID"])
        return run.info.experiment_id, run.info.run_id
    experiment_id = experiment_id_for(client, experiment or grid.experiment)
    earlier = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{grid.sweep_id}'",
                                 max_results=1)
    if earlier:
        client.update_run(earlier[0].info.run_id, status="RUNNING")
        return experiment_id, earlier[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"sweep-{grid.name}", tags={SWEEP_TAG: grid.sweep_id})
    return experiment_id, run.info.run_id


def close_parent(client: MlflowClient, grid: Grid, experiment_id: str, parent_id: str, status: str) -> None:
    """The parent's totals cover every FINISHED cell of the grid, from this and earlier invocations."""
    from mlflow.entities import Metric

    ids = {c.cell_id for c in grid.cells}
    done = [r for r in search_all_runs(client, [experiment_id], "attributes.status = 'FINISHED'")
            if r.data.tags.get(CELL_TAG) in ids]
    finished = {r.data.tags[CELL_TAG] for r in done}
    now = int(time.time() * 1000)
    totals = {
        SWEEP.cells: len(ids),
        SWEEP.done: len(finished),
        SWEEP.failed_or_pending: len(ids) - len(finished),
        SWEEP.energy_kwh: sum(r.data.metrics.get(ENERGY_METRIC, 0.0) for r in done),
        SWEEP.emissions_kg: sum(r.data.metrics.get(EMISSIONS_METRIC, 0.0) for r in done),
    }
    client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in totals.items()])
    client.set_terminated(parent_id, status)
