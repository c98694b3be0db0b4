"""The study's CSV rebuilt from a tracking store: rows collected through ``schema`` and written atomically.

Rows come from ``MlflowClient.search_runs`` pages of active runs (params, tags and latest metrics in one call per
page of up to 50,000 runs, no per-run requests), are decoded column by column through ``eemlflow.store.schema``,
and are written atomically: a temporary file beside the target, renamed over it once complete.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient

from eemlflow.atomic import atomic_write
from eemlflow.errors import EemlflowError
from eemlflow.store import convert, efficiency, schema
from eemlflow.store.connect import search_all_runs
from eemlflow.store.liveness import staleness
from eemlflow.store.status import ALL, FINISHED

DEFAULT_OUTPUT = Path("Dataset/image_classification/training_energy.csv")
STATUSES = ALL
PROGRESS_EVERY = 500  # runs between progress reports


def collect_rows(client: MlflowClient, experiments: Sequence[str] | None = None, statuses: Iterable[str] = (FINISHED,),
                 with_extras: bool = False, tags: Sequence[str] = (), where: str = "",
                 progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """One row per eemlflow run (trained or ingested) in ``experiments`` (names; all when None); ``with_extras``
    appends the extra fields and the efficiency columns (``eemlflow.store.efficiency``).

    Runs without the ``eemlflow.row`` tag (a sweep's parent, other projects' runs) are not rows.
    Values are typed per the schema: ints as ints, missing as None; ordered by timestamp, then run_id.
    ``tags``: run tags added as columns of their own name; ``where``: an MLflow filter ANDed to the search;
    ``progress(n)``: told the number of runs read so far, every ``PROGRESS_EVERY`` runs and at the end.
    """
    names = experiment_names(client, experiments)
    columns = schema.COLUMNS + (schema.EXTRAS if with_extras else ())
    status_list = [s.upper() for s in statuses]
    for s in status_list:
        if s not in STATUSES:
            raise EemlflowError(f"unknown run status {s!r}: choose among {', '.join(STATUSES)}")
    rows, seen = [], 0
    if names:
        now = time.time()
        query = f"tags.`{schema.ROW_TAG}` LIKE '%'" + (f" AND {where}" if where else "")
        for seen, run in enumerate(search_all_runs(client, list(names), query), start=1):
            if run.info.status in status_list and staleness(run, now=now) is None:  # a stale run is no row
                row = convert.read_run(run, names[run.info.experiment_id], columns)
                row.update({tag: run.data.tags.get(tag) for tag in tags})
                rows.append(row)
            if progress and seen % PROGRESS_EVERY == 0:
                progress(seen)
    if progress:
        progress(seen)
    frame = pd.DataFrame(rows, columns=[c.name for c in columns] + list(tags), dtype=object)
    if len(frame):
        order = sorted(range(len(rows)), key=lambda i: (rows[i]["timestamp"] or "", rows[i]["run_id"] or ""))
        frame = frame.iloc[order].reset_index(drop=True)
    return efficiency.add_efficiency(frame) if with_extras else frame


def experiment_names(client: MlflowClient, wanted: Sequence[str] | None) -> dict[str, str]:
    """Experiment id -> name, for the named experiments (an unknown name is an error) or all of them."""
    if wanted:
        found = {}
        for name in wanted:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise EemlflowError(f"no experiment named {name!r} on the tracking server")
            found[exp.experiment_id] = exp.name
        return found
    found, token = {}, None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        found.update({e.experiment_id: e.name for e in page})
        token = page.token
        if not token:
            return found


def to_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells as the CSV writes them: exact float reprs, integers without '.0', empty for missing."""
    return frame.apply(lambda col: col.map(convert.format_value)) if len(frame) else frame


def write_csv(frame: pd.DataFrame, output: str | Path) -> None:
    """Write atomically: a failure midway leaves any previous file untouched. ``-`` writes to stdout."""
    text = to_text(frame)
    if str(output) == "-":
        text.to_csv(sys.stdout, index=False)
        return
    atomic_write(Path(output), lambda f: text.to_csv(f, index=False))


# What makes two rows the same training (the study's columns that set it up).
CELL_COLUMNS = ("model", "dataset", "epochs", "batch_size", "lr")


def duplicate_cells(frame: pd.DataFrame) -> list[str]:
    """One line per set of settings that more than one row shares (a cell trained twice); with a ``status``
    column (``--with-extras``), FINISHED rows only; with a ``seed`` column, repeats with other seeds are no
    duplicates."""
    if "status" in frame:
        frame = frame[frame["status"] == FINISHED]
    keys = [*CELL_COLUMNS, *(["seed"] if "seed" in frame else [])]
    found = []
    for settings, group in frame.groupby(keys, dropna=False):
        if len(group) > 1:
            label = ", ".join(f"{k}={v}" for k, v in zip(keys, settings))
            found.append(f"{len(group)} FINISHED runs share {label}: {', '.join(group['run_id'])}")
    return found
