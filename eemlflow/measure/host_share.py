"""Sharing one host's CPU and RAM among the eemlflow trainings measured on it at the same time.

CodeCarbon's machine mode (the study's) charges each tracker the whole machine's CPU and RAM, so k trainings
running at once on one host count it k times. Each ``EnergyMonitor`` therefore enters its measured window in a
host-local ledger (a folder of small JSON files, one per training: pid, process start time, window start and
end). Over any stretch of time, a training is charged ``1 / k(t)`` of the CPU and RAM energy it measured, where
``k(t)`` is the number of ledger windows open at ``t``, itself included: the shares of concurrent trainings add
up to one machine. A training alone has a share of exactly 1 and keeps CodeCarbon's figures unchanged. GPUs are
not shared: each training measures only its own. ``Attribution`` applies the share to CodeCarbon's cumulative
figures, reading by reading.

A window whose process died without closing it ends at the ledger file's last touch (a thread touches it every
``TOUCH_S``). The ledger lives in ``EEMLFLOW_HOST_LEDGER``, else ``~/.cache/eemlflow/host-ledger``: every
training on a host must see the same folder (the same user, or a folder they all can write).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from eemlflow.atomic import atomic_write

log = logging.getLogger(__name__)

LEDGER_ENV = "EEMLFLOW_HOST_LEDGER"
TOUCH_S = 5.0  # how often a live training marks its window as still open
KEEP_CLOSED_S = 2 * 86400.0  # closed windows older than this cannot overlap a live epoch any more: removed
SHARED_TRACKING_MODE = "machine-shared"  # the CSV's tracking_mode of a run charged a share of the machine


def ledger_folder() -> Path:
    """Where this host's trainings enter their windows."""
    return Path(os.environ.get(LEDGER_ENV) or Path.home() / ".cache" / "eemlflow" / "host-ledger")


@dataclass(frozen=True)
class Window:
    """One training's measured window on this host: [start, end] in Unix seconds, ``end`` None while open."""

    pid: int
    start: float
    end: float | None


def share(me: Window, others: list[Window], a: float, b: float) -> float:
    """The mean of ``1 / k(t)`` over [a, b], where k counts ``me`` and the ``others`` open at t (``me`` is open
    over the whole of [a, b]); 1.0 for an empty interval."""
    if b <= a:
        return 1.0
    cuts = sorted({a, b, *(t for w in others for t in (w.start, w.end if w.end is not None else b) if a < t < b)})
    total = 0.0
    for lo, hi in zip(cuts, cuts[1:]):
        mid = (lo + hi) / 2
        k = 1 + sum(1 for w in others if w.start <= mid and (w.end is None or mid < w.end))
        total += (hi - lo) / k
    return total / (b - a)


class HostLedger:
    """This training's entry in the host's ledger, and its share of the machine over a stretch of time."""

    def __init__(self, folder: Path | None = None, start: float | None = None) -> None:
        """``start``: when this training's measurement began (Unix s; now if None): the window is the span its
        tracker measured, so that the others' shares count the seconds it was charged for, not the ledger's own."""
        self.folder = folder or ledger_folder()
        self.available = True
        self.description = ""
        self.window = Window(os.getpid(), time.time() if start is None else start, None)
        self.path = self.folder / f"{socket.gethostname()}-{os.getpid()}-{int(self.window.start * 1e6)}.json"
        self.max_concurrent = 1
        self._stop = threading.Event()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write()
        except OSError as e:  # a read-only home: measure as CodeCarbon does (whole machine), and say so
            self.available = False
            self.description = f"ledger {self.folder} not writable ({e.strerror})"
            log.warning("host ledger unavailable: %s; concurrent trainings each count the whole machine",
                        self.description)
            return
        self._thread = threading.Thread(target=self._touch, name="eemlflow-host-ledger", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        record = {"pid": self.window.pid, "created": _created(self.window.pid), "start": self.window.start,
                  "end": self.window.end}
        atomic_write(self.path, lambda f: f.write(json.dumps(record)))

    def _touch(self) -> None:
        while not self._stop.wait(TOUCH_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def others(self) -> list[Window]:
        """The other windows of this host's ledger (a dead process's open window ends at its last touch)."""
        found = []
        now = time.time()
        for path in self.folder.glob(f"{socket.gethostname()}-*.json"):
            if path == self.path:
                continue
            try:
                record = json.loads(path.read_text())
                mtime = path.stat().st_mtime
            except (OSError, ValueError):  # removed meanwhile, or being written
                continue
            end = record.get("end")
            if end is None and not _alive(int(record["pid"]), record.get("created")):
                end = mtime
            if end is not None and now - end > KEEP_CLOSED_S:
                path.unlink(missing_ok=True)
                continue
            found.append(Window(int(record["pid"]), float(record["start"]), end))
        return found

    def share(self, a: float, b: float) -> float:
        """This training's share of the machine over [a, b] (Unix seconds)."""
        if not self.available:
            return 1.0
        others = self.others()
        overlapping = [w for w in others if w.start < b and (w.end is None or w.end > a)]
        self.max_concurrent = max(self.max_concurrent, 1 + len(overlapping))
        return share(self.window, overlapping, a, b)

    def close(self, end: float | None = None) -> None:
        """Close this training's window at ``end`` (its tracker's last reading, Unix s; now if None), kept for the
        trainings it overlapped, which read it at their next boundary."""
        self._stop.set()
        if not self.available:
            return
        self.window = Window(self.window.pid, self.window.start, time.time() if end is None else end)
        try:
            self._write()
        except OSError as e:
            log.warning("host ledger: window not closed (%s)", e)


class Attribution:
    """This process's CPU and RAM energy, each stretch between two readings charged at the training's share of
    the host over that stretch (``HostLedger.share``), or at a fixed ``part`` without a ledger: 0 for a rank of a
    run whose node's CPU and RAM another rank of the run measures."""

    def __init__(self, ledger: HostLedger | None, part: float = 1.0) -> None:
        self.ledger = ledger
        self.part = part
        self.since = ledger.window.start if ledger is not None else time.time()
        self.raw = {"cpu_energy": 0.0, "ram_energy": 0.0}
        self.charged = dict(self.raw)
        self.shared = False

    def update(self, values: dict) -> dict:
        """CodeCarbon's cumulative ``values`` now, with the CPU and RAM energy charged to this training."""
        now = time.time()
        part = self.ledger.share(self.since, now) if self.ledger is not None else self.part
        self.shared = self.shared or part < 1.0
        for key in self.raw:
            raw = float(values.get(key) or 0.0)
            self.charged[key] += (raw - self.raw[key]) * part
            self.raw[key] = raw
        self.since = now
        return self.apply(values)

    @property
    def share(self) -> float:
        """The share of the CPU and RAM energy measured so far that was charged (1.0 alone)."""
        raw = sum(self.raw.values())
        return sum(self.charged.values()) / raw if self.shared and raw > 0 else 1.0

    def apply(self, values: dict) -> dict:
        """``values`` with the charged CPU/RAM energy, the total, emissions and water scaled to match, and the
        mean powers scaled like their energies. Unchanged, to the bit, while the training was alone."""
        if not self.shared:
            return dict(values)
        removed = sum(self.raw[k] - self.charged[k] for k in self.raw)
        total = float(values.get("energy_consumed") or 0.0)
        # Never below 0: CodeCarbon sums its total reading by reading, the removed part is summed per component, and
        # a rank charged none of its node's CPU/RAM, with no GPU, came to -1e-20 kWh.
        kept = max(total - removed, 0.0)
        ratio = kept / total if total > 0 else 1.0
        changed = {**values, "energy_consumed": kept, "tracking_mode": SHARED_TRACKING_MODE}
        for key in ("emissions", "emissions_rate", "water_consumed"):
            changed[key] = float(values.get(key) or 0.0) * ratio
        for energy, power in (("cpu_energy", "cpu_power"), ("ram_energy", "ram_power")):
            changed[energy] = self.charged[energy]
            if self.raw[energy] > 0:
                changed[power] = float(values.get(power) or 0.0) * self.charged[energy] / self.raw[energy]
        return changed

    def describe(self) -> str:
        if self.ledger is None and self.part == 0.0:
            return "not counted by this rank: its node's CPU and RAM are counted once, by the node's first rank"
        if self.ledger is None:
            return "whole machine: CodeCarbon's machine mode (host sharing off)"
        if not self.ledger.available:
            return f"whole machine: {self.ledger.description}, so concurrent trainings are each charged all of it"
        if not self.shared:
            return "whole machine: no other eemlflow training was measured on this host during the run"
        return (f"shared: the host's CPU and RAM energy split equally among the eemlflow trainings measured on it at "
                f"the same time (up to {self.ledger.max_concurrent} at once); this run was charged "
                f"{self.share * 100:.1f} % of what CodeCarbon measured")


def _created(pid: int) -> float | None:
    try:
        import psutil  # a CodeCarbon dependency

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def _alive(pid: int, created: float | None) -> bool:
    """Whether ``pid`` is still the process that wrote the entry (not a later process given the same pid)."""
    now = _created(pid)
    if now is None:
        return False
    return created is None or abs(now - created) < 1.0
