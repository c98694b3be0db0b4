"""The node's power as its baseboard management controller reads it (DCMI, ``ipmitool dcmi power reading``), sampled
on a thread and integrated: the one figure here that is independent of the GPU's own counter and of CodeCarbon's
CPU and RAM models, compared with CodeCarbon's whole total.

It measures the node at its power supplies: everything CodeCarbon models (CPU, RAM, the measured GPUs) and
everything it does not (other GPUs, fans, disks, network, the supplies' losses), so CodeCarbon below it is
expected; a run that shares its node with other trainings shares this figure too. Read only where ``ipmitool``
is on PATH and answers (in-band access usually needs root or the ``ipmi`` device's group); a BMC refreshes its
reading about once a second, and ``ipmitool`` takes tens to hundreds of milliseconds a call, so it is sampled every
``DCMI_POLL_S`` and a reading extrapolates the last sample to the moment it is taken.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence

from eemlflow.measure.counters.base import CounterSpec, EnergyCounter
from eemlflow.measure.units import J_PER_KWH

DCMI_POLL_S = 1.0
COMMAND = ("dcmi", "power", "reading")
_READING = re.compile(r"Instantaneous power reading:\s*([0-9.]+)\s*Watts", re.IGNORECASE)


class DcmiPowerIntegrator:
    """The node's DCMI power, integrated from when it is made; ``read_kwh`` in kWh."""

    def __init__(self) -> None:
        self.available = False
        self._ipmitool = shutil.which("ipmitool")
        if self._ipmitool is None:
            self.description = "unavailable: no ipmitool on PATH (no BMC reading)"
            return
        try:
            watts = self._watts()
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            self.description = f"unavailable: ipmitool {' '.join(COMMAND)}: {str(e).splitlines()[0][:200]}"
            return
        self.available = True
        self.description = (f"BMC DCMI power reading (ipmitool) every {DCMI_POLL_S:g} s, integrated (measured), "
                            "the whole node")
        self._lock = threading.Lock()
        self._joules, self._last = 0.0, (time.perf_counter(), watts)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="eemlflow-bmc-dcmi", daemon=True)
        self._thread.start()

    def _watts(self) -> float:
        done = subprocess.run([self._ipmitool, *COMMAND], capture_output=True, text=True, timeout=10)
        found = _READING.search(done.stdout)
        if done.returncode != 0 or found is None:
            raise ValueError((done.stderr or done.stdout).strip() or f"exit {done.returncode}, no power reading")
        return float(found.group(1))

    def _poll(self) -> None:
        while not self._stop.wait(DCMI_POLL_S):
            try:
                watts = self._watts()
            except (OSError, ValueError, subprocess.SubprocessError):
                continue  # a missed sample: the next one integrates across it
            with self._lock:
                now = time.perf_counter()
                then, before = self._last
                self._joules += (before + watts) / 2 * (now - then)
                self._last = (now, watts)

    def read_kwh(self) -> float | None:
        if not self.available:
            return None
        with self._lock:
            then, watts = self._last
            return (self._joules + watts * (time.perf_counter() - then)) / J_PER_KWH

    def close(self) -> None:
        if self.available:
            self._stop.set()


def _open(gpu_ids: Sequence[int]) -> EnergyCounter:
    return DcmiPowerIntegrator()  # the whole node, whatever the training runs on


# The node draws more than CodeCarbon models (fans, supplies, idle devices): only a gap this wide is suspect.
SPEC = CounterSpec("bmc_node_energy_kwh", "total", "BMC's DCMI power reading",
                   "the node's power as its BMC reads it (ipmitool dcmi power reading), integrated", _open,
                   suspect_pct=50.0)
