"""The parts of a run that only a run of several processes (torchrun's ranks) has: rank N's side of the MLflow
run, and which stop signal fails the run rather than interrupting it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from eemlflow.runner.outcome import Terminated
from eemlflow.training.ranks import Ranks, stop_requested

# The error of a run whose rank was stopped by torchrun because another rank ended first (killed, or failed), and of
# one whose collective with the other ranks broke (one of them ended, or the network).
PEER_ENDED = ("another process of the run ended first (killed, or failed: see its output); torchrun stopped the "
              "others")
# How long a rank waits for the others at a window boundary or for the run's id (DDP keeps them close).
COLLECTIVE_WAIT = timedelta(minutes=10)


class FollowerRun:
    """Rank N > 0's side of the MLflow run: rank 0 logs everything, so every record here goes nowhere."""

    url = ""
    writer = type("NoWriter", (), {"spooled": 0, "spool_path": ""})()

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("log_") or name == "finish":
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def stopped_by_peer(error: BaseException, ranks: Ranks) -> bool:
    """Whether this rank was told to stop (SIGTERM) by torchrun because another rank had ended, not by the user:
    the launcher marks a user's stop before passing it on (``stop_requested``)."""
    return isinstance(error, Terminated) and ranks.distributed and not stop_requested()


def collective_failed(error: BaseException, ranks: Ranks) -> bool:
    """Whether ``error`` broke a collective of a run of several ranks (another rank ended, or the network):
    torch.distributed's own errors, and the plain RuntimeError gloo and NCCL raise for a lost peer."""
    import torch.distributed as dist

    if not ranks.distributed:
        return False
    text = str(error)
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and any(word in text for word in ("gloo", "NCCL", "nccl", "c10d")))


def peer_lost(error: BaseException) -> str:
    """The run's error when a collective broke: another rank ended or stopped answering (torch's first line)."""
    first = (str(error).strip().splitlines() or [""])[0][:300]
    return (f"another process of the run ended first or stopped answering: a collective with it failed "
            f"({type(error).__name__}: {first})")
