"""Measurement: what a training costs, in energy and carbon, and how each figure was obtained.

Owns CodeCarbon's tracker behind Zeus-style begin/end windows (``energy``: ``EnergyMonitor``, ``EnergyReading``,
``EnergyResult``, provenance and suspicions), the hardware counters it is checked against (``counters``: NVML,
RAPL), unit factors (``units``), a run's projected totals and its budgets (``projection``) and the choice of the
GPU to measure (``gpu_ids``). May import ``eemlflow.errors``, CodeCarbon and NVML; nothing of training, MLflow or
the CLIs.
"""

from eemlflow.measure.energy import (J_PER_KWH, EnergyMonitor, EnergyReading, Provenance, suspicions)
from eemlflow.measure.gpu_ids import nvml_indices, nvml_uuid_table

__all__ = ["EnergyMonitor", "EnergyReading", "J_PER_KWH", "Provenance", "nvml_indices", "nvml_uuid_table",
           "suspicions"]
