"""Which physical GPU a training measures: torch's ``cuda:N`` mapped to NVML's device, and one measurer per GPU.

CodeCarbon (through NVML) counts whole devices by NVML index, while torch numbers only the visible ones, in
``CUDA_DEVICE_ORDER`` (fastest first unless it is ``PCI_BUS_ID``; NVML's order is the PCI bus's). The device's
UUID, which torch reports, is the same in both worlds: it is the mapping whenever it is known. Otherwise the
entries of ``CUDA_VISIBLE_DEVICES`` decide: indices (NVML's only under ``PCI_BUS_ID``, which the command lines
set when it is unset) or UUIDs (``GPU-…``, ``MIG-…``, or a unique prefix of one). A MIG slice is measured as its
physical GPU: NVML has no per-slice energy counter.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from eemlflow.errors import EemlflowError
from eemlflow.measure.nvml import uuid_table

PCI_BUS_ID = "PCI_BUS_ID"


def nvml_indices(visible: str | None, torch_index: int, uuids: Mapping[str, int]) -> list[int]:
    """The NVML index of the device torch calls ``cuda:torch_index``, from ``CUDA_VISIBLE_DEVICES`` alone.

    Args:
        visible: the value of ``CUDA_VISIBLE_DEVICES`` (None when unset).
        torch_index: torch's device index.
        uuids: NVML's UUIDs (GPU and MIG) -> the index of the physical GPU they belong to.
    """
    if visible is None or not visible.strip():
        return [torch_index]
    entries = [v.strip() for v in visible.split(",") if v.strip()]
    if torch_index >= len(entries):
        raise EemlflowError(f"cuda:{torch_index} is not among the {len(entries)} GPUs in CUDA_VISIBLE_DEVICES="
                            f"{visible!r}: list more GPUs there or train on cuda:0")
    return [physical_gpu(entries[torch_index], uuids)]


def physical_gpu(entry: str, uuids: Mapping[str, int]) -> int:
    """The NVML index of the physical GPU one ``CUDA_VISIBLE_DEVICES`` (or ``--gpus``) entry names."""
    entry = entry.strip()
    if entry.isdigit():
        return int(entry)
    matches = {index for uuid, index in uuids.items() if uuid == entry or uuid.startswith(entry)}
    if len(matches) != 1:
        known = ", ".join(sorted(uuids)) or "none (NVML unavailable)"
        what = "matches no GPU" if not matches else "matches several GPUs"
        raise EemlflowError(f"GPU {entry!r} {what} that NVML reports ({known}); "
                            "use an index or a full UUID from nvidia-smi -L")
    return matches.pop()


def index_of_uuid(torch_uuid: str, uuids: Mapping[str, int]) -> int | None:
    """The physical GPU whose (GPU or MIG) UUID is torch's ``torch_uuid`` (torch prints it without the ``GPU-``
    prefix); None when NVML does not know it."""
    bare = torch_uuid.strip().removeprefix("GPU-").removeprefix("MIG-")
    for uuid, index in uuids.items():
        if uuid.removeprefix("GPU-").removeprefix("MIG-") == bare:
            return index
    return None


def measured_gpu_ids(device_type: str, torch_index: int = 0, torch_uuid: str | None = None) -> list[int]:
    """The NVML indices a training on torch's ``device_type:torch_index`` measures: [] on the CPU (no GPU is
    charged to it, however many the host has), the device's own physical GPU on CUDA."""
    if device_type != "cuda":
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    table = uuid_table()
    if torch_uuid:
        index = index_of_uuid(torch_uuid, table)
        if index is not None:
            return [index]
    return nvml_indices(visible, torch_index, table)


def check_one_measurer(entries: Sequence[str]) -> None:
    """The physical GPUs of a ``--gpus`` list, refusing one named twice (also as two MIG slices of one GPU): two
    trainings on one GPU would each be charged the whole GPU's energy."""
    table = uuid_table()
    seen: dict[int, str] = {}
    for entry in entries:
        index = physical_gpu(entry, table)
        if index in seen:
            same = "the same entry" if seen[index] == entry else f"{seen[index]!r} and {entry!r}"
            raise EemlflowError(f"--gpus names physical GPU {index} twice ({same}): NVML counts a whole GPU, so "
                                "two cells on it would each be charged both trainings' energy; list each GPU once")
        seen[index] = entry


def default_device_order() -> None:
    """Number the visible GPUs as NVML and ``nvidia-smi`` do (PCI bus order) unless the user chose an order."""
    os.environ.setdefault("CUDA_DEVICE_ORDER", PCI_BUS_ID)
