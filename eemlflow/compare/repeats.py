"""The repeats of one cell — runs with every setting but the seed the same — summarised: n, mean, standard
deviation and a 95 % confidence interval of the mean from Student's t distribution (n - 1 degrees of freedom).

Runs trained by eemlflow carry the digest of their settings without the seed (``repeat_key``); rows ingested from
a CSV, which do not, are grouped by the study's columns that set a run up (model, dataset, epochs, batch size, lr).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from eemlflow.store.export import CELL_COLUMNS

CONFIDENCE = 0.95
# The figures summarised by default (the columns of a row, with their units in ``store.schema``).
FIGURES = ("energy_consumed", "emissions", "duration", "eval_top1")
# The settings shown on a cell's row, those the rows have.
SETTINGS = (*CELL_COLUMNS, "mode", "data_path", "precision", "device", "pue", "country_iso_code")


@dataclass(frozen=True)
class Interval:
    """A figure over the repeats that have it: ``n`` values, their mean, sample standard deviation and the
    confidence interval of the mean (None for the spread of fewer than two values)."""

    n: int
    mean: float | None
    std: float | None
    low: float | None
    high: float | None


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean +- t(1 - (1 - confidence) / 2, n - 1) x std / sqrt(n) of the values that are numbers."""
    from scipy import stats  # a scikit-learn dependency; imported here to keep the package light to import

    numbers = [float(v) for v in values if _number(v)]
    n = len(numbers)
    if n == 0:
        return Interval(0, None, None, None, None)
    mean = sum(numbers) / n
    if n == 1:
        return Interval(1, mean, None, None, None)
    std = math.sqrt(sum((v - mean) ** 2 for v in numbers) / (n - 1))
    half = float(stats.t.ppf(1 - (1 - confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


def cell_keys(frame: pd.DataFrame) -> list[str]:
    """Each row's cell: its ``repeat_key`` where it has one, else its study settings."""
    keys = frame["repeat_key"] if "repeat_key" in frame else pd.Series([None] * len(frame), index=frame.index)
    settings = frame[list(CELL_COLUMNS)].astype(str).agg("|".join, axis=1)
    return [k if isinstance(k, str) and k else f"settings:{s}" for k, s in zip(keys, settings)]


def by_cell(frame: pd.DataFrame, figures: Sequence[str] = FIGURES) -> pd.DataFrame:
    """One row per cell, in the order cells first appear: its settings, ``n`` (runs), ``seeds``, ``run_ids``, and
    for each figure ``<figure>_n``, ``_mean``, ``_std``, ``_ci95_low``, ``_ci95_high``."""
    pct = round(CONFIDENCE * 100)
    rows = []
    keyed = frame.assign(_cell=cell_keys(frame)) if len(frame) else frame.assign(_cell=[])
    for _, group in keyed.groupby("_cell", sort=False):
        first = group.iloc[0]
        row = {name: first[name] for name in SETTINGS if name in group}
        row["n"] = len(group)
        row["seeds"] = " ".join(str(s) for s in group["seed"]) if "seed" in group else ""
        row["run_ids"] = " ".join(str(r) for r in group["run_id"])
        for figure in figures:
            if figure not in group:
                continue
            found = interval(list(pd.to_numeric(group[figure], errors="coerce")))
            row.update({f"{figure}_n": found.n, f"{figure}_mean": found.mean, f"{figure}_std": found.std,
                        f"{figure}_ci{pct}_low": found.low, f"{figure}_ci{pct}_high": found.high})
        rows.append(row)
    return pd.DataFrame(rows, dtype=object)


def _number(value) -> bool:
    try:
        return value is not None and not math.isnan(float(value))
    except (TypeError, ValueError):
        return False
