"""``python -m eemlflow.ingest PATH``: bring a CSV of the study's schema (or CodeCarbon's ``emissions.csv``)
into MLflow, one run per row (``eemlflow.store.ingest``), so that old and new runs are browsed, compared and
exported together.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from eemlflow.cli import add_verbose, begin, print_error, prog, progress_bar
from eemlflow.errors import EemlflowError
from eemlflow.store.ingest import ingest, read_csv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("eemlflow.ingest"),
                                description="Import a study-schema CSV (or CodeCarbon's emissions.csv) into MLflow.")
    p.add_argument("path", help="the CSV file")
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.add_argument("--experiment", help="put every row in this experiment instead of the row's experiment_name")
    add_verbose(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, console = begin(build_parser(), argv)
    try:
        parsed = read_csv(args.path)
        from eemlflow.store import connect

        client = connect(args.tracking_uri)
        start = time.perf_counter()
        with progress_bar(console, "ingesting rows") as update:
            added, skipped = ingest(client, parsed, args.experiment, progress=update)
        seconds = time.perf_counter() - start
    except EemlflowError as e:
        return print_error(console, e)
    kind = "CodeCarbon emissions.csv" if parsed.codecarbon_format else "study CSV"
    console.print(f"{args.path} ({kind}): {added} runs added, {skipped} already present "
                  f"({added / seconds if seconds and added else 0:.0f} rows/s)", highlight=False)
    if parsed.ignored_columns:
        console.print(f"columns not in eemlflow's schema, not imported: {', '.join(parsed.ignored_columns)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
