"""The runner: one training run end to end (``train_run``), as one process or as one rank of several.

Owns the run's life: config -> data + model -> loop, measured, logged, closed with a status (``run``), what it
returns (``outcome``), how it ends whatever stops it (``closing``) and what only a run of several ranks needs
(``ranks``). May import ``training``, ``measure``, ``store`` and ``resume``; nothing of the command lines.
"""

from eemlflow.runner.outcome import BudgetReached, Reporter, RunOutcome, Terminated
from eemlflow.runner.run import train_run

__all__ = ["BudgetReached", "Reporter", "RunOutcome", "Terminated", "train_run"]
