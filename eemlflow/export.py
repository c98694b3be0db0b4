"""``python -m eemlflow.export``: the study's CSV, rebuilt from a tracking server alone.

Rows come from ``MlflowClient.search_runs`` pages of active runs (params, tags and latest metrics in one call per page of
up to 50,000 runs, no per-run requests), are decoded column by column through ``eemlflow.schema``, and are
written atomically: a temporary file beside the target, renamed over it once complete.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import pandas as pd
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient

from eemlflow import schema
from eemlflow.cli import print_error
from eemlflow.errors import EemlflowError

DEFAULT_OUTPUT = Path("Dataset/image_classification/training_energy.csv")
STATUSES = ("FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED")


def collect_rows(client: MlflowClient, experiments: Optional[Sequence[str]] = None, statuses: Iterable[str] = ("FINISHED",),
                 with_extras: bool = False) -> pd.DataFrame:
    """One row per eemlflow run (trained or ingested) in ``experiments`` (names; all when None).

    Runs without the ``eemlflow.row`` tag (a sweep's parent, other projects' runs) are not rows.
    Values are typed per the schema: ints as ints, missing as None; ordered by timestamp, then run_id.
    """
    from eemlflow.store import search_all_runs

    names = _experiment_names(client, experiments)
    columns = schema.COLUMNS + (schema.EXTRAS if with_extras else ())
    status_list = [s.upper() for s in statuses]
    for s in status_list:
        if s not in STATUSES:
            raise EemlflowError(f"unknown run status {s!r}: choose among {', '.join(STATUSES)}")
    rows = []
    if names:
        for run in search_all_runs(client, list(names), f"tags.`{schema.ROW_TAG}` LIKE '%'"):
            if run.info.status in status_list:
                rows.append(schema.read_run(run, names[run.info.experiment_id], columns))
    frame = pd.DataFrame(rows, columns=[c.name for c in columns], dtype=object)
    if len(frame):
        order = sorted(range(len(rows)), key=lambda i: (rows[i]["timestamp"] or "", rows[i]["run_id"] or ""))
        frame = frame.iloc[order].reset_index(drop=True)
    return frame


def _experiment_names(client: MlflowClient, wanted: Optional[Sequence[str]]) -> dict[str, str]:
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
    return frame.apply(lambda col: col.map(schema.format_value)) if len(frame) else frame


def write_csv(frame: pd.DataFrame, output: str | Path) -> None:
    """Write atomically: a failure midway leaves any previous file untouched. ``-`` writes to stdout."""
    text = to_text(frame)
    if str(output) == "-":
        text.to_csv(sys.stdout, index=False)
        return
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            text.to_csv(f, index=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary(frame: pd.DataFrame, output: str, console: Console) -> None:
    """Rows written, counts per model and dataset, total energy and emissions."""
    table = Table(title=f"{len(frame)} rows -> {output}")
    for name in ("model", "dataset", "runs", "energy kWh", "CO2-eq kg"):
        table.add_column(name, justify="right" if name not in ("model", "dataset") else "left")
    if len(frame):
        numeric = frame.assign(
            energy_consumed=pd.to_numeric(frame["energy_consumed"]), emissions=pd.to_numeric(frame["emissions"])
        )
        groups = numeric.groupby(["model", "dataset"], dropna=False)
        for (model, dataset), group in groups:
            table.add_row(str(model), str(dataset), str(len(group)), f"{group['energy_consumed'].sum():.6g}",
                          f"{group['emissions'].sum():.6g}")
        kwh, kg = numeric["energy_consumed"].sum(), numeric["emissions"].sum()
        table.add_row("total", "", str(len(frame)), f"{kwh:.6g}", f"{kg:.6g}", style="bold")
        console.print(table)
        console.print(f"total energy {kwh:.6g} kWh = {kwh * 1000:.6g} Wh = {kwh * 3.6e6:.6g} J; "
                      f"{kg:.6g} kg CO2-eq", highlight=False)
    else:
        console.print(table)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eemlflow.export",
                                description="Write the study's 42-column CSV from an MLflow tracking server.")
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.add_argument("--experiment", action="append", help="experiment name (repeatable); default: all")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help=f"CSV path or - for stdout (default {DEFAULT_OUTPUT})")
    p.add_argument("--status", action="append", default=None,
                   help="also export runs with this status (FAILED, KILLED, RUNNING); FINISHED is always included")
    p.add_argument("--with-extras", action="store_true",
                   help="append CodeCarbon 3.3 extras, time-weighted powers, mode, device and status columns")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        from eemlflow.store import connect

        client = connect(args.tracking_uri)
        statuses = ["FINISHED", *[s for arg in (args.status or []) for s in arg.split(",") if s]]
        frame = collect_rows(client, args.experiment, dict.fromkeys(s.upper() for s in statuses), args.with_extras)
        write_csv(frame, args.output)
    except EemlflowError as e:
        return print_error(console, e)
    except OSError as e:
        return print_error(console, f"cannot write {args.output}: {e.strerror or e}")
    summary(frame, args.output, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
