"""Measurement: what a training costs, in energy and carbon, and how each figure was obtained.

Owns CodeCarbon's tracker behind Zeus-style begin/end windows (``energy``: ``EnergyMonitor``), the values the
windows return (``readings``: ``EnergyReading``, ``EnergyResult``, ``Provenance``, resumed segments), the rules
that make figures suspect (``suspicion``), the hardware counters CodeCarbon is checked against (``counters``:
NVML, RAPL), NVIDIA's library opened in one place (``nvml``), the share of a host's CPU and RAM charged to each of
its concurrent trainings (``host_share``), one run's energy summed over its ranks, each GPU and each node's
CPU/RAM counted once (``ranks``), the devices' idle baseline (``idle``), unit factors (``units``), a run's
projected totals and its budgets (``projection``), the choice of the GPU to measure (``gpu_ids``) and CodeCarbon's
timer kept from measuring beside the monitor or after its stop (``sampling``). May import
``eemlflow.errors``, ``eemlflow.atomic``, ``eemlflow.parent`` (whether a rank's process is alive), CodeCarbon and
NVML; nothing of training, MLflow or the CLIs.
"""

from eemlflow.lazy import lazy_exports

_EXPORTS = {
    "EnergyMonitor": "eemlflow.measure.energy",
    "measured_gpu_ids": "eemlflow.measure.gpu_ids",
    "nvml_indices": "eemlflow.measure.gpu_ids",
    "EnergyReading": "eemlflow.measure.readings",
    "EnergyResult": "eemlflow.measure.readings",
    "Provenance": "eemlflow.measure.readings",
    "suspicions": "eemlflow.measure.suspicion",
    "J_PER_KWH": "eemlflow.measure.units",
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
__all__ = sorted(_EXPORTS)
