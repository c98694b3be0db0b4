"""What a report reads from a tracking store: every FINISHED row with its efficiency figures and provenance, each
trained run's per-epoch history (one request per metric and run), and from them each run's energy to the report's
target accuracies (``compare.to_target``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient

from eemlflow.compare.history import epoch_history
from eemlflow.compare.to_target import add_to_target, default_targets
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
    """The rows (study columns, extras, efficiency, provenance tags, ``family``, each target's columns), the trained
    runs' per-epoch histories and the targets of each dataset (top-1, %)."""

    runs: pd.DataFrame
    experiments: list[str]
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)  # run id -> its per-epoch history
    targets: dict[str, list[float]] = field(default_factory=dict)  # dataset -> target top-1 values
    targets_given: bool = False  # the user's targets, or picked from the data (best top-1 minus 1, 2, 5 points)


def model_family(model: str | None) -> str:
    """``resnet50`` -> ``resnet``, ``efficientnetv2_s`` -> ``efficientnetv2``, ``vit_base_patch16_224`` -> ``vit``."""
    match = re.match(r"[a-z]+(v\d)?", str(model or "").lower())
    return match.group(0) if match else "other"


def load(client: MlflowClient, experiments: Sequence[str] | None = None, where: str = "",
         progress: Callable[[int], None] | None = None, targets: Sequence[float] = ()) -> ReportData:
    """FINISHED rows of ``experiments`` (all when None) matching ``where``, with their histories and each
    dataset's energy to ``targets`` (when empty: its best top-1 minus 1, 2 and 5 points)."""
    runs = collect_rows(client, experiments, with_extras=True, tags=PROVENANCE_TAGS, where=where, progress=progress)
    runs["family"] = [model_family(m) for m in runs["model"]]
    data = ReportData(runs, list(experiments) if experiments else sorted(set(runs["experiment_name"].dropna())),
                      targets_given=bool(targets))
    trained = runs[runs[schema.ROW_TAG] == "train"]["run_id"] if schema.ROW_TAG in runs else []
    for run_id in trained:
        history = epoch_history(client, run_id)
        if history is not None:
            data.histories[run_id] = history
    for dataset, group in runs.groupby("dataset", dropna=False):
        data.targets[str(dataset)] = list(targets) or default_targets(list(pd.to_numeric(group["eval_top1"])))
    every = sorted({t for values in data.targets.values() for t in values})
    data.runs = add_to_target(runs, data.histories, every)
    return data


def curve_runs(data: ReportData, dataset: str) -> list[str]:
    """The run ids whose per-epoch curves the report draws: the dataset's cheapest Pareto runs with a history."""
    runs = data.runs
    front = runs[(runs["dataset"] == dataset) & (runs["pareto"] == True)]  # noqa: E712 (object column)
    ids = [r for r in front.sort_values("energy_consumed")["run_id"] if r in data.histories]
    return ids[:CURVES_PER_DATASET]
