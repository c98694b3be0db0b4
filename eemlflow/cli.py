"""What every command line shares: how a user error is shown and the exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXIT_UNLOGGED = 3  # trained, but the store missed records: they wait in a spool file for `eemlflow.runs replay`
EXIT_BUDGET = 4  # stopped cleanly before an epoch that would have crossed a budget (resumable with a larger one)


def prog(module: str) -> str:
    """A command line's name in its help: ``eemlflow train`` under the ``eemlflow`` command, else
    ``python -m eemlflow.train``."""
    sub = module.removeprefix("eemlflow.").removesuffix(".__main__")
    return f"eemlflow {sub}" if os.path.basename(sys.argv[0]) == "eemlflow" else f"python -m eemlflow.{sub}"


def print_error(console: Console, error: object) -> int:
    """One line, no traceback, the exit code for bad input."""
    console.print(f"eemlflow: error: {error}", highlight=False, markup=False, soft_wrap=True)
    return EXIT_USAGE


VERBOSE_ENV = "EEMLFLOW_VERBOSE"  # set by a verbose command for the processes it starts (a sweep's cells)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="also show MLflow's and CodeCarbon's INFO lines")


def configure_logging(verbose: bool = False) -> None:
    """Warnings and errors on the console; MLflow's, alembic's and CodeCarbon's INFO lines only when verbose.

    MLflow and CodeCarbon set their own loggers' levels from ``MLFLOW_LOGGING_LEVEL`` and ``CODECARBON_LOG_LEVEL``
    when they are imported, so the variables are set here, before the heavy imports, and the processes this one
    starts inherit them.
    """
    verbose = verbose or os.environ.get(VERBOSE_ENV) == "1"
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO" if verbose else "WARNING"
    os.environ["CODECARBON_LOG_LEVEL"] = "INFO" if verbose else "ERROR"
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("codecarbon").setLevel(logging.INFO if verbose else logging.ERROR)


@contextmanager
def progress_bar(console: Console, what: str) -> Iterator[Callable[[int, int | None], None]]:
    """A transient progress line on a terminal for long store work: yields ``update(done, total or None)``."""
    if not console.is_terminal:
        yield lambda done, total=None: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True) as progress:
        task = progress.add_task(what, total=None)
        yield lambda done, total=None: progress.update(task, completed=done, total=total)


def begin(parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, Console]:
    """What every command does first: its arguments, quiet logging (``--verbose`` where it has one), a console
    on stderr for messages."""
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    return args, Console(stderr=True)
