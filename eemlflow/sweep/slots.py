"""Where a sweep's cells run: ``Slot`` (one GPU, the machine, or a Ray task's share of the cluster), and how a cell
of several processes (``nproc_per_node`` > 1, one GPU each) takes that many GPU slots at once.

A cell needs one slot, or, where the slots are GPUs (``--gpus``, or a Ray cluster with GPUs), one per process: the
slot it starts in and ``partners`` lent to it until it ends, their GPUs given to it together
(``CUDA_VISIBLE_DEVICES=0,1``). Cells start in grid order: a cell waiting for enough free GPUs is not overtaken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from eemlflow.errors import EemlflowError
from eemlflow.sweep.executors import Job
from eemlflow.sweep.grid import Cell


@dataclass
class Slot:
    """A place to run one cell at a time: one GPU (``CUDA_VISIBLE_DEVICES``), the machine, or a Ray task."""

    gpu: str | None
    cell: Cell | None = None
    run_id: str = ""
    process: Job | None = None
    started: float = 0.0
    log_path: str = ""
    resumed: bool = False
    last_run_id: str = ""
    partners: list[Slot] = field(default_factory=list)  # other slots whose GPUs this slot's cell also trains on
    lent: bool = False  # a partner of another slot's cell

    @property
    def free(self) -> bool:
        return self.process is None and not self.lent

    @property
    def gpus(self) -> str | None:
        """The GPUs of this slot's cell, as ``CUDA_VISIBLE_DEVICES`` lists them (None: the executor places it)."""
        if self.gpu is None:
            return None
        return ",".join([self.gpu, *(p.gpu for p in self.partners if p.gpu is not None)])


def slots_needed(cell: Cell, per_gpu: bool) -> int:
    """How many slots ``cell`` takes: one per process where the slots are GPUs, else one."""
    return cell.config.nproc_per_node if per_gpu else 1


def check_fits(cells: Sequence[Cell], slots: Sequence[object], per_gpu: bool) -> None:
    """One line for a cell asking for more GPUs than the sweep has: it would never start."""
    for cell in cells:
        need = slots_needed(cell, per_gpu)
        if need > len(slots):
            raise EemlflowError(f"cell {cell.config.run_name} trains on nproc_per_node={need} GPUs, but the sweep has "
                                f"{len(slots)}: list more with --gpus, or lower nproc_per_node in the grid")


def claim(slots: Sequence[Slot], slot: Slot, need: int) -> bool:
    """Lend ``slot`` the ``need - 1`` other free slots a cell of ``need`` processes also needs; False (nothing
    taken) while fewer are free."""
    others = [s for s in slots if s is not slot and s.free][:need - 1]
    if len(others) < need - 1:
        return False
    for other in others:
        other.lent = True
    slot.partners = others
    return True


def release(slot: Slot) -> None:
    """Give back the slots lent to ``slot``'s cell, which has ended."""
    for other in slot.partners:
        other.lent = False
    slot.partners = []
