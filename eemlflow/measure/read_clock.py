"""When CodeCarbon read each piece of hardware: the moments the monitor's own counters are interpolated to.

CodeCarbon stamps its clock (``_start_time``, ``_last_measured_time``) before or after reading all its hardware in
turn, so on a busy machine its GPU reading lands tens of milliseconds away from either stamp: half a per cent of a
4-second run, enough to make a short run's CodeCarbon-vs-counter comparison look off. ``ReadClock`` times
CodeCarbon's own calls on its hardware objects instead, ``start`` (the first counter reading) and
``measure_power_and_energy`` (every later one), and places each of the monitor's counters at the moment CodeCarbon
read the same hardware. Imports only the standard library; it wraps CodeCarbon's objects, it does not import it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

Reading = tuple[float, dict[str, float | None]]  # (time.perf_counter(), counter name -> kWh or None)


class ReadClock:
    """The latest moment (``time.perf_counter``) of each timed call, by hardware class name and call name.

    ``hardware``: for each counter name, the name of CodeCarbon's hardware class that reads the same thing
    (``GPU``, ``CPU``)."""

    def __init__(self, hardware: dict[str, str]) -> None:
        self._hardware = hardware
        self._moments: dict[tuple[str, str], float] = {}

    def watch(self, tracker: Any) -> None:
        """Time ``tracker``'s hardware calls from now on. Makes its hardware objects first, which its ``start``
        would do, so that the slow hardware detection is not inside the window the counters bracket."""
        ready: Callable[[], None] | None = getattr(tracker, "_ensure_hardware_ready", None)
        if ready is not None:
            ready()
        for hardware in getattr(tracker, "_hardware", []):
            kind = type(hardware).__name__
            if kind in self._hardware.values():
                for name in ("start", "measure_power_and_energy"):
                    self._time(hardware, kind, name)

    def _time(self, hardware: Any, kind: str, name: str) -> None:
        original = getattr(hardware, name, None)
        if original is None:
            return

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._moments[kind, name] = (began + time.perf_counter()) / 2

        setattr(hardware, name, timed)

    def at(self, call: str, before: Reading, after: Reading, fallback: float | None) -> dict[str, float | None]:
        """The counters when CodeCarbon's ``call`` (``start`` or ``measure_power_and_energy``) last read their
        hardware, between two readings of them around that moment: power is taken as steady over the short
        stretch between them. ``fallback`` (CodeCarbon's own clock) is used for hardware whose calls were not
        timed; the midpoint when neither is known."""
        (t0, a), (t1, b) = before, after
        values: dict[str, float | None] = {}
        for key in a:
            moment = self._moments.get((self._hardware.get(key, ""), call), fallback)
            f = 0.5 if moment is None or t1 <= t0 else min(1.0, max(0.0, (moment - t0) / (t1 - t0)))
            values[key] = None if a[key] is None or b[key] is None else a[key] + (b[key] - a[key]) * f
        return values


def unix_time(perf_counter_s: float | None) -> float | None:
    """A moment of CodeCarbon's clock (``time.perf_counter``) as Unix time, s: where an external meter's samples
    are lined up with a measured window."""
    return None if perf_counter_s is None else time.time() - (time.perf_counter() - perf_counter_s)
