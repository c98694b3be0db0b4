"""Real services for tests: a throw-away PostgreSQL cluster and `mlflow server`, on free loopback ports.

Both are context managers that stop what they started, also when the test fails: PostgreSQL with
``pg_ctl stop`` and its data folder removed, the server by its process group (its uvicorn workers included).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from conftest import cli_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """Debian's versioned bin folder of PostgreSQL (initdb and pg_ctl are not on PATH there)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """initdb and pg_ctl refuse root: run them as the `postgres` user when we are root."""
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=120, **kwargs)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL cluster on a free loopback port with an empty database `mlflow`; yields its URI."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="eemlflow-pg-"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", free_port()
    try:
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "-o",
                      f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        try:
            _as_postgres([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"])
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mlflow"
        finally:
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on a free loopback port; ``stop()`` and ``start()`` again keep the port and the store.

    One uvicorn worker unless asked (its requests still run side by side, in threads): each more is a process that
    imports the server (about 3.5 s of CPU a start); the test of concurrent writers through a server asks for 2."""

    def __init__(self, backend_uri: str, workdir: Path, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, workers: int = 1) -> None:
        self.backend_uri, self.workdir, self.extra_args = backend_uri, Path(workdir), extra_args
        self.workers = workers
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = {**cli_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> MlflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.workdir / f"server-{self.port}.log", "a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
             "--artifacts-destination", str(self.workdir / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers), *self.extra_args],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir,
            start_new_session=True,  # its own process group: the uvicorn workers stop with it
        )
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return self
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"mlflow server did not start: {self.tail()}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # workers left behind by a parent that died first
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None
        self.log.close()

    def tail(self) -> str:
        path = self.workdir / f"server-{self.port}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
