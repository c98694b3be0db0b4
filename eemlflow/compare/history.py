"""A trained run's per-epoch history, read back from the store: one request per metric key and run.

Ingested rows (a published CSV) have none: they keep their original run id, which the store does not know.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient

from eemlflow.store import schema

# History column -> the per-epoch metric it is read from (step = epoch number, from 1).
KEYS = {
    "top1": schema.EPOCH.eval_top1,
    "energy_kwh": schema.EPOCH.energy_kwh,
    "energy_so_far_kwh": schema.EPOCH.energy_so_far_kwh,
    "emissions_so_far_kg": schema.EPOCH.emissions_so_far_kg,
    "duration_so_far_s": schema.EPOCH.duration_so_far_s,
}
# When each epoch's figures were logged (the ``top1`` metric's timestamp), Unix seconds: an epoch's end.
LOGGED_AT = "logged_at_s"


def epoch_history(client: MlflowClient, run_id: str, columns: tuple[str, ...] = tuple(KEYS)) -> pd.DataFrame | None:
    """One row per epoch: ``epoch`` and the ``columns`` of ``KEYS`` (missing figures as NaN) and ``logged_at_s``;
    None for a run without a per-epoch top-1 (an ingested row, or a run that trained no epoch)."""
    try:
        top1 = client.get_metric_history(run_id, KEYS["top1"])
    except Exception:  # an ingested row's original run id is unknown to this store
        return None
    if not top1:
        return None
    latest = {}
    for m in top1:  # a resumed epoch logged twice: its last logging counts
        if m.step not in latest or m.timestamp >= latest[m.step].timestamp:
            latest[m.step] = m
    steps = sorted(latest)
    frame = pd.DataFrame({"epoch": steps, LOGGED_AT: [latest[s].timestamp / 1000.0 for s in steps]})
    for column in columns:
        if column == "top1":
            values = {s: latest[s].value for s in steps}
        else:
            values = {m.step: m.value for m in sorted(client.get_metric_history(run_id, KEYS[column]),
                                                         key=lambda m: m.timestamp)}
        frame[column] = [values.get(s, float("nan")) for s in steps]
    return frame
