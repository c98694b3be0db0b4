"""Bringing a CSV of the study's schema (or CodeCarbon's ``emissions.csv``) into MLflow, one run per row.

The whole file is validated before anything is written. Each row keeps its original ``run_id``,
``experiment_id`` and ``timestamp`` (tags), so exporting the ingested runs gives the file back; ingesting a
file twice adds nothing, since rows are keyed by their original run id.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.entities import Metric, Param, RunStatus

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient

from eemlflow.errors import EemlflowError
from eemlflow.store import convert, efficiency, schema
from eemlflow.store.connect import experiment_id_for, search_all_runs

DEFAULT_CODECARBON_EXPERIMENT = "codecarbon-import"
# What makes a file CodeCarbon's own emissions.csv rather than a study CSV with columns missing.
CODECARBON_MARKERS = {"timestamp", "run_id", "duration", "energy_consumed", "emissions"}


@dataclass(frozen=True)
class ParsedFile:
    """A validated file: typed rows (column name -> value) and whether it is CodeCarbon's format."""

    rows: list[dict]
    codecarbon_format: bool
    ignored_columns: list[str]


def read_csv(path: str | Path) -> ParsedFile:
    """Read and validate the whole file; the first problem found is an error naming its line and column."""
    path = Path(path)
    try:
        # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark, which must not become part of a name.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            lines = list(reader)
    except FileNotFoundError:
        raise EemlflowError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise EemlflowError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not header:
        raise EemlflowError(f"{path}: empty file, expected a header line with the study's 42 columns")
    header = [h.strip() for h in header]
    # The efficiency columns of `export --with-extras` are accepted and not stored: they are derived again.
    known = {c.name for c in schema.COLUMNS + schema.EXTRAS} | set(efficiency.COLUMNS)
    codecarbon_format = "model" not in header and CODECARBON_MARKERS <= set(header)
    ignored: list[str] = []
    if codecarbon_format:
        ignored = [h for h in header if h not in known]
    else:
        missing = [c for c in schema.COLUMN_NAMES if c not in header]
        unknown = [h for h in header if h not in known]
        if missing or unknown:
            parts = ([f"missing columns {', '.join(missing)}"] if missing else []) + (
                [f"unknown columns {', '.join(unknown)}"] if unknown else [])
            raise EemlflowError(f"{path}:1: wrong header: {'; '.join(parts)}; expected the study's 42 columns "
                                "(see eemlflow/store/schema.py) or CodeCarbon's emissions.csv")
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise EemlflowError(f"{path}:1: duplicate header columns {', '.join(duplicates)}")
    columns = [schema.BY_NAME[h] for h in header if h in schema.BY_NAME]
    rows, first_line = [], {}
    for lineno, cells in enumerate(lines, start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise EemlflowError(f"{path}:{lineno}: {len(cells)} fields, the header has {len(header)}")
        raw = dict(zip(header, cells))
        row = {}
        for col in columns:
            try:
                row[col.name] = convert.coerce(raw[col.name], col)
            except ValueError:
                raise EemlflowError(
                    f"{path}:{lineno}: column {col.name}: {raw[col.name]!r} is not {_kind(col)}"
                ) from None
        run_id = row.get("run_id")
        if not run_id:
            raise EemlflowError(f"{path}:{lineno}: column run_id is empty; every row needs its run id")
        if run_id in first_line:
            raise EemlflowError(f"{path}:{lineno}: column run_id: {run_id!r} repeats line {first_line[run_id]}")
        first_line[run_id] = lineno
        rows.append(row)
    return ParsedFile(rows, codecarbon_format, ignored)


def _kind(col: schema.Column) -> str:
    return "an integer" if col.dtype is int else "a number"


def ingest(client: MlflowClient, parsed: ParsedFile, experiment: str | None = None,
           progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Create one FINISHED run per row not already ingested; returns (added, skipped).

    ``progress(done, total)`` is told after each row, for a display on large files."""
    by_experiment: dict[str, list[dict]] = {}
    for row in parsed.rows:
        name = experiment or row.get("experiment_name") or DEFAULT_CODECARBON_EXPERIMENT
        by_experiment.setdefault(name, []).append(row)
    added = skipped = 0
    for name, rows in by_experiment.items():
        experiment_id = experiment_id_for(client, name)
        present = {r.data.tags[schema.SOURCE_RUN_ID_TAG] for r in search_all_runs(
            client, [experiment_id], f"tags.`{schema.SOURCE_RUN_ID_TAG}` LIKE '%'")}
        for row in rows:
            if row["run_id"] in present:
                skipped += 1
            else:
                _create_run(client, experiment_id, row)
                present.add(row["run_id"])
                added += 1
            if progress:
                progress(added + skipped, len(parsed.rows))
    return added, skipped


def _create_run(client: MlflowClient, experiment_id: str, row: dict) -> None:
    """Three calls per row: create (with tags), one log_batch (params and metrics), terminate."""
    params, metrics, tags = convert.to_mlflow(row, schema.COLUMNS + schema.EXTRAS)
    start_ms, end_ms = _times(row)
    tags.update({
        schema.ROW_TAG: "ingested",
        schema.SOURCE_RUN_ID_TAG: row["run_id"],
        schema.SOURCE_EXPERIMENT_ID_TAG: row.get("experiment_id") or "",
        schema.RUN_NAME_TAG: _run_name(row),
    })
    run = client.create_run(experiment_id, start_time=start_ms, tags=tags)
    run_id = run.info.run_id
    client.log_batch(run_id, metrics=[Metric(k, v, end_ms, 0) for k, v in metrics.items()],
                     params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=end_ms)


def _times(row: dict) -> tuple[int, int]:
    """Start and end of the original run, from its timestamp and duration, so the UI sorts them truly."""
    try:
        end = datetime.fromisoformat(str(row.get("timestamp"))).timestamp()
    except ValueError:
        end = time.time()
    return int((end - (row.get("duration") or 0)) * 1000), int(end * 1000)


def _run_name(row: dict) -> str:
    if row.get("model"):
        return f"{row['model']}-{row.get('dataset')}-e{row.get('epochs')}-b{row.get('batch_size')}"
    return f"{row.get('project_name') or 'codecarbon'}-{str(row['run_id'])[:8]}"
