"""``python -m eemlflow.runs``: housekeeping of runs in the tracking store.

``replay PATH...`` puts the records a training kept locally, while the store was unreachable, into the store:
each spool file names its run and tracking URI (``--tracking-uri`` overrides it, e.g. after the server moved).
``stale`` lists RUNNING runs that no process trains any more (killed, out of memory, node lost), with their
last epoch and whether their checkpoint is on this machine; ``--mark-failed`` ends them FAILED with the reason.
``attach-meter RUN_ID METER.csv`` lines an external meter's samples up with a finished run (``compare.attach``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from eemlflow.cli import configure_logging, print_error, prog
from eemlflow.compare.meter import MAX_GAP_INTERVALS
from eemlflow.errors import EemlflowError
from eemlflow.measure.units import WH_PER_KWH
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
    meter = commands.add_parser("attach-meter", help="line an external meter's CSV up with a finished run and log "
                                "its energy (total and per epoch) beside CodeCarbon's")
    meter.add_argument("run_id", help="the run's id")
    meter.add_argument("meter_csv", help="the meter's CSV: a time column and power (W, kW) or cumulative energy "
                                         "(J, Wh, kWh)")
    meter.add_argument("--time-column", help="default: the column named timestamp, time, datetime or ts")
    meter.add_argument("--value-column", help="default: the first numeric column after the time")
    meter.add_argument("--unit", choices=["W", "kW", "J", "Wh", "kWh"],
                       help="default: from the value column's name (power_w, watts, energy_kwh, Wh ...)")
    meter.add_argument("--time-format", help="unix, unix_ms or a strftime format (default: detected)")
    meter.add_argument("--timezone", help="for times without a UTC offset, e.g. Europe/Paris (default: this "
                                          "machine's)")
    meter.add_argument("--clock-offset", type=float, default=0.0, metavar="S",
                       help="the meter's clock minus this machine's, s (default 0)")
    meter.add_argument("--max-gap", type=float, default=MAX_GAP_INTERVALS, metavar="INTERVALS",
                       help=f"refuse gaps longer than this many sample intervals (default {MAX_GAP_INTERVALS:g})")
    meter.add_argument("--description", default="", help="what the meter is, e.g. 'PDU outlet 7, node gpu03' "
                                                          "(kept in the run's meter.description tag)")
    meter.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    console = Console(stderr=True)
    try:
        if args.command == "stale":
            return _stale(args, console)
        if args.command == "attach-meter":
            return _attach_meter(args, console)
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
    from eemlflow.training.config import checkpoint_path

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


def _attach_meter(args: argparse.Namespace, console: Console) -> int:
    from eemlflow.compare import attach
    from eemlflow.compare.meter import read_meter
    from eemlflow.store import connect

    samples = read_meter(args.meter_csv, args.time_column, args.value_column, args.unit, args.time_format,
                         args.timezone, args.clock_offset)
    client = connect(args.tracking_uri)
    result = attach.measure(client, args.run_id, samples, args.max_gap)
    described = samples.describe(args.meter_csv)
    attach.log(client, result, f"{args.description}: {described}" if args.description else described)
    off = "" if result.discrepancy_pct is None else f"; CodeCarbon {result.discrepancy_pct:+.1f} % off it"
    console.print(f"run {args.run_id}: meter {result.energy_kwh:.6g} kWh = {result.energy_kwh * WH_PER_KWH:.6g} Wh "
                  f"over {len(result.windows)} measured window(s) and {len(result.epochs_kwh)} epochs; CodeCarbon "
                  f"{result.codecarbon_kwh:.6g} kWh (before PUE){off}", highlight=False, soft_wrap=True)
    if result.shared_host:
        console.print("eemlflow: warning: the run shared its host's CPU and RAM with other trainings: a node meter "
                      "measures all of them, so the discrepancy overstates CodeCarbon's error", highlight=False,
                      soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
