"""``python -m eemlflow.export``: the study's CSV, rebuilt from a tracking server alone (``eemlflow.store.export``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd
from rich.console import Console
from rich.table import Table

from eemlflow.cli import add_verbose, begin, print_error, prog, progress_bar
from eemlflow.errors import EemlflowError
from eemlflow.measure.units import J_PER_KWH, WH_PER_KWH
from eemlflow.store.export import DEFAULT_OUTPUT, collect_rows, duplicate_cells, write_csv
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
                        "status and the efficiency columns (energy_wh_per_epoch, j_per_image, top1_per_kwh, pareto)")
    add_verbose(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, console = begin(build_parser(), argv)
    try:
        from eemlflow.store import connect

        client = connect(args.tracking_uri)
        statuses = [FINISHED, *[s for arg in (args.status or []) for s in arg.split(",") if s]]
        with progress_bar(console, "reading runs") as update:
            frame = collect_rows(client, args.experiment, dict.fromkeys(s.upper() for s in statuses), args.with_extras,
                                 progress=update)
        write_csv(frame, args.output)
    except EemlflowError as e:
        return print_error(console, e)
    except OSError as e:
        return print_error(console, f"cannot write {args.output}: {e.strerror or e}")
    summary(frame, args.output, console)
    for line in duplicate_cells(frame):
        console.print(f"eemlflow: warning: {line}; keep one — delete the others (MLflow UI, or `mlflow runs delete "
                      "--run-id ID`) or export one experiment with --experiment", highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
