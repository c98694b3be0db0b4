"""Reaching a tracking store: URI checks, the schema created once under a lock, races with other writers.

MLflow creates or upgrades a database store's schema the first time a process opens it, without a lock: several
trainings started at once on a fresh sqlite file all crash inside that migration. ``connect`` takes a lock
first (a file lock beside a sqlite file, an advisory lock on PostgreSQL), opens the store under it, and only
then lets MLflow loose; the others wait and find the schema ready. ``experiment_id_for`` is a get-or-create
that reads back what a concurrent writer created instead of failing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from eemlflow.errors import EemlflowError
from eemlflow.store.urls import EXPERIMENT_KIND_TAG, TRAINING_KIND

log = logging.getLogger(__name__)

# How long a process waits for another one to finish creating a store's schema.
SCHEMA_LOCK_TIMEOUT_S = 300.0
# Database URI schemes and the driver module SQLAlchemy needs for each (None: MLflow's own client).
_SCHEMES: dict[str, str | None] = {
    "http": None, "https": None, "file": None, "databricks": None,
    "sqlite": "sqlite3",
    "postgresql": "psycopg", "postgresql+psycopg": "psycopg", "postgresql+psycopg2": "psycopg2",
    "mysql": "MySQLdb", "mysql+pymysql": "pymysql", "mssql": "pyodbc", "mssql+pymssql": "pymssql",
}
_EXAMPLES = "sqlite:///mlflow.db, postgresql+psycopg://user:password@host:5432/mlflow or http://host:5000"


def connect(tracking_uri: str | None = None) -> MlflowClient:
    """Point MLflow at ``tracking_uri`` (else ``MLFLOW_TRACKING_URI``, else ./mlflow.db) and check it answers.

    A database store gets its schema created (or checked) once, under a lock shared with every other eemlflow
    process. Every failure is an ``EemlflowError`` that says what to do. The check fails fast: MLflow's HTTP
    client otherwise retries for minutes before giving up.
    """
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    uri = mlflow.get_tracking_uri()
    check_uri(uri)
    with no_http_retries(10):
        try:
            with schema_lock(uri):
                client = MlflowClient(uri)
                client.search_experiments(max_results=1)  # opens the store: creates or checks its schema
        except EemlflowError:
            raise
        except Exception as e:  # sqlalchemy, requests and MlflowException all mean the same to the user
            raise EemlflowError(describe_store_error(e, uri)) from None
    return client


def check_uri(uri: str) -> None:
    """A scheme MLflow can store runs in, with its database driver installed; else one line with the fix."""
    scheme = urlsplit(uri).scheme.lower()
    if not scheme:
        return  # a plain path: MLflow's file store, which says for itself that it is no longer supported
    if scheme not in _SCHEMES:
        raise EemlflowError(f"unsupported tracking URI {uri!r} (scheme {scheme!r}): use a store such as {_EXAMPLES}")
    driver = _SCHEMES[scheme]
    if driver and importlib.util.find_spec(driver) is None:
        hint = {"psycopg": "pip install 'eemlflow[db]' (psycopg)",
                "psycopg2": "use postgresql+psycopg:// with pip install 'eemlflow[db]', or pip install psycopg2-binary"
                }.get(driver, f"install the Python module {driver}")
        raise EemlflowError(f"the tracking URI {_redact(uri)} needs the database driver {driver!r}, which is not "
                            f"installed: {hint}, or point at the shared server (http://host:5000) instead")


@contextlib.contextmanager
def schema_lock(uri: str) -> Iterator[None]:
    """Serialise the first opening of a database store among processes (no-op for HTTP and other stores)."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "sqlite":
        path = _sqlite_path(uri)
        if path is None:
            yield
            return
        from filelock import FileLock, Timeout

        try:
            with FileLock(f"{path}.lock", timeout=SCHEMA_LOCK_TIMEOUT_S):
                yield
        except Timeout:
            raise EemlflowError(f"waited {SCHEMA_LOCK_TIMEOUT_S:.0f} s for {path}.lock: another process is creating "
                                "the store's schema and did not finish; delete the lock file if none is "
                                "running") from None
        return
    if scheme.startswith("postgresql"):
        with _postgres_advisory_lock(uri):
            yield
        return
    yield


def _sqlite_path(uri: str) -> Path | None:
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        return None
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _postgres_advisory_lock(uri: str) -> Iterator[None]:
    """A session-level advisory lock keyed by the database: held while this process opens the store."""
    import sqlalchemy

    key = int.from_bytes(hashlib.sha1(b"eemlflow-schema").digest()[:7], "big")
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()


def describe_store_error(error: BaseException, uri: str) -> str:
    """One line for a store failure: what happened and what to do about it."""
    text = str(error).strip()
    first_line = text.splitlines()[0][:200] if text else type(error).__name__
    status = _http_status(error)
    where = _redact(uri)
    if status == 401:
        return (f"the tracking server at {where} asks for credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to an account on it")
    if status == 403:
        return (f"the tracking server at {where} refused this account the permission it needs (HTTP 403): ask its "
                "admin for EDIT on the experiment, or use another account (MLFLOW_TRACKING_USERNAME)")
    if "password authentication failed" in text:
        return f"the database at {where} refused the user or password in the URI ({first_line}); fix them in the URI"
    return (f"cannot reach the MLflow tracking store at {where} ({first_line}); start the server or pass a "
            "reachable --tracking-uri (e.g. sqlite:///mlflow.db)")


def _http_status(error: BaseException) -> int | None:
    if isinstance(error, MlflowException):
        text = str(error)
        for code in (401, 403):
            if f"error code {code}" in text:
                return code
        if error.error_code in ("UNAUTHENTICATED",):
            return 401
        if error.error_code in ("PERMISSION_DENIED",):
            return 403
    return None


def _redact(uri: str) -> str:
    """The URI without a password, for messages."""
    parts = urlsplit(uri)
    if parts.password:
        return uri.replace(f":{parts.password}@", ":***@", 1)
    return uri


def experiment_id_for(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if needed, also when another process creates it at the same time."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:  # a training experiment: the UI shows it in its training view, not the GenAI one
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
        except MlflowException as e:  # RESOURCE_ALREADY_EXISTS, or the database's UNIQUE constraint
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise EemlflowError(f"cannot create experiment {name!r}: {str(e).splitlines()[0][:200]}") from None
            log.info("experiment %r was created by another process at the same time", name)
    if experiment.lifecycle_stage == "deleted":
        raise EemlflowError(f"experiment {name!r} is deleted: restore it (mlflow experiments restore) or pick "
                            "another name")
    return experiment.experiment_id


def search_all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> Iterator[Any]:
    """Every run matching ``filter_string``, page by page (50,000 a page, the server's cap): one request a page."""
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=50_000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


@contextlib.contextmanager
def no_http_retries(timeout_s: int) -> Iterator[None]:
    """MLflow's HTTP client without its own retries (minutes of them) and with a ``timeout_s`` time-out: the
    callers here decide how long to insist. Restores the caller's settings afterwards."""
    values = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
