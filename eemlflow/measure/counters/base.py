"""What every energy counter is (``EnergyCounter``), what the registry knows of each kind (``CounterSpec``), and
the counter that stands in where the hardware is missing (``NullCounter``).

A counter is read at window boundaries as a cumulative figure in kWh since it was opened (Zeus's method), so the
monitor can place it at the moment CodeCarbon read the same hardware. It never raises on a machine without the
hardware: it says why in ``description`` and reads None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


class EnergyCounter(Protocol):
    """A cumulative energy reading beside CodeCarbon's, to check it against."""

    available: bool
    description: str  # what it reads ("... (measured), GPU 0"), or "unavailable: why" / "not read: why"

    def read_kwh(self) -> float | None:
        """Energy since the counter was opened, in kWh; None when unavailable (then ``description`` says why)."""

    def close(self) -> None:
        """Stop whatever the counter runs (a poller thread); reads after it may be None."""


class NullCounter:
    """No hardware to read: every reading is None and ``description`` says why."""

    available = False

    def __init__(self, why: str) -> None:
        self.description = why

    def read_kwh(self) -> float | None:
        return None

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class CounterSpec:
    """One kind of counter, as the registry lists it: everything else (readings, checkpoints, the MLflow keys, the
    suspicion rule, the provenance tag) is derived from these fields.

    ``name`` is the figure's name in readings, checkpoints and the exported extras (``summary/<name>`` over the
    run, ``epoch_energy/<name>`` per epoch); ``checks`` is the part of CodeCarbon's figures it is compared with
    (``gpu`` or ``cpu``: ``gpu_energy`` measured by CodeCarbon's ``GPU`` object; ``total``: ``energy_consumed``, a
    node meter's, placed at CodeCarbon's own clock); ``open`` makes the counter for a
    training's physical GPUs (empty for a CPU training) when the run's window opens.
    """

    name: str
    checks: str
    title: str  # how a warning names it: "NVML counter"
    doc: str  # what it reads, for the schema and the README
    open: Callable[[Sequence[int]], EnergyCounter]
    suspect_pct: float = 2.0  # CodeCarbon further than this from the counter over a run makes the run suspect
    discrepancy: str = ""  # its (CodeCarbon - counter) / counter figure; "<name minus _kwh>_discrepancy_pct"
    provenance: str = ""  # the ``energy.<...>`` tag that says what was read; "<name minus _energy_kwh>_counter"

    def __post_init__(self) -> None:
        if self.checks not in ("gpu", "cpu", "total"):
            raise ValueError(f"counter {self.name!r} checks {self.checks!r}: it must check gpu, cpu or total energy")
        stem = self.name.removesuffix("_kwh")
        object.__setattr__(self, "discrepancy", self.discrepancy or f"{stem}_discrepancy_pct")
        object.__setattr__(self, "provenance", self.provenance or f"{stem.removesuffix('_energy')}_counter")

    @property
    def codecarbon_figure(self) -> str:
        """CodeCarbon's field it is compared with: ``gpu_energy``, ``cpu_energy`` or ``energy_consumed`` (kWh)."""
        return "energy_consumed" if self.checks == "total" else f"{self.checks}_energy"

    @property
    def hardware(self) -> str:
        """CodeCarbon's hardware class that reads the same thing (``GPU``, ``CPU``), whose reads it is timed to;
        ``total`` for a node meter, which no one class reads (it is placed at CodeCarbon's clock)."""
        return self.checks if self.checks == "total" else self.checks.upper()
