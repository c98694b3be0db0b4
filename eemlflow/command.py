"""``eemlflow``: one command with a subcommand per job, as ``mlflow`` and ``ray`` have; each subcommand is its
``python -m eemlflow.X`` module (same options, same exit codes), which keeps working on its own."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import eemlflow
from eemlflow.cli import EXIT_USAGE

SUBCOMMANDS = {  # name -> (module, what it does)
    "train": ("eemlflow.train", "train a timm model with the study's recipe, measured, into an MLflow run"),
    "sweep": ("eemlflow.sweep.__main__", "run a grid of trainings as one resumable sweep (local or Ray)"),
    "export": ("eemlflow.export", "write the study's 42-column CSV from the tracking store"),
    "ingest": ("eemlflow.ingest", "put a study CSV (or CodeCarbon's emissions.csv) into the tracking store"),
    "report": ("eemlflow.report.__main__", "an offline HTML report with figures of the runs' energy and accuracy"),
    "runs": ("eemlflow.runs", "housekeeping: stale runs, replaying records a store outage kept, attaching a meter"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"usage: eemlflow {{{','.join(SUBCOMMANDS)}}} [options]", "",
             "Train timm image models under CodeCarbon and track every energy figure in MLflow.", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in SUBCOMMANDS.items()]
    lines += ["", "`eemlflow SUBCOMMAND --help` lists a subcommand's options; `eemlflow --version` the version."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else EXIT_USAGE
    if args[0] == "--version":
        print(f"eemlflow {eemlflow.__version__}")
        return 0
    if args[0] not in SUBCOMMANDS:
        print(f"eemlflow: error: unknown subcommand {args[0]!r}: choose one of {', '.join(SUBCOMMANDS)} "
              "(eemlflow --help)", file=sys.stderr)
        return EXIT_USAGE
    return importlib.import_module(SUBCOMMANDS[args[0]][0]).main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
