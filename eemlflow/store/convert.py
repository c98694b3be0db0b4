"""Column values to and from MLflow and the CSV: which of params, metrics and tags a row's values go to, how a raw
value (a CSV cell, a param string, a metric float) becomes the column's type, and a value's text form.

The columns themselves (names, kinds, types, keys) are ``schema``'s.
"""

from __future__ import annotations

import math
from typing import Any

from eemlflow.store.schema import SOURCE_EXPERIMENT_ID_TAG, SOURCE_RUN_ID_TAG, Column


def to_mlflow(values: dict[str, Any],
              columns: tuple[Column, ...]) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """Split column values into MLflow (params, metrics, tags), skipping missing ones.

    A missing value (None, empty string, NaN) is simply not logged, so that export gives it back empty.
    """
    params: dict[str, str] = {}
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for col in columns:
        value = values.get(col.name)
        if is_missing(value) or col.kind == "info":
            continue
        if col.kind == "metric":
            metrics[col.key] = float(value)
        elif col.kind == "param":
            params[col.key] = format_value(coerce(value, col))
        else:
            tags[col.key] = str(value)
    return params, metrics, tags


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value == "") or (
        isinstance(value, float) and math.isnan(value)
    )


def coerce(value: Any, col: Column) -> Any:
    """Convert a raw value (string from a CSV or an MLflow param, float from a metric) to the column's type.

    Raises ValueError when the value does not fit, which the ingester reports with line and column.
    """
    if is_missing(value):
        return None
    if col.dtype is str:
        return str(value)
    if col.dtype is int:
        number = float(value)
        if not number.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return int(number)
    number = float(value)
    return number


def format_value(value: Any) -> str:
    """The text form used in CSV cells and params: floats round-trip exactly (repr), missing is empty."""
    if is_missing(value):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def read_run(run: Any, experiment_name: str | None, columns: tuple[Column, ...]) -> dict[str, Any]:
    """Rebuild a row from an MLflow run (as returned by ``MlflowClient.search_runs``)."""
    data, info = run.data, run.info
    row: dict[str, Any] = {}
    for col in columns:
        if col.kind == "info":
            raw: Any = {
                "run_id": data.tags.get(SOURCE_RUN_ID_TAG, info.run_id),
                "experiment_id": data.tags.get(SOURCE_EXPERIMENT_ID_TAG, info.experiment_id),
                "experiment_name": experiment_name,
                "status": info.status,
            }[col.name]
        elif col.kind == "metric":
            raw = data.metrics.get(col.key)
        elif col.kind == "param":
            raw = data.params.get(col.key, data.params.get(col.older_key) if col.older_key else None)
        else:
            raw = data.tags.get(col.key)
        row[col.name] = coerce(raw, col)
    return row
