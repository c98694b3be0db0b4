"""``python -m eemlflow.sweep GRID``: a grid of training runs as one resumable MLflow sweep.

The sweep is a parent run; every cell is a child run (``mlflow.parentRunId``), trained by ``eemlflow.train`` in a
process of its own, so one cell's crash or out-of-memory cannot take the sweep down. The child run is created
here and handed over through ``MLFLOW_RUN_ID``, exactly as ``mlflow run`` hands its run to the entry point.

Resume: a cell is identified by its settings (``eemlflow.cell_id``: a hash of every setting that changes the
result, i.e. all but data_dir, workers and download); a cell with a FINISHED run in the experiment is skipped,
so the same command after an interruption carries on where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:  # for type hints only
    from mlflow.tracking import MlflowClient

from eemlflow.cli import EXIT_FAILED, EXIT_INTERRUPTED, print_error
from eemlflow.training.config import TrainConfig
from eemlflow.training.data import check_available
from eemlflow.errors import EemlflowError
from eemlflow.training.models import check_model_name

log = logging.getLogger(__name__)

EXECUTION_ONLY = ("data_dir", "workers", "download")  # settings that do not change a cell's result
CELL_TAG = "eemlflow.cell_id"
SWEEP_TAG = "eemlflow.sweep_id"


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    config: TrainConfig

    @property
    def cell_id(self) -> str:
        settings = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in EXECUTION_ONLY}
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def command(self) -> list[str]:
        """The ``eemlflow.train`` command line for this cell (every setting spelled out)."""
        args = [sys.executable, "-m", "eemlflow.train"]
        for name, value in dataclasses.asdict(self.config).items():
            if value is not None:
                args += [f"--{name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
        return args


@dataclass(frozen=True)
class Grid:
    name: str
    experiment: str
    cells: tuple[Cell, ...]

    @property
    def sweep_id(self) -> str:
        return hashlib.sha1(",".join(sorted(c.cell_id for c in self.cells)).encode()).hexdigest()[:16]


def parse_pairs(items: Sequence[str], what: str) -> dict[str, str]:
    """``["a=1,b=2", "c=3"]`` -> ``{"a": "1", "b": "2", "c": "3"}``; a pair without '=' is an error."""
    pairs: dict[str, str] = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise EemlflowError(f"{what} takes key=value pairs, got {part!r}")
            pairs[key.strip()] = value.strip()
    return pairs


def load_grid(path: str | Path, overrides: Optional[dict[str, str]] = None,
              only: Optional[dict[str, str]] = None) -> Grid:
    """Expand a grid file into validated cells; every bad cell is listed in one error."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EemlflowError(f"{path}: no such grid file") from None
    except yaml.YAMLError as e:
        raise EemlflowError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("grid"), list) or not spec["grid"]:
        raise EemlflowError(f"{path}: expected a mapping with a non-empty `grid` list (see sweeps/ee-training.yaml)")
    settings = spec.get("settings") or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in (*(only or {}), *(overrides or {})):
        if key not in known:
            raise EemlflowError(f"unknown setting {key!r} in --only/--set: known settings are {', '.join(sorted(known))}")
    cells: dict[str, Cell] = {}
    errors: list[str] = []
    for index, entry in enumerate(spec["grid"], start=1):
        if not isinstance(entry, dict):
            errors.append(f"grid entry {index}: expected a mapping of settings, got {entry!r}")
            continue
        lists = {k: v if isinstance(v, list) else [v] for k, v in entry.items()}
        for combo in itertools.product(*lists.values()):
            values = {**settings, **dict(zip(lists, combo)), **(overrides or {})}
            label = ", ".join(f"{k}={v}" for k, v in zip(lists, combo))
            try:
                cfg = TrainConfig.from_strings({k: None if v is None else str(v) for k, v in values.items()})
                check_model_name(cfg.model)
            except EemlflowError as e:
                errors.append(f"grid entry {index} ({label}): {e}")
                continue
            if only and any(str(getattr(cfg, k)) != v for k, v in only.items()):
                continue
            cell = Cell(cfg)
            cells.setdefault(cell.cell_id, cell)
    if errors:
        raise EemlflowError(f"{path}: {len(errors)} bad cells, nothing was trained:\n  - " + "\n  - ".join(errors))
    if not cells:
        raise EemlflowError(f"{path}: no cell matches --only {only}")
    return Grid(str(spec.get("name") or path.stem), str(spec.get("experiment") or path.stem), tuple(cells.values()))


def check_data(grid: Grid) -> None:
    """Every dataset the grid needs is on disk (before the first cell trains)."""
    seen = {(c.config.dataset, c.config.data_dir, c.config.download) for c in grid.cells}
    for dataset, data_dir, download in sorted(seen):
        check_available(dataset, data_dir, download)


def cell_states(client: MlflowClient, experiment_id: str) -> dict[str, str]:
    """cell_id -> "done" (a FINISHED run exists) or "failed" (only FAILED/KILLED runs); absent = pending."""
    from eemlflow.store import search_all_runs

    states: dict[str, str] = {}
    for run in search_all_runs(client, [experiment_id], f"tags.`{CELL_TAG}` LIKE '%'"):
        cell_id = run.data.tags[CELL_TAG]
        if run.info.status == "FINISHED":
            states[cell_id] = "done"
        elif run.info.status in ("FAILED", "KILLED") and states.get(cell_id) != "done":
            states[cell_id] = "failed"
    return states


@dataclass
class Slot:
    """A place to run one cell at a time: one GPU (``CUDA_VISIBLE_DEVICES``), or the machine."""

    gpu: Optional[str]
    cell: Optional[Cell] = None
    run_id: str = ""
    process: Optional[subprocess.Popen] = None
    started: float = 0.0
    log_path: str = ""


@dataclass
class Tally:
    total: int
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    retried: int = 0
    energy_kwh: float = 0.0
    emissions_kg: float = 0.0
    durations: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.time)


class Sweep:
    """Runs the pending cells of a grid under one parent run, one per slot at a time."""

    def __init__(self, client: MlflowClient, grid: Grid, experiment_id: str, parent_id: str, tracking_uri: str,
                 retries: int = 1, gpus: Sequence[str] = (), console: Optional[Console] = None) -> None:
        self.client, self.grid, self.experiment_id, self.parent_id = client, grid, experiment_id, parent_id
        self.tracking_uri, self.retries = tracking_uri, retries
        self.slots = [Slot(g) for g in gpus] or [Slot(None)]
        self.console = console or Console(stderr=True)
        self.logs = Path(tempfile.mkdtemp(prefix="eemlflow-sweep-"))

    def run(self) -> Tally:
        states = cell_states(self.client, self.experiment_id)
        pending = deque(c for c in self.grid.cells if states.get(c.cell_id) != "done")
        tally = Tally(total=len(self.grid.cells), skipped=len(self.grid.cells) - len(pending))
        attempts: Counter = Counter()
        live = Live(self._table(tally, pending), console=self.console, refresh_per_second=2,
                    transient=True) if self.console.is_terminal else None
        try:
            if live:
                live.start()
            while pending or any(s.process for s in self.slots):
                for slot in self.slots:
                    if slot.process is None and pending:
                        cell = pending.popleft()
                        attempts[cell.cell_id] += 1
                        self._start(slot, cell, attempts[cell.cell_id])
                    elif slot.process is not None and slot.process.poll() is not None:
                        cell, status = self._collect(slot, tally)
                        if status != "FINISHED":
                            if attempts[cell.cell_id] <= self.retries:
                                tally.retried += 1
                                pending.append(cell)
                            else:
                                tally.failed.append(cell.config.run_name)
                if live:
                    live.update(self._table(tally, pending))
                time.sleep(0.2)
        except KeyboardInterrupt:
            self._interrupt(tally)
            raise
        finally:
            if live:
                live.stop()
            shutil.rmtree(self.logs, ignore_errors=True)  # every log is attached to its run by now
        return tally

    def _start(self, slot: Slot, cell: Cell, attempt: int) -> None:
        run = self.client.create_run(self.experiment_id, run_name=cell.config.run_name, tags={
            "mlflow.parentRunId": self.parent_id, CELL_TAG: cell.cell_id, "eemlflow.attempt": str(attempt),
        })
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN")}
        env.update(MLFLOW_RUN_ID=run.info.run_id, MLFLOW_TRACKING_URI=self.tracking_uri,
                   MLFLOW_EXPERIMENT_ID=self.experiment_id)
        if slot.gpu is not None:
            env.update(CUDA_VISIBLE_DEVICES=slot.gpu, CUDA_DEVICE_ORDER="PCI_BUS_ID")
        slot.log_path = str(self.logs / f"{cell.config.run_name}-{cell.cell_id}-{attempt}.log")
        with open(slot.log_path, "w") as out:
            slot.process = subprocess.Popen(cell.command(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # Ctrl-C reaches it through us only
        slot.cell, slot.run_id, slot.started = cell, run.info.run_id, time.time()

    def _collect(self, slot: Slot, tally: Tally) -> tuple[Cell, str]:
        """A child process ended: its run's status (a run it could not close is FAILED) and its energy."""
        cell, run_id = slot.cell, slot.run_id
        run = self.client.get_run(run_id)
        status = run.info.status
        if status == "RUNNING":
            status = "FAILED"
            self.client.set_tag(run_id, "eemlflow.error", f"training process exited with code {slot.process.returncode}")
            self.client.set_terminated(run_id, status)
        self._attach_log(slot)
        line = f"{cell.config.run_name}: {status} in {time.time() - slot.started:.0f} s"
        if status == "FINISHED":
            tally.done += 1
            tally.durations.append(time.time() - slot.started)
            tally.energy_kwh += run.data.metrics.get("energy_consumed", 0.0)
            tally.emissions_kg += run.data.metrics.get("emissions", 0.0)
            line += f", {run.data.metrics.get('energy_consumed', 0.0) * 1000:.3f} Wh"
        else:
            line += f" ({_last_line(slot.log_path)}); its output: {Path(slot.log_path).name} in the run's artifacts"
        self.console.print(line, highlight=False, soft_wrap=True)
        slot.cell, slot.process, slot.run_id = None, None, ""
        return cell, status

    def _interrupt(self, tally: Tally) -> None:
        """Ctrl-C: no new cells; running ones get SIGINT and end KILLED with their energy logged."""
        self.console.print("interrupted: stopping running cells (they end KILLED); rerun the command to resume")
        busy = [s for s in self.slots if s.process is not None]
        for slot in busy:
            slot.process.send_signal(signal.SIGINT)
        for slot in busy:
            try:
                slot.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                slot.process.kill()
                slot.process.wait()
            if self.client.get_run(slot.run_id).info.status == "RUNNING":
                self.client.set_terminated(slot.run_id, "KILLED")
            self._attach_log(slot)

    def _attach_log(self, slot: Slot) -> None:
        """The child's output, as an artifact of its run (the sweep's temporary folder goes at the end)."""
        try:
            self.client.log_artifact(slot.run_id, slot.log_path)
        except Exception as e:  # an artifact store out of reach must not stop the sweep
            log.warning("could not attach %s to run %s: %s", slot.log_path, slot.run_id, e)

    def _table(self, tally: Tally, pending: deque) -> Table:
        running = sum(1 for s in self.slots if s.process is not None)
        elapsed = time.time() - tally.started
        eta = "n/a"
        if tally.durations:
            per_cell = sum(tally.durations) / len(tally.durations)
            eta = f"{per_cell * (len(pending) + running) / len(self.slots) / 60:.1f} min"
        table = Table(title=f"sweep {self.grid.name}")
        for name in ("cells", "done", "running", "failed", "pending", "elapsed", "ETA", "energy"):
            table.add_column(name, justify="right")
        table.add_row(str(tally.total), str(tally.done + tally.skipped), str(running), str(len(tally.failed)),
                      str(len(pending)), f"{elapsed / 60:.1f} min", eta,
                      f"{tally.energy_kwh * 1000:.3f} Wh ({tally.energy_kwh:.4g} kWh)")
        return table


def _last_line(path: str) -> str:
    lines = [l for l in Path(path).read_text(errors="replace").splitlines() if l.strip()]
    return lines[-1][:300] if lines else "no output"


def open_parent(client: MlflowClient, grid: Grid, experiment: Optional[str]) -> tuple[str, str]:
    """(experiment id, parent run id): ``mlflow run``'s run if launched so, else this grid's earlier parent
    (reopened, so a resumed sweep stays one parent), else a new one."""
    from eemlflow.store import experiment_id_for

    if os.environ.get("MLFLOW_RUN_ID"):
        run = client.get_run(os.environ["MLFLOW_RUN_ID"])
        return run.info.experiment_id, run.info.run_id
    experiment_id = experiment_id_for(client, experiment or grid.experiment)
    earlier = client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{grid.sweep_id}'",
                                 max_results=1)
    if earlier:
        client.update_run(earlier[0].info.run_id, status="RUNNING")
        return experiment_id, earlier[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"sweep-{grid.name}", tags={SWEEP_TAG: grid.sweep_id})
    return experiment_id, run.info.run_id


def dry_run(client: MlflowClient, grid: Grid, experiment_id: Optional[str], console: Console) -> None:
    states = cell_states(client, experiment_id) if experiment_id else {}
    table = Table(title=f"sweep {grid.name}: {len(grid.cells)} cells")
    for name in ("#", "model", "dataset", "epochs", "batch_size", "state"):
        table.add_column(name)
    for i, cell in enumerate(grid.cells, start=1):
        c = cell.config
        table.add_row(str(i), c.model, c.dataset, str(c.epochs), str(c.batch_size), states.get(cell.cell_id, "pending"))
    console.print(table)
    counts = Counter(states.get(c.cell_id, "pending") for c in grid.cells)
    console.print(f"{len(grid.cells)} cells: {counts['done']} done, {counts['failed']} failed, "
                  f"{counts['pending']} pending", highlight=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eemlflow.sweep", description="Run a grid of trainings as one resumable sweep.")
    p.add_argument("grid", help="grid file, e.g. sweeps/ee-training.yaml")
    p.add_argument("--dry-run", nargs="?", const="true", default="false", help="list the cells and their state, train nothing")
    p.add_argument("--only", action="append", default=[], help="keep cells matching key=value[,key=value]")
    p.add_argument("--set", action="append", default=[], dest="overrides", help="override a setting in every cell: key=value")
    p.add_argument("--retries", default="1", help="extra attempts for a failed cell (default 1)")
    p.add_argument("--gpus", default="", help="comma-separated GPU ids: one cell per GPU at a time")
    p.add_argument("--experiment", default=None, help="experiment name (default: the grid's `experiment`)")
    p.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console(stderr=True)
    try:
        from eemlflow.store import connect
        import mlflow

        retries = _nonnegative_int(args.retries, "--retries")
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
        grid = load_grid(args.grid, parse_pairs(args.overrides, "--set"), parse_pairs(args.only, "--only"))
        client = connect(args.tracking_uri)
        if args.dry_run.lower() in ("true", "1", "yes"):
            exp = client.get_experiment_by_name(args.experiment or grid.experiment)
            dry_run(client, grid, exp.experiment_id if exp else None, Console())
            return 0
        check_data(grid)
        experiment_id, parent_id = open_parent(client, grid, args.experiment)
    except EemlflowError as e:
        return print_error(console, e)
    sweep = Sweep(client, grid, experiment_id, parent_id, mlflow.get_tracking_uri(), retries, gpus, console)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it like Ctrl-C
    status = "FAILED"
    try:
        tally = sweep.run()
        status = "FAILED" if tally.failed else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
        _close_parent(client, grid, experiment_id, parent_id, status)
    console.print(f"sweep {grid.name}: {tally.done} trained, {tally.skipped} already done, {tally.retried} retries, "
                  f"{len(tally.failed)} failed{': ' + ', '.join(tally.failed) if tally.failed else ''}; "
                  f"{tally.energy_kwh * 1000:.3f} Wh this time", highlight=False, soft_wrap=True)
    return EXIT_FAILED if tally.failed else 0


def _close_parent(client: MlflowClient, grid: Grid, experiment_id: str, parent_id: str, status: str) -> None:
    """The parent's totals cover every FINISHED cell of the grid, from this and earlier invocations."""
    from mlflow.entities import Metric

    from eemlflow.store import search_all_runs

    ids = {c.cell_id for c in grid.cells}
    done = [r for r in search_all_runs(client, [experiment_id], "attributes.status = 'FINISHED'")
            if r.data.tags.get(CELL_TAG) in ids]
    finished = {r.data.tags[CELL_TAG] for r in done}
    now = int(time.time() * 1000)
    totals = {
        "sweep_cells": len(ids),
        "sweep_done": len(finished),
        "sweep_failed_or_pending": len(ids) - len(finished),
        "sweep_energy_kwh": sum(r.data.metrics.get("energy_consumed", 0.0) for r in done),
        "sweep_emissions_kg": sum(r.data.metrics.get("emissions", 0.0) for r in done),
    }
    client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in totals.items()])
    client.set_terminated(parent_id, status)


def _nonnegative_int(raw: str, what: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise EemlflowError(f"{what} must be an integer, got {raw!r}") from None
    if value < 0:
        raise EemlflowError(f"{what} must be 0 or more, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
