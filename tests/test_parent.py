"""A process started with ``EEMLFLOW_PARENT_PID`` stops itself once its starter is gone (``eemlflow.parent``): the
orphan a crashed Ray worker would leave behind. Real processes, standard library only (no training: the Ray test
kills a real worker under a real training)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from conftest import cli_env

from eemlflow.parent import PARENT_PID_ENV

# What a training does at its start, then a long wait: SIGTERM (its stop) prints how it ended.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from eemlflow.parent import PARENT_PID_ENV, stop_with_parent
    signal.signal(signal.SIGTERM, lambda *_: (print("stopped by SIGTERM", flush=True), sys.exit(0)))
    print(f"watching={stop_with_parent()} variable_left={PARENT_PID_ENV in os.environ}", flush=True)
    time.sleep(float(sys.argv[1]))
    print("slept on", flush=True)
""")

# The starter: names itself to the child, as the Ray task does, and dies once the child has begun its watch.
STARTER = textwrap.dedent("""
    import os, subprocess, sys, time
    out = open(sys.argv[1], "w")
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[3]], stdout=out, stderr=subprocess.STDOUT,
                             env={**os.environ, sys.argv[4]: str(os.getpid())})
    while "watching=" not in open(sys.argv[1]).read():
        assert child.poll() is None, open(sys.argv[1]).read()
        time.sleep(0.05)
""")


def _wait_for(path, text: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while text not in (seen := path.read_text() if path.exists() else ""):
        assert time.time() < deadline, f"{text!r} not printed within {timeout} s: {seen!r}"
        time.sleep(0.1)
    return seen


def test_a_process_whose_starter_died_stops_itself_with_sigterm(tmp_path):
    out = tmp_path / "child.txt"
    starter = subprocess.run([sys.executable, "-c", STARTER, str(out), CHILD, "60", PARENT_PID_ENV],
                             env=cli_env(), capture_output=True, text=True, timeout=60)
    assert starter.returncode == 0, starter.stderr
    seen = _wait_for(out, "stopped by SIGTERM")  # well before its 60 s sleep ends
    assert "watching=True variable_left=False" in seen  # the processes it starts do not watch the wrong parent
    assert "slept on" not in seen


def test_a_process_started_without_the_variable_watches_nothing(tmp_path):
    out = tmp_path / "child.txt"
    starter = subprocess.run([sys.executable, "-c", STARTER, str(out), CHILD, "2", "EEMLFLOW_SOMETHING_ELSE"],
                             env=cli_env(), capture_output=True, text=True, timeout=60)
    assert starter.returncode == 0, starter.stderr
    seen = _wait_for(out, "slept on")  # orphaned too, but it sleeps its 2 s out
    assert "watching=False" in seen and "stopped by SIGTERM" not in seen
