"""``python -m eemlflow.runs``: housekeeping of runs in the tracking store.

``replay PATH...`` puts the records a training kept locally, while the store was unreachable, into the store:
each spool file names its run and tracking URI (``--tracking-uri`` overrides it, e.g. after the server moved).
``stale`` lists RUNNING runs that no process trains any more (killed, out of memory, node lost), with their
last epoch and whether their checkpoint is on this machine; ``--mark-failed`` ends them FAILED with the reason.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from eemlflow.cli import configure_logging, print_error, prog
from eemlflow.errors import EemlflowError
from eemlflow.store.status import FAILED
from eemlflow.training.config import CHECKPOINT_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog("eemlflow.runs"), description="Housekeeping of eemlflow runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    replay = commands.add_parser("replay", help="put records kept locally during a store outage into the store")
    replay.add_argument("paths", nargs="+", help="spool files (checkpoints/<run_id>/unlogged-records.jsonl)")
    replay.add_argument("--tracking-uri", default=None, help="default: the URI recorded in each file")
    stale = commands.add_parser("stale", help="list RUNNING runs whose process is gone")
    stale.add_argument("--older-than", default="10m",
                       help="heartbeat age after which a run on another host is stale (default 10m; same host: "
                            "at once)")
    stale.add_argument("--mark-failed", action="store_true", help="end them FAILED, with the reason as eemlflow.error")
    stale.add_argument("--experiment", action="append", help="experiment name (repeatable); default: all")
    stale.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    console = Console(stderr=True)
    try:
        if args.command == "stale":
            return _stale(args, console)
        from eemlflow.store import connect, replay
        from eemlflow.store.writer import read_spool

        for path in args.paths:
            header, records = read_spool(Path(path))
            client = connect(args.tracking_uri or header.get("tracking_uri"))
            replay(Path(path), client)
            console.print(f"{path}: {len(records)} records replayed into run {header['run_id']} "
                          f"at {client.tracking_uri}; file removed", highlight=False, soft_wrap=True)
    except EemlflowError as e:
        return print_error(console, e)
    return 0


def _stale(args: argparse.Namespace, console: Console) -> int:
    from mlflow.entities import RunTag

    from eemlflow.store import connect
    from eemlflow.store.export import experiment_names
    from eemlflow.store.liveness import Heartbeat, find_stale, parse_duration
    from eemlflow.store.schema import ERROR_TAG, HEARTBEAT_TAG, STATUS_TAG
    from eemlflow.training.checkpoint import checkpoint_path

    client = connect(args.tracking_uri)
    names = experiment_names(client, args.experiment)
    stale = find_stale(client, list(names), parse_duration(args.older_than))
    table = Table(title=f"{len(stale)} stale runs at {client.tracking_uri}")
    for column in ("run", "experiment", "name", "why", "epochs done", "checkpoint here"):
        table.add_column(column, no_wrap=True)
    for run, reason in stale:
        beat = Heartbeat.from_tag(run.data.tags.get(HEARTBEAT_TAG))
        here = checkpoint_path(run.data.params.get("checkpoint_dir") or CHECKPOINT_DIR, run.info.run_id).exists()
        table.add_row(run.info.run_id, names.get(run.info.experiment_id, ""), run.info.run_name or "", reason,
                      str(beat.epoch) if beat else "?", "yes (resume it)" if here else "no")
        if args.mark_failed:
            client.log_batch(run.info.run_id, tags=[RunTag(STATUS_TAG, FAILED), RunTag(ERROR_TAG, f"stale: {reason}")])
            client.set_terminated(run.info.run_id, FAILED)
    Console(width=None if sys.stdout.isatty() else 250).print(table)  # piped: whole run ids, no wrapping
    if args.mark_failed and stale:
        console.print(f"{len(stale)} runs marked FAILED", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
