"""What a report reads from a tracking store: every FINISHED row with its efficiency figures and provenance, and
the per-epoch history of the runs on a Pareto front (the only per-run requests a report makes)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient

from eemlflow.store import schema
from eemlflow.store.export import collect_rows

# Provenance tags read beside the study's columns (absent on rows ingested from a CSV).
PROVENANCE_TAGS = (schema.ROW_TAG, schema.ENERGY_TAG_PREFIX + "cpu_method", schema.ENERGY_TAG_PREFIX + "gpu_method",
                   schema.ENERGY_TAG_PREFIX + "ram_method", schema.ENERGY_TAG_PREFIX + "country_source",
                   schema.ENERGY_SUSPECT_TAG, schema.ENERGY_FAILURE_TAG, schema.SYNTHETIC_TAG, "versions.eemlflow",
                   "versions.torch", "versions.timm", "versions.mlflow", "gpu.name")
CURVES_PER_DATASET = 8  # Pareto runs whose per-epoch history is drawn, per dataset


@dataclass
class ReportData:
    """The rows (study columns, extras, efficiency, provenance tags, ``family``) and Pareto runs' histories."""

    runs: pd.DataFrame
    experiments: list[str]
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)  # run id -> step, top1, energy per epoch


def model_family(model: str | None) -> str:
    """``resnet50`` -> ``resnet``, ``efficientnetv2_s`` -> ``efficientnetv2``, ``vit_base_patch16_224`` -> ``vit``."""
    match = re.match(r"[a-z]+(v\d)?", str(model or "").lower())
    return match.group(0) if match else "other"


def load(client: MlflowClient, experiments: Sequence[str] | None = None, where: str = "",
         progress: Callable[[int], None] | None = None) -> ReportData:
    """FINISHED rows of ``experiments`` (all when None) matching ``where``, with the Pareto runs' histories."""
    runs = collect_rows(client, experiments, with_extras=True, tags=PROVENANCE_TAGS, where=where, progress=progress)
    runs["family"] = [model_family(m) for m in runs["model"]]
    data = ReportData(runs, list(experiments) if experiments else sorted(set(runs["experiment_name"].dropna())))
    for _, group in runs[runs["pareto"] == True].groupby("dataset", dropna=False):  # noqa: E712 (object column)
        for run_id in group.sort_values("energy_consumed")["run_id"].head(CURVES_PER_DATASET):
            history = _history(client, run_id)
            if history is not None:
                data.histories[run_id] = history
    return data


def _history(client: MlflowClient, run_id: str) -> pd.DataFrame | None:
    """Per-epoch top-1 (%) and energy (kWh) of a trained run; None for an ingested row (it has no history)."""
    try:
        top1 = client.get_metric_history(run_id, schema.EPOCH.eval_top1)
        energy = client.get_metric_history(run_id, schema.EPOCH.energy_kwh)
    except Exception:  # an ingested row keeps its original run id, which the store does not know
        return None
    if not top1:
        return None
    frame = pd.DataFrame({"epoch": [m.step for m in top1], "top1": [m.value for m in top1]})
    energies = {m.step: m.value for m in energy}
    frame["energy_kwh"] = [energies.get(step) for step in frame["epoch"]]
    return frame.sort_values("epoch").reset_index(drop=True)
