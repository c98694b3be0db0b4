"""What every command line shares: how a user error is shown and the exit codes."""

from __future__ import annotations

from rich.console import Console

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXIT_UNLOGGED = 3  # trained, but the store missed records: they wait in a spool file for `eemlflow.runs replay`
EXIT_BUDGET = 4  # stopped cleanly before an epoch that would have crossed a budget (resumable with a larger one)


def print_error(console: Console, error: object) -> int:
    """One line, no traceback, the exit code for bad input."""
    console.print(f"eemlflow: error: {error}", highlight=False, soft_wrap=True)
    return EXIT_USAGE
