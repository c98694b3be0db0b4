"""Which physical GPU CodeCarbon must measure: torch's ``cuda:N`` seen through ``CUDA_VISIBLE_DEVICES``.

CodeCarbon (through NVML) counts whole devices by NVML index, while torch numbers only the visible ones. Entries
of ``CUDA_VISIBLE_DEVICES`` are indices or, common with MIG and in containers, UUIDs (``GPU-…``, ``MIG-…``, or
a unique prefix of one). ``nvml_indices`` is the pure mapping; ``nvml_uuid_table`` reads the UUIDs from NVML.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from eemlflow.errors import EemlflowError


def nvml_indices(visible: Optional[str], torch_index: int, uuids: Mapping[str, int]) -> list[int]:
    """The NVML index of the device torch calls ``cuda:torch_index``.

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
    entry = entries[torch_index]
    if entry.isdigit():
        return [int(entry)]
    matches = {index for uuid, index in uuids.items() if uuid == entry or uuid.startswith(entry)}
    if len(matches) != 1:
        known = ", ".join(sorted(uuids)) or "none (NVML unavailable)"
        what = "matches no GPU" if not matches else "matches several GPUs"
        raise EemlflowError(f"CUDA_VISIBLE_DEVICES entry {entry!r} {what} that NVML reports ({known}); "
                            "use an index or a full UUID from nvidia-smi -L")
    return [matches.pop()]


def nvml_uuid_table() -> dict[str, int]:
    """Every GPU and MIG UUID NVML reports, with the index of its physical GPU; empty without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVIDIA driver: nothing to map, index entries still work
        return {}
    table: dict[str, int] = {}
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        table[_text(pynvml.nvmlDeviceGetUUID(handle))] = index
        try:
            for mig in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
                try:
                    table[_text(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, mig)))] = index
                except pynvml.NVMLError:  # an empty MIG slot
                    continue
        except pynvml.NVMLError:  # MIG not supported on this GPU
            pass
    return table


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def measured_gpu_ids(device: Any) -> Optional[list[int]]:
    """The NVML index of the torch ``device`` a training uses (CodeCarbon counts whole devices: measure only it);
    None for a CPU device."""
    if getattr(device, "type", "cpu") != "cuda":
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    needs_uuids = any(not v.strip().isdigit() for v in (visible or "").split(",") if v.strip())
    return nvml_indices(visible, device.index or 0, nvml_uuid_table() if needs_uuids else {})
