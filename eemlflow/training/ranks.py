"""Who this process is among a run's processes (``Ranks``, from torchrun's environment) and the two files the
launcher shares with rank 0 (a user's stop; rank 0's exit code). Light: no torch, so the command line can read it
before deciding to start torchrun."""

from __future__ import annotations

import os
from dataclasses import dataclass

# The launcher (``eemlflow train`` with ``nproc_per_node`` or ``nnodes`` > 1) creates this file before it passes a
# stop (Ctrl-C, SIGTERM) on to torchrun: a rank told to stop without it was stopped by torchrun because another
# rank ended, which fails the run rather than interrupting it.
STOP_FILE_ENV = "EEMLFLOW_STOP_FILE"
# Where rank 0 writes its exit code for the launcher (torchrun's own is 1 for any rank's non-zero exit).
EXIT_FILE_ENV = "EEMLFLOW_EXIT_FILE"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's: global rank, rank on its node, how many in all and on the node."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node: int = 0

    @classmethod
    def from_environment(cls) -> Ranks:
        """What ``torchrun`` told this process (a world of one without it)."""
        env = os.environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        return cls(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]),
                   int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])), int(env.get("GROUP_RANK", 0)))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        """Rank 0: it owns the MLflow run, the checkpoint and the display."""
        return self.rank == 0

    @property
    def host_leader(self) -> bool:
        """The first rank on its node: it measures the node's CPU and RAM, which the node's ranks share."""
        return self.local_rank == 0


def stop_requested() -> bool:
    """Whether the user (through the launcher) asked the run to stop, rather than torchrun after a rank ended."""
    path = os.environ.get(STOP_FILE_ENV)
    return bool(path) and os.path.exists(path)


def report_exit(code: int) -> None:
    """Rank 0's exit code, for the launcher."""
    path = os.environ.get(EXIT_FILE_ENV)
    if path:
        with open(path, "w") as f:
            f.write(str(code))
