"""``python -m eemlflow.report``: the grid's answer at a glance, from a tracking store, as an offline HTML page."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from eemlflow.cli import print_error
from eemlflow.errors import EemlflowError

DEFAULT_OUTPUT = "report"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eemlflow.report",
                                description="Write report.html (self-contained) and its PNG figures from an MLflow store.")
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.add_argument("--experiment", action="append", help="experiment name (repeatable); default: all")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help=f"folder for report.html and the figures (default {DEFAULT_OUTPUT}/)")
    p.add_argument("--title", default=None, help="the page's title (default: names the experiments)")
    p.add_argument("--verbose", action="store_true", help="show MLflow's and CodeCarbon's INFO lines")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    console = Console(stderr=True)
    try:
        from eemlflow.report import write_report
        from eemlflow.store import connect

        client = connect(args.tracking_uri)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=True) as progress:
            task = progress.add_task("reading runs", total=None)
            experiments = [e for e in args.experiment or [] if e.strip()] or None  # `mlflow run -e report` passes ''
            path = write_report(client, args.output, experiments, title=args.title,
                                progress=lambda n: progress.update(task, description=f"reading runs: {n} so far"))
    except EemlflowError as e:
        return print_error(console, e)
    except OSError as e:
        return print_error(console, f"cannot write the report into {args.output}: {e.strerror or e}")
    console.print(f"report: {path} (open it in a browser; it needs no network) and its figures beside it",
                  highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
