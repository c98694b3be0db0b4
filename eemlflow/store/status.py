"""MLflow's run statuses by name, from its own ``RunStatus``, so that no module spells them out."""

from __future__ import annotations

from mlflow.entities import RunStatus

RUNNING = RunStatus.to_string(RunStatus.RUNNING)
FINISHED = RunStatus.to_string(RunStatus.FINISHED)
FAILED = RunStatus.to_string(RunStatus.FAILED)
KILLED = RunStatus.to_string(RunStatus.KILLED)
SCHEDULED = RunStatus.to_string(RunStatus.SCHEDULED)
ALL = (FINISHED, FAILED, KILLED, RUNNING, SCHEDULED)
