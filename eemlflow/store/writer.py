"""Writing a run's records so that a store hiccup never kills training and a store outage loses nothing.

``StoreWriter`` sends each record (a ``log_batch`` or the final status) with bounded retries and backoff on
*transient* failures: a locked sqlite file, a refused or reset connection, a time-out, a 5xx from the server.
When the store stays away past the retry window (``EEMLFLOW_STORE_RETRY_SECONDS``, 180 s by default), the
record goes to a local spool file (JSON lines, fsynced) and training carries on; every later record first tries
to empty the spool into the store, once, so a store that comes back receives everything in order. ``replay``
puts a spool left behind into the store later (``python -m eemlflow.runs replay PATH``).

Errors that are not transient (a param changed, a permission refused) are raised: retrying cannot fix them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from eemlflow.atomic import atomic_write
from eemlflow.errors import EemlflowError
from eemlflow.store.connect import describe_store_error, no_http_retries
from eemlflow.training.config import CHECKPOINT_DIR

log = logging.getLogger(__name__)

RETRY_ENV = "EEMLFLOW_STORE_RETRY_SECONDS"
DEFAULT_RETRY_S = 180.0
MAX_BACKOFF_S = 15.0
SPOOL_FORMAT = 1
T = TypeVar("T")

_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "SERVICE_UNDER_MAINTENANCE"}
_TRANSIENT_TEXT = ("failed with exception", "failed with timeout exception", "database is locked",
                   "connection refused", "connection reset", "max retries exceeded", "remotedisconnected",
                   "server closed the connection", "could not connect to server", "connection timed out")


def now_ms() -> int:
    """The time MLflow stamps a record with: milliseconds since the epoch."""
    return int(time.time() * 1000)


def env_seconds(name: str, default: float, minimum: float = 0.0) -> float:
    """A duration in seconds from environment variable ``name`` (``default`` when unset); bad values are an error."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise EemlflowError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < minimum:
        raise EemlflowError(f"{name} must be at least {minimum:g} seconds, got {raw!r}")
    return value


def retry_seconds() -> float:
    """The retry window for one record, from ``EEMLFLOW_STORE_RETRY_SECONDS`` (default 180 s)."""
    return env_seconds(RETRY_ENV, DEFAULT_RETRY_S)


def is_transient(error: BaseException) -> bool:
    """Whether trying the same call again later can succeed (the store was busy or away, not wrong)."""
    if isinstance(error, MlflowException):
        if error.error_code in _TRANSIENT_CODES:
            return True
        text = str(error).lower()
        if any(f"error code {code}" in text for code in (429, 500, 502, 503, 504)) and "response body: '{" not in text:
            return True  # a proxy or a restarting server answering with a bare 5xx page
        return any(t in text for t in _TRANSIENT_TEXT)
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    try:
        import requests
        import sqlalchemy.exc

        return isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                                  sqlalchemy.exc.OperationalError))
    except ImportError:  # pragma: no cover - both come with MLflow
        return False


def with_retries(call: Callable[[], T], what: str, window_s: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, retried with backoff on transient errors for up to ``window_s``; the last error is raised."""
    window = retry_seconds() if window_s is None else window_s
    deadline = time.monotonic() + window
    delay = 0.5
    while True:
        try:
            with no_http_retries(30):
                return call()
        except Exception as e:
            left = deadline - time.monotonic()
            if not is_transient(e) or left <= 0:
                raise
            log.warning("tracking store busy or away (%s: %s); retrying %s for up to %.0f s more", type(e).__name__,
                        str(e).splitlines()[0][:160] if str(e) else "", what, left)
            sleep(min(delay, max(left, 0.0)))
            delay = min(delay * 2, MAX_BACKOFF_S)


class RetryingWrites:
    """An MLflow client whose calls are retried on transient store errors (``with_retries``): what a sweep writes of
    its own (child runs, tags, totals) rides out a store hiccup as its trainings' records do."""

    def __init__(self, client: MlflowClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Callable[..., object]:
        method = getattr(self._client, name)

        @functools.wraps(method)
        def retried(*args: object, **kwargs: object) -> object:
            return with_retries(lambda: method(*args, **kwargs), f"{name} on the store")

        return retried


class StoreWriter:
    """Sends one run's records to the store, or to its spool file when the store stays away.

    Args:
        client: the MLflow client of the run's store.
        run_id: the run the records belong to.
        spool_path: where records that could not be sent are kept (created on first use only).
    """

    def __init__(self, client: MlflowClient, run_id: str, spool_path: Path) -> None:
        self.client, self.run_id, self.spool_path = client, run_id, Path(spool_path)
        self.window_s = retry_seconds()
        self._spooled = 0

    @property
    def spooled(self) -> int:
        """How many records are in the spool file, not in the store."""
        return self._spooled

    def log_batch(self, metrics: list[Metric], params: list[Param], tags: list[RunTag]) -> None:
        self._submit({"op": "log_batch", "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
                      "params": [[p.key, p.value] for p in params], "tags": [[t.key, t.value] for t in tags]})

    def set_terminated(self, status: str, end_time_ms: int | None = None) -> None:
        self._submit({"op": "set_terminated", "status": status, "end_time": end_time_ms or now_ms()})

    def _submit(self, record: dict) -> None:
        if self._spooled:
            if self._drain():
                try:
                    with_retries(lambda: apply(self.client, self.run_id, record), record["op"], window_s=0)
                    return
                except Exception as e:
                    if not is_transient(e):
                        raise
            self._append(record)
            return
        try:
            with_retries(lambda: apply(self.client, self.run_id, record), record["op"], window_s=self.window_s)
        except Exception as e:
            if not is_transient(e):
                raise
            log.warning("the tracking store stayed unreachable for %.0f s (%s); keeping this run's records in %s "
                        "and training on", self.window_s, str(e).splitlines()[0][:160], self.spool_path)
            self._append(record)

    def _append(self, record: dict) -> None:
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.spool_path.exists()
        with self.spool_path.open("a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps({"eemlflow_spool": SPOOL_FORMAT, "run_id": self.run_id,
                                    "tracking_uri": self.client.tracking_uri}) + "\n")
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._spooled += 1

    def _drain(self) -> bool:
        """Try once to put the spool into the store; True when it is empty afterwards."""
        try:
            self._spooled = replay(self.spool_path, self.client, window_s=0)
        except EemlflowError:
            self._spooled = len(read_spool(self.spool_path)[1])
            return False
        return self._spooled == 0


def apply(client: MlflowClient, run_id: str, record: dict) -> None:
    """Send one spooled record to the store."""
    op = record.get("op")
    if op == "log_batch":
        client.log_batch(run_id,
                         metrics=[Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in record["metrics"]],
                         params=[Param(k, v) for k, v in record["params"]],
                         tags=[RunTag(k, v) for k, v in record["tags"]])
    elif op == "set_terminated":
        client.set_terminated(run_id, record["status"], end_time=int(record["end_time"]))
    else:
        raise EemlflowError(f"unknown record {op!r} in a spool file: was it written by a newer eemlflow?")


def read_spool(path: Path) -> tuple[dict, list[dict]]:
    """The header and the records of a spool file; a damaged file is an error naming the line."""
    try:
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise EemlflowError(f"{path}: no such spool file") from None
    try:
        items = [json.loads(line) for line in lines]
    except json.JSONDecodeError as e:
        raise EemlflowError(f"{path}:{e.lineno}: not a spool file of eemlflow (invalid JSON)") from None
    if not items or items[0].get("eemlflow_spool") != SPOOL_FORMAT or not items[0].get("run_id"):
        raise EemlflowError(f"{path}:1: not a spool file of eemlflow (no header line)")
    return items[0], items[1:]


def replay(path: Path, client: MlflowClient | None = None, window_s: float | None = None) -> int:
    """Put a spool file's records into the store, in order; returns how many are left (0: file removed).

    Records already sent are taken out of the file as it goes (rewritten atomically), so a replay that stops
    halfway can be run again without sending anything twice. ``client`` defaults to the file's tracking URI.
    """
    path = Path(path)
    header, records = read_spool(path)
    run_id = header["run_id"]
    if client is None:
        from eemlflow.store.connect import connect

        client = connect(header.get("tracking_uri"))
    for done, record in enumerate(records):
        try:
            with_retries(lambda record=record: apply(client, run_id, record), "replay", window_s=window_s)
        except Exception as e:
            _rewrite(path, header, records[done:])
            reason = describe_store_error(e, client.tracking_uri) if is_transient(e) else str(e).splitlines()[0]
            raise EemlflowError(f"{path}: {done} of {len(records)} records replayed into run {run_id}, "
                                f"{len(records) - done} kept: {reason}") from None
    path.unlink(missing_ok=True)
    return 0


def _rewrite(path: Path, header: dict, records: list[dict]) -> None:
    atomic_write(path, lambda f: f.write("".join(json.dumps(item) + "\n" for item in (header, *records))))


def spool_path_for(run_id: str, root: str | Path = CHECKPOINT_DIR) -> Path:
    """Where a run's unsent records go: ``<root>/<run_id>/unlogged-records.jsonl``, beside its working files."""
    return (Path(root) / run_id / "unlogged-records.jsonl").absolute()
