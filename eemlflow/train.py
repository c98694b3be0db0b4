"""``python -m eemlflow.train``: the MLproject's ``main`` entry point, also usable without the launcher.

Each training setting of ``TrainConfig`` is an option (``--batch-size`` for ``batch_size``); values arrive as
strings, as ``mlflow run`` passes them, and are validated here since MLflow does not check MLproject types.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console

from eemlflow.cli import (
    EXIT_BUDGET,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_UNLOGGED,
    add_verbose,
    configure_logging,
    print_error,
    prog,
)
from eemlflow.errors import EemlflowError
from eemlflow.parent import stop_with_parent
from eemlflow.training.config import BUDGET_SETTINGS, TrainConfig
from eemlflow.training.ranks import Ranks, report_exit

if TYPE_CHECKING:
    from eemlflow.runner import RunOutcome


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("eemlflow.train"),
        description="Train a timm model with the study's recipe, measured by CodeCarbon, tracked in MLflow. "
        "An empty value means the default.",
    )
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar="VALUE",
                            help=f"default: {getattr(defaults, f.name)!r}")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--experiment", default="eemlflow", help="experiment name when run without `mlflow run`")
    parser.add_argument("--no-system-metrics", action="store_true", help="do not log MLflow's system metrics")
    add_verbose(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # A launcher without job control (nohup, a batch script's `&`) starts us with SIGINT ignored: take it back,
    # so that Ctrl-C and the sweep's stop end the run KILLED with its energy instead of being lost.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stop_with_parent()  # a Ray task's training: not a process that outlives its task's worker
    ranks = Ranks.from_environment()
    configure_logging(args.verbose)
    if not ranks.leader:  # rank 0 speaks for the run; the others only say why they failed
        logging.getLogger("eemlflow").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    console = Console(stderr=True, quiet=not ranks.leader)
    code = _train(args, argv, console, ranks)
    if ranks.leader and ranks.distributed:
        report_exit(code)
    return code


def _train(args: argparse.Namespace, argv: list[str], console: Console, ranks: Ranks) -> int:
    raw = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    try:
        from eemlflow.measure.gpu_ids import default_device_order

        default_device_order()  # before torch sees a GPU: number them as NVML and nvidia-smi do
        if (raw.get("resume") or "").strip():  # the run's own settings, with what was given over them
            from eemlflow.resume import resume_config
            from eemlflow.store import connect

            cfg = resume_config(connect(args.tracking_uri), raw)
        else:
            cfg = TrainConfig.from_strings(raw)
        if cfg.world_size > 1 and not ranks.distributed:  # the ranks, through torchrun
            from eemlflow.launch import launch

            return launch(cfg, argv, console, args.verbose)
        # The heavy imports (torch, timm, mlflow) once it is known that this process trains: after the argument
        # parsing, and not in torchrun's launcher, which needs only torch to start the ranks that train.
        from eemlflow.progress import RichReporter
        from eemlflow.runner import train_run

        outcome = train_run(
            cfg, tracking_uri=args.tracking_uri, experiment_name=args.experiment,
            reporter=RichReporter(console),
            system_metrics=not args.no_system_metrics,
        )
    except EemlflowError as e:
        if not ranks.leader:
            Console(stderr=True).print(f"eemlflow: rank {ranks.rank}: error: {e}", highlight=False, markup=False,
                                       soft_wrap=True)
        return print_error(console, e)
    except KeyboardInterrupt:
        console.print("eemlflow: interrupted: the run was ended KILLED with the energy measured so far")
        return EXIT_INTERRUPTED
    return _report_outcome(outcome, console)


def _report_outcome(outcome: RunOutcome, console: Console) -> int:
    """The run's last line, and the exit status that says how it ended."""
    from eemlflow.progress import format_energy
    from eemlflow.store.status import FINISHED

    if outcome.unlogged:
        console.print(f"eemlflow: error: the tracking store stayed unreachable; {outcome.unlogged} records of run "
                      f"{outcome.run_id} ({outcome.status}) are kept in {outcome.spool_path}: once the store is back, "
                      f"run `python -m eemlflow.runs replay {outcome.spool_path}`", highlight=False, markup=False,
                      soft_wrap=True)
        return EXIT_UNLOGGED
    if outcome.stopped:
        option = "--" + BUDGET_SETTINGS[outcome.budget].replace("_", "-")
        resume = (f"to go on, resume it with a larger budget: eemlflow train --resume {outcome.run_id} "
                  f"{option} LARGER" if outcome.checkpoint else
                  f"no checkpoint keeps its epochs (none trained, or checkpoint_every=0): start a new run with a "
                  f"larger {option}")
        console.print(f"eemlflow: stopped by the {outcome.stopped} (run {outcome.run_id} marked KILLED); {resume}",
                      highlight=False, markup=False, soft_wrap=True)
        return EXIT_BUDGET
    if outcome.status != FINISHED:
        console.print(f"eemlflow: training failed: {outcome.error} (run {outcome.run_id} marked {outcome.status})",
                      highlight=False, markup=False, soft_wrap=True)
        return EXIT_FAILED
    last = outcome.epochs[-1]
    reading = outcome.energy.reading if outcome.energy else None
    console.print(
        f"done: run {outcome.run_id}  top1 {last.eval_top1:.2f} %  "
        + (f"energy {format_energy(reading)} in {reading.duration_s:.1f} s" if reading else "energy not measured"),
        highlight=False, markup=False, soft_wrap=True,
    )
    console.print(f"see it: {outcome.url}", highlight=False, markup=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
