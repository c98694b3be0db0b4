"""``python -m eemlflow.export``: the study's CSV, rebuilt from a tracking server alone (``eemlflow.store.export``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd
from rich.console import Console
from rich.table import Table

from eemlflow.cli import add_verbose, begin, print_error, prog, progress_bar
from eemlflow.compare.repeats import FIGURES, by_cell
from eemlflow.compare.to_target import add_to_target, parse_targets, read_histories
from eemlflow.compare.to_target import columns as to_target_columns
from eemlflow.errors import EemlflowError
from eemlflow.measure.units import J_PER_KWH, WH_PER_KWH
from eemlflow.store.efficiency import COLUMNS as EFFICIENCY
from eemlflow.store.export import DEFAULT_OUTPUT, collect_rows, duplicate_cells, write_csv
from eemlflow.store.schema import COLUMN_NAMES, EXTRAS
from eemlflow.store.status import FINISHED


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
        console.print(f"total energy {kwh:.6g} kWh = {kwh * WH_PER_KWH:.6g} Wh = {kwh * J_PER_KWH:.6g} J; "
                      f"{kg:.6g} kg CO2-eq", highlight=False)
    else:
        console.print(table)


# The figures of each target summarised over a cell's repeats.
TARGET_FIGURES = ("energy_kwh", "emissions_kg", "duration_s")


def rows_to_write(rows: pd.DataFrame, with_extras: bool, targets: list[float]) -> pd.DataFrame:
    """The study's columns, then the extras if asked for, then each target's columns."""
    extras = [c.name for c in EXTRAS] + list(EFFICIENCY) if with_extras else []
    per_target = [name for t in targets for name in to_target_columns(t).values()]
    return rows[[*COLUMN_NAMES, *extras, *per_target]]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("eemlflow.export"),
                                description="Write the study's 42-column CSV from an MLflow tracking server.")
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.add_argument("--experiment", action="append", help="experiment name (repeatable); default: all")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help=f"CSV path or - for stdout (default {DEFAULT_OUTPUT})")
    p.add_argument("--status", action="append", default=None,
                   help="also export runs with this status (FAILED, KILLED, RUNNING); FINISHED is always included")
    p.add_argument("--with-extras", action="store_true",
                   help="append CodeCarbon 3.3 extras, time-weighted powers, hardware counters, mode, device, "
                        "status, seed, repeat_key and the efficiency columns (energy_wh_per_epoch, j_per_image, "
                        "top1_per_kwh, pareto)")
    p.add_argument("--target", action="append", default=[], metavar="TOP1",
                   help="a target top-1 in %% (repeatable, or comma-separated): append each run's epoch_to_T, "
                        "energy_to_T_kwh, emissions_to_T_kg and duration_to_T_s until its first epoch at or above "
                        "it (reads each run's per-epoch history: one request per run)")
    p.add_argument("--by-cell", action="store_true",
                   help="one row per cell (the repeats of a setting that differ only in seed): n, seeds, run ids, "
                        "and the mean, standard deviation and 95%% Student's t interval of energy, emissions, "
                        "duration, top-1 and each --target's energy")
    add_verbose(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, console = begin(build_parser(), argv)
    try:
        from eemlflow.store import connect

        targets = parse_targets(args.target)
        client = connect(args.tracking_uri)
        statuses = [FINISHED, *[s for arg in (args.status or []) for s in arg.split(",") if s]]
        with progress_bar(console, "reading runs") as update:
            rows = collect_rows(client, args.experiment, dict.fromkeys(s.upper() for s in statuses), True,
                                progress=update)
        if targets:
            with progress_bar(console, "reading per-epoch histories") as update:
                histories = read_histories(client, list(rows["run_id"]), progress=update)
            rows = add_to_target(rows, histories, targets)
        frame = rows_to_write(rows, args.with_extras, targets)
        if args.by_cell:
            frame = by_cell(rows, (*FIGURES, *(to_target_columns(t)[f] for t in targets for f in TARGET_FIGURES)))
        write_csv(frame, args.output)
    except EemlflowError as e:
        return print_error(console, e)
    except OSError as e:
        return print_error(console, f"cannot write {args.output}: {e.strerror or e}")
    if args.by_cell:
        console.print(f"{len(frame)} cells from {len(rows)} runs -> {args.output}", highlight=False, soft_wrap=True)
        return 0
    summary(frame, args.output, console)
    for line in duplicate_cells(rows):
        console.print(f"eemlflow: warning: {line}; keep one — delete the others (MLflow UI, or `mlflow runs delete "
                      "--run-id ID`) or export one experiment with --experiment", highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
