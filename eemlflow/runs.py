"""``python -m eemlflow.runs``: housekeeping of runs in the tracking store.

``replay PATH...`` puts the records a training kept locally, while the store was unreachable, into the store:
each spool file names its run and tracking URI (``--tracking-uri`` overrides it, e.g. after the server moved).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console

from eemlflow.cli import print_error
from eemlflow.errors import EemlflowError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eemlflow.runs", description="Housekeeping of eemlflow runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    replay = commands.add_parser("replay", help="put records kept locally during a store outage into the store")
    replay.add_argument("paths", nargs="+", help="spool files (checkpoints/<run_id>/unlogged-records.jsonl)")
    replay.add_argument("--tracking-uri", default=None, help="default: the URI recorded in each file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
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


if __name__ == "__main__":
    sys.exit(main())
