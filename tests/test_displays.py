"""The live displays as a user sees them: the command run in a real terminal (tmux), its screen read back."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="no tmux here (`.ci/run` installs it)")


class Terminal:
    """A detached tmux session of its own (its own server socket), 200 x 50, running one command."""

    def __init__(self, folder: Path, command: list[str], env: dict[str, str]) -> None:
        self.socket = str(folder / "tmux.sock")
        env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}  # the terminal's own size, not pytest's
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        line = f"cd {shlex.quote(str(folder))} && env {exports} {shlex.join(command)}; echo EXITED $?; sleep 600"
        subprocess.run(["tmux", "-S", self.socket, "new-session", "-d", "-x", "200", "-y", "50", line], check=True,
                       env={"PATH": env["PATH"], "TERM": "xterm-256color", "HOME": str(folder)}, timeout=30)

    def screen(self) -> str:
        return subprocess.run(["tmux", "-S", self.socket, "capture-pane", "-p", "-J"], capture_output=True,
                              text=True, timeout=30).stdout

    def wait_for(self, pattern: str, timeout: float = 300) -> str:
        """The screen once ``pattern`` (a regular expression) is on it; fails with the screen after ``timeout``."""
        deadline = time.time() + timeout
        while True:
            shown = self.screen()
            if re.search(pattern, shown):
                return shown
            if time.time() > deadline or "EXITED" in shown:
                pytest.fail(f"{pattern!r} never on the screen:\n{shown}")
            time.sleep(0.3)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30)


def test_a_training_in_a_terminal_shows_bars_eta_and_energy_so_far_and_projected(store, tmp_path):
    term = Terminal(tmp_path, [sys.executable, "-m", "eemlflow.train", "--model", "test_resnet", "--dataset",
                               "digits", "--epochs", "3", "--img-size", "16", "--workers", "0", "--batch-size", "32",
                               "--no-system-metrics"], cli_env(store))
    try:
        # The bars once an epoch is done and before the last: the first epoch's line is printed above them a moment
        # before the epochs bar moves (CI once read the screen in between: the line, and the bar at 0/3).
        during = term.wait_for(r"epochs .*[12]/3 .*ETA .*Wh \(.* kWh, .* g CO2-eq\) +projected: .* Wh")
        assert "epoch 1/3 " in during, during  # the first epoch's line, above the live bars
        assert re.search(r"batches .*\d+/44 .*ETA", during), during  # 1438 images / 32, the last partial dropped
        line = " ".join(" ".join(during.split("epoch 1/3 ", 1)[1].split("\n", 2)[:2]).split())  # wrapped by rich
        assert re.search(r"so far: [\d.]+ Wh \([\d.e-]+ kWh, [\d.e-]+ g CO2-eq\)", line), line
        assert re.search(r"projected: [\d.]+ Wh \([\d.e-]+ kWh, [\d.e-]+ g CO2-eq\) in \d+ s", line), line
        done = term.wait_for(r"EXITED \d+")
        assert "EXITED 0" in done and "epoch 3/3 " in done and re.search(r"epochs .*3/3", done), done
        assert "Traceback" not in done
    finally:
        term.close()


def test_a_sweep_in_a_terminal_shows_its_live_table_with_eta_and_the_forecast_left(store, tmp_path):
    grid = tmp_path / "two.yaml"
    grid.write_text("name: two\nexperiment: two\nsettings: {dataset: digits, epochs: 2, img_size: 16, workers: 0, "
                    "model: test_resnet, batch_size: 64}\ngrid:\n  - {seed: [1, 2]}\n")  # one shape: one calibration
    term = Terminal(tmp_path, [sys.executable, "-m", "eemlflow.sweep", str(grid), "--forecast", "run", "--no-report"],
                    cli_env(store))
    try:
        # While the second cell trains: one done, an ETA from it, and what the forecast says is left.
        shown = term.wait_for(r"│ +2 │ +1 │ +0 │ +1 │ +0 │ +0 │")
        header = next(ln for ln in shown.splitlines() if "cells" in ln and "ETA" in ln)
        assert [c.strip() for c in header.strip("┃│ ").split("┃")] == [
            "cells", "done", "resumed", "running", "failed", "pending", "elapsed", "ETA", "energy", "forecast left"]
        row = next(ln for ln in shown.splitlines() if re.search(r"│ +2 │ +1 │", ln))
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert re.fullmatch(r"[\d.]+ min", cells[7]), cells  # the ETA, from the cell that is done
        assert re.fullmatch(r"[\d.]+ Wh \([\d.e-]+ kWh\)", cells[8]) and float(cells[8].split()[0]) > 0, cells
        assert re.fullmatch(r"[\d.]+ Wh \([\d.e-]+ kWh\)", cells[9]) and float(cells[9].split()[0]) > 0, cells
        done = term.wait_for(r"EXITED \d+")
        assert "EXITED 0" in done and "2 trained, 0 already done" in " ".join(done.split()), done
    finally:
        term.close()
