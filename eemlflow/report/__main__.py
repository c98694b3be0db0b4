"""``python -m eemlflow.report``: the grid's answer at a glance, from a tracking store, as an offline HTML page."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eemlflow.cli import add_verbose, begin, print_error, prog, progress_bar
from eemlflow.errors import EemlflowError
from eemlflow.store.urls import run_url, ui_hint

DEFAULT_OUTPUT = "report"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("eemlflow.report"),
                                description="Write report.html (self-contained) and its PNG figures from an MLflow "
                                            "store.")
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.add_argument("--experiment", action="append", help="experiment name (repeatable); default: all")
    p.add_argument("--output", default=DEFAULT_OUTPUT,
                   help=f"folder for report.html and the figures (default {DEFAULT_OUTPUT}/)")
    p.add_argument("--title", default=None, help="the page's title (default: names the experiments)")
    p.add_argument("--target", action="append", default=[], metavar="TOP1",
                   help="a target top-1 in %% for the energy-to-target tables (repeatable, or comma-separated; "
                        "default: each dataset's best top-1 minus 1, 2 and 5 points)")
    add_verbose(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, console = begin(build_parser(), argv)
    try:
        from eemlflow.compare.to_target import parse_targets
        from eemlflow.report import write_report
        from eemlflow.store import connect

        targets = parse_targets(args.target)
        client = connect(args.tracking_uri)
        with progress_bar(console, "reading runs") as update:
            experiments = [e for e in args.experiment or [] if e.strip()] or None  # `mlflow run -e report` passes ''
            path = write_report(client, args.output, experiments, title=args.title, progress=update,
                                targets=targets)
    except EemlflowError as e:
        return print_error(console, e)
    except OSError as e:
        return print_error(console, f"cannot write the report into {args.output}: {e.strerror or e}")
    console.print(f"report: {path} (open it in a browser; it needs no network) and its figures beside it",
                  highlight=False, soft_wrap=True)
    for name in experiments or []:
        found = client.get_experiment_by_name(name)
        if found is not None:
            console.print(f"runs of {name}: {run_url(client.tracking_uri, found.experiment_id)}"
                          f"{ui_hint(client.tracking_uri)}", highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
