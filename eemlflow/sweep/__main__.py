"""``python -m eemlflow.sweep GRID``: a grid of training runs as one resumable MLflow sweep.

The sweep is a parent run; every cell is a child run (``mlflow.parentRunId``), trained by ``eemlflow.train`` in a
process of its own. Resume: a cell is identified by its settings (``eemlflow.cell_id``: a hash of every setting
that changes the result, i.e. all but data_dir, workers and download); a cell with a FINISHED run in the
experiment is skipped, so the same command after an interruption carries on where it stopped.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient

from eemlflow.cli import EXIT_FAILED, EXIT_INTERRUPTED, add_verbose, configure_logging, print_error, prog
from eemlflow.errors import EemlflowError
from eemlflow.measure.gpu_ids import check_one_measurer
from eemlflow.measure.units import WH_PER_KWH
from eemlflow.progress import RichSweepReporter
from eemlflow.store.schema import PARENT_RUN_TAG
from eemlflow.store.status import FAILED, FINISHED, KILLED
from eemlflow.store.urls import run_url, ui_hint
from eemlflow.sweep.bookkeeping import cell_states, close_parent, log_forecast, open_parent
from eemlflow.sweep.calibration_process import Forecasts, forecast_on
from eemlflow.sweep.executors import REGISTRY as EXECUTORS
from eemlflow.sweep.executors import ExecutorOptions, create_executor, executor_class
from eemlflow.sweep.forecast import grid_total
from eemlflow.sweep.grid import Cell, Grid, check_data, load_grid, parse_pairs
from eemlflow.sweep.scheduler import Sweep
from eemlflow.sweep.slots import check_fits
from eemlflow.sweep.tally import Tally, counted
from eemlflow.training.config import TRUE_WORDS

REPORT_ARTIFACTS = "report"  # the parent run's artifact folder for the sweep's report


def dry_run(client: MlflowClient, grid: Grid, experiment_id: str | None, console: Console) -> None:
    states = cell_states(client, experiment_id) if experiment_id else {}
    table = Table(title=f"sweep {grid.name}: {len(grid.cells)} cells")
    for name in ("#", "model", "dataset", "epochs", "batch_size", "state"):
        table.add_column(name)
    for i, cell in enumerate(grid.cells, start=1):
        c = cell.config
        state = states.get(cell.cell_id)
        table.add_row(str(i), c.model, c.dataset, str(c.epochs), str(c.batch_size), state.state if state else "pending")
    console.print(table)
    counts = Counter(states[c.cell_id].state if c.cell_id in states else "pending" for c in grid.cells)
    console.print(f"{len(grid.cells)} cells: {counts['done']} done, {counts['running']} running, "
                  f"{counts['resumable']} resumable, {counts['failed']} failed, {counts['pending']} pending",
                  highlight=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("eemlflow.sweep"),
                                description="Run a grid of trainings as one resumable sweep.")
    p.add_argument("grid", help="grid file, e.g. sweeps/ee-training.yaml")
    p.add_argument("--dry-run", nargs="?", const="true", default="false",
                   help="list the cells and their state, train nothing")
    p.add_argument("--only", action="append", default=[], help="keep cells matching key=value[,key=value]")
    p.add_argument("--set", action="append", default=[], dest="overrides",
                   help="override a setting in every cell: key=value")
    p.add_argument("--retries", default="1", help="extra attempts for a failed cell (default 1)")
    p.add_argument("--gpus", default="", help="comma-separated GPU ids: one cell per GPU at a time")
    p.add_argument("--executor", default="local", choices=list(EXECUTORS),
                   help="local: processes on this machine (default); ray: Ray tasks on a cluster")
    p.add_argument("--ray-address", default="", help="with --executor ray: `auto` or HOST:PORT to join a running "
                   "cluster; empty (default) starts a local Ray on this machine")
    p.add_argument("--ray-cpus-per-cell", default="1", help="CPUs a cell asks Ray for (the only resource on a "
                   "cluster without GPUs; default 1)")
    p.add_argument("--skip-running", action="store_true",
                   help="leave cells that a live process is training (default: wait for them and count their result)")
    p.add_argument("--forecast", nargs="?", const="only", default="", choices=["", "only", "run", "false"],
                   help="calibrate on this machine and print each cell's predicted time, energy and emissions; "
                        "`--forecast run` then runs the grid with the forecast logged and scored")
    p.add_argument("--budget-kwh", default="", help="the whole grid's energy budget, kWh: start no cell whose "
                   "forecast would cross it (implies a forecast)")
    p.add_argument("--no-report", nargs="?", const="true", default="false",
                   help="do not end with the report (report.html and figures on the parent run, under report/)")
    p.add_argument("--experiment", default=None, help="experiment name (default: the grid's `experiment`)")
    p.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    add_verbose(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when launched with SIGINT ignored (nohup, &)
    configure_logging(args.verbose)
    console = Console(stderr=True)
    try:
        import mlflow

        from eemlflow.store import connect

        retries = _nonnegative_int(args.retries, "--retries")
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        check_one_measurer(gpus)  # one training per physical GPU, MIG slices included
        grid = load_grid(args.grid, parse_pairs(args.overrides, "--set"), parse_pairs(args.only, "--only"))
        client = connect(args.tracking_uri)
        if args.dry_run.lower() in TRUE_WORDS:
            exp = client.get_experiment_by_name(args.experiment or grid.experiment)
            dry_run(client, grid, exp.experiment_id if exp else None, Console())
            return 0
        if executor_class(args.executor).checks_data_here:
            check_data(grid)  # on a cluster the data lives on the nodes: each cell checks its own
        budget = _positive_float(args.budget_kwh, "--budget-kwh") if args.budget_kwh.strip() else None
        forecasts = None
        if args.forecast in ("only", "run") or budget is not None:
            exp = client.get_experiment_by_name(args.experiment or grid.experiment)
            states = cell_states(client, exp.experiment_id) if exp else {}
            todo = [c for c in grid.cells if c.cell_id not in states or states[c.cell_id].state != "done"]
            forecasts = forecast(todo, console, gpus[0] if gpus else None)
            if args.forecast == "only":
                return 0
        executor = create_executor(args.executor, ExecutorOptions(
            mlflow.get_tracking_uri(), gpus, args.ray_address,
            _positive_float(args.ray_cpus_per_cell, "--ray-cpus-per-cell")))
        try:
            check_fits(grid.cells, executor.slots, executor.per_gpu)
        except EemlflowError:
            executor.close()
            raise
    except EemlflowError as e:
        return print_error(console, e)
    try:
        experiment_id, parent_id = open_parent(client, grid, args.experiment)
        if forecasts is not None:
            log_forecast(client, parent_id, forecasts.cells, forecasts.where)
    except BaseException:
        executor.close()
        raise
    sweep = Sweep(client, grid, experiment_id, parent_id, mlflow.get_tracking_uri(), retries, gpus,
                  RichSweepReporter(console),
                  skip_running=args.skip_running,
                  forecasts={f.cell.cell_id: f for f in forecasts.cells} if forecasts else None, budget_kwh=budget,
                  executor=executor)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it like Ctrl-C
    status = FAILED
    try:
        tally = sweep.run()
        status = FAILED if tally.failed or tally.stopped or tally.over_budget else FINISHED
    except KeyboardInterrupt:
        status = KILLED
        return EXIT_INTERRUPTED
    except EemlflowError as e:  # before any cell started (the slots' idle baseline): the parent ends FAILED
        return print_error(console, e)
    finally:
        signal.signal(signal.SIGTERM, previous)
        executor.close()
        close_parent(client, grid, experiment_id, parent_id, status)
    if args.no_report.lower() not in TRUE_WORDS:
        log_report(client, grid, experiment_id, parent_id, console)
    console.print(summary(grid, tally, budget), highlight=False, soft_wrap=True)
    uri = mlflow.get_tracking_uri()
    console.print(f"see it: {run_url(uri, experiment_id, parent_id)} (its cells nested under it){ui_hint(uri)}",
                  highlight=False, soft_wrap=True)
    return EXIT_FAILED if tally.failed or tally.stopped or tally.over_budget else 0


def summary(grid: Grid, tally: Tally, budget: float | None) -> str:
    """The sweep's last line: cells trained, skipped, retried, failed, the energy this time and what else happened."""
    extra = (f"; {tally.resumed} resumed from a checkpoint" if tally.resumed else "") + (
        f"; {tally.left_running} left to the process training them" if tally.left_running else "") + (
        f"; {len(tally.stopped)} stopped by their own budget: {', '.join(tally.stopped)}" if tally.stopped else "") + (
        f"; {len(tally.over_budget)} not started, over the grid's budget of {budget:g} kWh"
        if tally.over_budget else "") + (
        f"; forecast {tally.forecast_kwh * WH_PER_KWH:.3f} Wh for the cells trained, "
        f"{(tally.forecast_kwh / tally.forecast_measured_kwh - 1) * 100:+.0f} %" if tally.forecast_measured_kwh else "")
    return (f"sweep {grid.name}: {tally.done} trained, {tally.skipped} already done, {tally.retried} retries, "
            f"{len(tally.failed)} failed{': ' + ', '.join(tally.failed) if tally.failed else ''}; "
            f"{tally.energy_kwh * WH_PER_KWH:.3f} Wh this time{extra}")


def log_report(client: MlflowClient, grid: Grid, experiment_id: str, parent_id: str, console: Console) -> None:
    """The report over the sweep's children, as artifacts of its parent (``report/``); a failure only warns."""
    from eemlflow.report import write_report

    try:
        with tempfile.TemporaryDirectory(prefix="eemlflow-report-") as folder:
            write_report(client, folder, [client.get_experiment(experiment_id).name],
                         where=f"tags.`{PARENT_RUN_TAG}` = '{parent_id}'", title=f"sweep {grid.name}")
            client.log_artifacts(parent_id, folder, REPORT_ARTIFACTS)
        console.print(f"report: {REPORT_ARTIFACTS}/report.html on the sweep's run {parent_id} (MLflow UI, Artifacts)",
                      highlight=False, soft_wrap=True)
    except Exception as e:  # the sweep's runs are safe in the store; `python -m eemlflow.report` can redo it
        console.print(f"eemlflow: warning: the report could not be made ({type(e).__name__}: {e}); run "
                      f"`python -m eemlflow.report --experiment {client.get_experiment(experiment_id).name}`",
                      highlight=False, soft_wrap=True)


def forecast(cells: Sequence[Cell], console: Console, gpu: str | None = None) -> Forecasts:
    """Calibrate each distinct cell shape in a process of its own on ``gpu`` (with progress), print every cell's
    forecast and the total."""
    started = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("calibrating", total=None)

        def shown(i: int, n: int, cfg) -> None:
            progress.update(task, total=n, completed=i - 1,
                            description=f"calibrating {cfg.model} at batch {cfg.batch_size} "
                                        f"({cfg.resolved_data_path} data path)")
        result = forecast_on(cells, gpu, shown)
    forecasts, calibrations = result.cells, result.calibrations
    table = Table(title=f"forecast: {counted(len(forecasts), 'cell')} to train, "
                        f"{counted(calibrations, 'calibration')} in {time.perf_counter() - started:.0f} s")
    for name in ("#", "cell", "hours", "kWh", "Wh", "kg CO2-eq"):
        table.add_column(name, justify="left" if name == "cell" else "right")
    for i, f in enumerate([*forecasts, grid_total(forecasts)], start=1):
        table.add_row(str(i) if f.cell else "", f.cell.config.run_name if f.cell else "total",
                      f"{f.duration_s / 3600:.3g}", f"{f.energy_kwh:.3g}", f"{f.energy_kwh * WH_PER_KWH:.3g}",
                      f"{f.emissions_kg:.3g}")
    Console(width=None if console.is_terminal else 120).print(table)
    console.print(f"calibrated on {result.where}", highlight=False, soft_wrap=True)
    return result


def _positive_float(raw: str, what: str) -> float:
    return _parsed(raw, what, float, minimum_excluded=0.0)


def _nonnegative_int(raw: str, what: str) -> int:
    return _parsed(raw, what, int)


def _parsed(raw: str, what: str, kind: type, minimum_excluded: float | None = None):
    """``raw`` as ``kind``: above ``minimum_excluded`` when given, else 0 or more; one clear error otherwise."""
    try:
        value = kind(raw)
    except ValueError:
        raise EemlflowError(f"{what} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    if minimum_excluded is not None and not value > minimum_excluded:
        raise EemlflowError(f"{what} must be positive, got {value:g}")
    if value < 0:
        raise EemlflowError(f"{what} must be 0 or more, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
