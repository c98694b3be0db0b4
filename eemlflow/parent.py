"""A training that must not outlive the process that started it: a Ray task's, whose worker can die (its node
lost, the worker killed) while the machine, and so the training, stays up.

Such an orphan would go on writing to a run the sweep has already given up on and retries, two processes on one
run. The starter names itself in ``EEMLFLOW_PARENT_PID``; the training watches its parent from a thread and,
once the parent is gone, stops itself with SIGTERM: its run ends KILLED with its energy logged, as on any stop,
and the sweep's retry resumes it from its checkpoint. The variable is taken out of the environment, so the
processes the training starts itself (torchrun's ranks, whose parent is the agent) do not watch the wrong parent.

Also whether a process of this host is still alive (``process_alive``): the stale-run test and rank 0's wait for
another rank's final record both ask it.

Standard library only: the Ray task sets the variable without importing the training's stack.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

PARENT_PID_ENV = "EEMLFLOW_PARENT_PID"
WATCH_INTERVAL_S = 0.5  # how soon a dead parent is noticed (the check is one system call)


def stop_with_parent() -> bool:
    """When ``EEMLFLOW_PARENT_PID`` names this process's parent, SIGTERM to this process once that parent is
    gone; whether a watch was started."""
    value = os.environ.pop(PARENT_PID_ENV, "").strip()
    if not value.isdigit():
        return False
    parent = int(value)

    def watch() -> None:
        while os.getppid() == parent:  # once the starter dies, this process is re-parented
            time.sleep(WATCH_INTERVAL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="eemlflow-parent-watch", daemon=True).start()
    return True


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        try:
            return "\nState:\tZ" not in "\n" + status.read_text()
        except OSError:
            return True
    return True
