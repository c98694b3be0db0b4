"""A stop signal taken by every rank of a run at the same batch: ``AgreedStop``.

A rank that raised at once on Ctrl-C or SIGTERM left the others inside the next collective (the gradient
all-reduce) that it would never join: gloo waits there until the stopped rank's process has exited (closing its
process group does not free them), so they could not post their final energy in time and the run lost their last
stretch. Under ``AgreedStop`` a signal only marks the rank; at its next batch boundary it posts to the launcher's
store the batch at which the run stops (the first to post sets it), every rank looks at the store at each
boundary, and all raise there together: the same exception (``KeyboardInterrupt`` for SIGINT, ``Terminated`` for
SIGTERM) on each, so the run closes as it would have, with every rank's final record.

Why the stop lies ahead: a rank is never more than ``lead`` batches ahead of another when it reaches a boundary —
one on the CPU, whose gloo collectives block until every rank has joined, more on a GPU, whose CPU side may queue
batches ahead of the device up to the next loss read-back. A world of one, or a thread other than the main one,
keeps the plain behaviour (the signal raises at once).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from eemlflow.runner.closing import handled
from eemlflow.runner.outcome import Terminated

KEY = "stop/at"  # "<batch> <signal name>", in the run's side store
RAISES: dict[str, type[BaseException]] = {"SIGINT": KeyboardInterrupt, "SIGTERM": Terminated}


class AgreedStop:
    """The run's stop signals, turned into one stop at the same batch on every rank.

    ``store``: the launcher's store (``side_store``), None for a world of one. ``lead``: the batches between the
    boundary at which a rank posts the stop and the one at which every rank stops."""

    def __init__(self, store: Any | None, lead: int = 1) -> None:
        self._store = store
        self._lead = lead
        self._batches = 0
        self._signal: str | None = None  # the first stop signal this rank received
        self._posted = False
        self._at: tuple[int, str] | None = None

    @contextmanager
    def signals(self) -> Iterator[None]:
        """Within the block a stop signal marks this rank instead of raising (for a run of several ranks)."""
        if self._store is None:
            yield
            return

        def mark(signum: int, frame: object) -> None:
            self._signal = self._signal or signal.Signals(signum).name

        with handled(mark, (signal.SIGINT, signal.SIGTERM)):
            yield

    def at_batch(self) -> None:
        """Called by every rank after each batch: raises the agreed stop when the run has reached it."""
        if self._store is None:
            return
        self._batches += 1
        if self._signal is not None and not self._posted:
            self._posted = True  # the first poster's batch stands; a later one reads it back
            self._store.compare_set(KEY, "", f"{self._batches + self._lead} {self._signal}")
        if self._at is None and self._store.check([KEY]):
            batch, name = self._store.get(KEY).decode().split()
            self._at = int(batch), name
        if self._at is not None and self._batches >= self._at[0]:
            raise RAISES.get(self._at[1], KeyboardInterrupt)()
