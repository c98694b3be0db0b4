"""Is a RUNNING run still being trained? A heartbeat on the run, and the test that tells a stale run.

A training refreshes the ``eemlflow.heartbeat`` tag (host, process id, time, epoch, energy so far) from a thread
of its own, every ``EEMLFLOW_HEARTBEAT_SECONDS`` (60 s by default); a store that does not answer only costs that
thread a beat, never the training a step. A RUNNING run is *stale* when its process is gone: on the host that
wrote the heartbeat that is known at once (the process id no longer exists), elsewhere when the heartbeat is
older than a threshold (10 minutes by default). A run killed with ``kill -9``, by the out-of-memory killer or
with its node stays RUNNING in MLflow; this is how eemlflow knows it may resume it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from eemlflow.errors import EemlflowError
from eemlflow.parent import process_alive
from eemlflow.store.connect import no_http_retries
from eemlflow.store.schema import HEARTBEAT_TAG
from eemlflow.store.status import RUNNING
from eemlflow.store.writer import env_seconds

log = logging.getLogger(__name__)

HEARTBEAT_ENV = "EEMLFLOW_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT_S = 60.0
DEFAULT_STALE_AFTER_S = 600.0


@dataclass(frozen=True)
class Heartbeat:
    """One beat: who trains the run, when it last said so, how far it got and the energy it had measured."""

    host: str
    pid: int
    time: float  # seconds since the epoch, on the training host's clock
    epoch: int  # epochs done
    energy_kwh: float | None = None  # this process's energy so far (its segment), kWh

    def to_tag(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_tag(cls, text: str | None) -> Heartbeat | None:
        if not text:
            return None
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None


def heartbeat_seconds() -> float:
    """The heartbeat interval, from ``EEMLFLOW_HEARTBEAT_SECONDS`` (default 60 s)."""
    return env_seconds(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S, minimum=0.1)


class HeartbeatThread:
    """Beats for one run until stopped. ``state()`` gives (epochs done, energy so far in kWh or None)."""

    def __init__(self, tracking_uri: str, run_id: str, state: Callable[[], tuple[int, float | None]]) -> None:
        self.run_id, self._state = run_id, state
        self._client = MlflowClient(tracking_uri)
        self._interval = heartbeat_seconds()
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name="eemlflow-heartbeat", daemon=True)

    def start(self) -> HeartbeatThread:
        self._thread.start()
        return self

    def poke(self) -> None:
        """Beat soon (e.g. at an epoch's end, so the beat carries it), without waiting for it."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=15)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._wake.wait(self._interval)
            self._wake.clear()

    def beat(self) -> None:
        epoch, energy = self._state()
        beat = Heartbeat(socket.gethostname(), os.getpid(), time.time(), epoch, energy)
        try:
            with no_http_retries(10):
                self._client.log_batch(self.run_id, tags=[RunTag(HEARTBEAT_TAG, beat.to_tag())])
        except Exception as e:  # a missed beat is harmless; the next one may get through
            log.debug("heartbeat of run %s not stored: %s", self.run_id, e)


def staleness(run: Any, stale_after_s: float = DEFAULT_STALE_AFTER_S, now: float | None = None,
              host: str | None = None) -> str | None:
    """Why a RUNNING run is stale, or None while it is alive (or not RUNNING at all)."""
    if run.info.status != RUNNING:
        return None
    now = time.time() if now is None else now
    host = host or socket.gethostname()
    beat = Heartbeat.from_tag(run.data.tags.get(HEARTBEAT_TAG))
    if beat is None:
        age = now - (run.info.start_time or 0) / 1000
        return f"no heartbeat, started {age:.0f} s ago" if age > stale_after_s else None
    if beat.host == host:
        return None if process_alive(beat.pid) else f"its process {beat.pid} on {host} is gone"
    age = now - beat.time
    return f"last heartbeat from {beat.host} {age:.0f} s ago" if age > stale_after_s else None


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h`` -> seconds; anything else is one clear error."""
    raw = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if raw and raw[-1] in units:
            return float(raw[:-1]) * units[raw[-1]]
        return float(raw)
    except ValueError:
        raise EemlflowError(f"not a duration: {text!r} (use e.g. 90s, 10m or 2h)") from None


def find_stale(client: MlflowClient, experiment_ids: list[str], stale_after_s: float = DEFAULT_STALE_AFTER_S,
               ) -> list[tuple[Any, str]]:
    """Every RUNNING run of these experiments that no process trains any more, with the reason."""
    from eemlflow.store.connect import search_all_runs

    now = time.time()
    found = []
    for run in search_all_runs(client, experiment_ids, "attributes.status = 'RUNNING'"):
        reason = staleness(run, stale_after_s, now)
        if reason is not None:
            found.append((run, reason))
    return found
