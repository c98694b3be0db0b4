"""Shared fixtures: a fresh sqlite MLflow store per test and a way to run the real command lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_a_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process trainings write checkpoints and spools under the working folder: keep them out of the repo. The
    trainings of one test share a host ledger (CPU/RAM sharing) of their own, which its command lines inherit."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EEMLFLOW_HOST_LEDGER", str(tmp_path / "host-ledger"))


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A tracking URI for an empty sqlite store in this test's folder."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


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
