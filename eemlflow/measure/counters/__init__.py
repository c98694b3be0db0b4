"""The hardware energy counters CodeCarbon's figures are checked against, as a registry (the Zeus pattern).

Each kind of counter is one module with a ``SPEC`` (``base.CounterSpec``) and one line in ``REGISTRY``; readings,
checkpoints, the MLflow keys (``summary/<name>``, ``epoch_energy/<name>``), the exported extras, the suspicion rule
and the provenance tags are derived from the registry, so adding a counter touches nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

from eemlflow.measure.counters import bmc_dcmi, nvml_energy, nvml_power, rapl
from eemlflow.measure.counters.base import CounterSpec, EnergyCounter, NullCounter
from eemlflow.measure.counters.nvml_energy import NvmlEnergyCounter
from eemlflow.measure.counters.rapl import RaplEnergyCounter

REGISTRY: tuple[CounterSpec, ...] = (
    nvml_energy.SPEC,
    nvml_power.SPEC,
    rapl.SPEC,
    bmc_dcmi.SPEC,
)
BY_NAME: dict[str, CounterSpec] = {spec.name: spec for spec in REGISTRY}


def open_counters(gpu_ids: Sequence[int], host: bool = True) -> dict[str, EnergyCounter]:
    """Every registered counter, opened for a training on the physical GPUs ``gpu_ids`` (empty: a CPU training),
    by name; a counter whose hardware is missing reads None and says why. ``host=False`` (a rank that is not its
    node's first): the node's own counters (CPU packages, the node meter) are left to the rank that measures it."""
    return {spec.name: spec.open(list(gpu_ids)) if host or spec.checks == "gpu"
            else NullCounter("not read by this rank: the node's first rank reads it") for spec in REGISTRY}


__all__ = ["BY_NAME", "REGISTRY", "CounterSpec", "EnergyCounter", "NullCounter", "NvmlEnergyCounter",
           "RaplEnergyCounter", "open_counters"]
