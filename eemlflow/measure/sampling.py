"""CodeCarbon's background sampling made safe beside the monitor's own readings: ``SerialSampling``.

CodeCarbon samples its hardware on a chain of ``threading.Timer`` threads (its ``PeriodicScheduler``), while the
monitor makes it measure on the training's thread at every window boundary and at the stop. Two things go wrong
when the two meet:

- Each measurement charges the CPU and RAM ``power x (now - last measurement)``: two measurements at once both
  start from the same last one, and that stretch is counted twice.
- The scheduler's ``stop`` cancels the next timer but does not wait for a measurement already running on the
  timer thread. That measurement then ends after ``tracker.stop()`` has cleared its start time, and dies with a
  ``TypeError`` traceback on stderr (seen in CI) after adding energy the final record no longer holds.

``SerialSampling`` runs the timer's samples under one lock the monitor also holds while it has CodeCarbon measure,
and once the tracker's stop has begun a timer that still fires samples nothing and ends its chain (the scheduler
re-arms its next timer before it calls the sample). Imports only the standard library; it wraps CodeCarbon's
objects, it does not import it.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

SCHEDULERS = ("_scheduler", "_scheduler_monitor_power")  # the tracker's timers: energy, and power for estimates


class SerialSampling:
    """One CodeCarbon measurement at a time, and none after the tracker's stop.

    Made right after the tracker (which creates its schedulers in ``__init__``), before its ``start``."""

    def __init__(self, tracker: Any) -> None:
        self._lock = threading.Lock()
        self._closed = False
        for name in SCHEDULERS:
            scheduler = getattr(tracker, name, None)
            if scheduler is not None and callable(getattr(scheduler, "function", None)):
                scheduler.function = self._guard(scheduler, scheduler.function)

    def _guard(self, scheduler: Any, sample: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(sample)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                if self._closed:
                    scheduler.stop()  # cancels the timer this very call re-armed: the chain ends here
                    return None
                return sample(*args, **kwargs)

        return guarded

    @contextlib.contextmanager
    def exclusive(self, last: bool = False) -> Iterator[None]:
        """No timer sample runs while the block does (it waits for one already running to finish first).

        ``last``: the block stops the tracker, and no timer sample runs after it either."""
        with self._lock:
            if last:
                self._closed = True
            yield
