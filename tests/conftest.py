"""Shared fixtures: a fresh sqlite MLflow store per test and a way to run the real command lines."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One compute thread per process, in this one and every process a test starts (they inherit it): the suite runs on
# as many workers as cores (pytest-xdist) and its tests start trainings side by side, and torch's OpenMP threads,
# two per process on two cores, spin against each other's (the suite took 2,366 s of CPU for 1,009 s with one).
for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")


# The modules that take longest (seconds of a full run on 2 cores: 456, 297, 318, 241, 214, 136, 121), handed to the
# workers first: the workers take tests in collection order, and with these last (alphabetically they are) one worker
# was left finishing a long test while the other had nothing to do.
SLOWEST_FIRST = ("test_ranks", "test_ray", "test_store", "test_train", "test_sweep", "test_resume", "test_planning")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which turns the group marks into node ids for --dist loadgroup
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest modules first (``SLOWEST_FIRST``). Tests that share a module-scoped fixture (a training several
    tests read) run on one worker, so that it is made once (``--dist loadgroup``), not once per worker that runs one
    of them."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(SLOWEST_FIRST)))  # stable: file order kept
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        shared = sorted(name for name, defs in (info.name2fixturedefs.items() if info else ())
                        if defs and defs[-1].scope == "module")
        if shared:
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}:{shared[0]}"))


def pytest_configure(config: pytest.Config) -> None:
    """Refuse the pair of versions where ``--dist loadgroup`` silently stops grouping: xdist 3.8 marks a group by
    renaming the test's node id, which pytest 9.2 ignores (pytest-xdist issue 1386), and each shared training then
    ran once per worker (on the controller: a worker's error would hide the message)."""
    from importlib.metadata import version

    xdist = version("pytest-xdist")
    if config.getoption("dist", "no") == "loadgroup" and pytest.version_tuple[:2] >= (9, 2) and \
            tuple(int(part) for part in xdist.split(".")[:2]) <= (3, 8):
        raise pytest.UsageError(f"pytest {pytest.__version__} with pytest-xdist {xdist} ignores "
                                "--dist loadgroup (pytest-xdist issue 1386): pip install -e '.[dev]' (pytest<9.2)")


@pytest.fixture(autouse=True)
def _in_a_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process trainings write checkpoints and spools under the working folder: keep them out of the repo. The
    trainings of one test share a host ledger (CPU/RAM sharing) of their own, which its command lines inherit."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EEMLFLOW_HOST_LEDGER", str(tmp_path / "host-ledger"))


@pytest.fixture(scope="session")
def _empty_store_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store made once: creating one runs every schema migration (seconds), copying it is
    instant. The tests of a truly fresh file (the README's command, four writers at once) make their own."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path: Path, _empty_store_file: Path) -> str:
    """A tracking URI for an empty sqlite store in this test's folder (a copy of the empty template whose Default
    experiment keeps its artifacts in this folder, as a store made here would)."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(_empty_store_file, path)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                   (str(tmp_path / "mlruns" / "0"),))
    return f"sqlite:///{path}"


def cli_env(tracking_uri: str | None = None) -> dict[str, str]:
    """The environment a user's shell would give: this venv's python first on PATH, repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env["GIT_PYTHON_REFRESH"] = "quiet"
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def run_cli(args: list[str], tracking_uri: str | None = None, cwd: Path | None = None,
            timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` as a user would, in the test's folder by default, and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd or Path.cwd(), env={**cli_env(tracking_uri), **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )


def gpu_present() -> bool:
    """Whether training here lands on a GPU (the suite also runs on the GPU host, where CPU-only facts differ)."""
    import torch

    return torch.cuda.is_available()


def rapl_readable() -> bool:
    """Whether CodeCarbon can read the CPU's RAPL energy counter here (then CPU energy is measured)."""
    return any(os.access(p, os.R_OK) for p in Path("/sys/class/powercap").glob("intel-rapl*/energy_uj"))


class StreamLines:
    """A process's output read by a thread, so that waiting for a line can time out (``readline`` cannot)."""

    def __init__(self, stream) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=lambda: [self._lines.put(ln) for ln in iter(stream.readline, "")],
                                        daemon=True)
        self._thread.start()
        self.seen: list[str] = []

    def wait_for(self, prefix: str, timeout: float) -> None:
        """Return once a line starts with ``prefix``; fail after ``timeout`` s."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self.seen.append(self._lines.get(timeout=max(0.0, deadline - time.time())))
            except queue.Empty:
                break
            if self.seen[-1].startswith(prefix):
                return
        pytest.fail(f"no line starting {prefix!r} within {timeout} s: {''.join(self.seen)[-2000:]}")

    def rest(self, timeout: float) -> str:
        """Everything printed after the line waited for, up to the end of the stream."""
        self._thread.join(timeout)
        rest = []
        while not self._lines.empty():
            rest.append(self._lines.get())
        return "".join(rest)


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """A command line's ``main(argv)`` called in this process, as ``run_cli`` runs it in its own: for the tests of
    what a command computes and says (the process around it is tested once per command with ``run_cli``).
    Returns a ``CompletedProcess`` (exit code, stdout, stderr); environment changes the call makes are undone."""
    def call(main, args: list[str], tracking_uri: str | None = None) -> subprocess.CompletedProcess:
        saved = dict(os.environ)
        if tracking_uri:  # as an option: an earlier in-process call may have set MLflow's own tracking URI
            args = [*args, "--tracking-uri", tracking_uri]
        capsys.readouterr()
        try:
            code = main(args)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        finally:
            os.environ.clear()
            os.environ.update(saved)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    return call
