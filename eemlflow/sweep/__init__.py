"""Sweeps: a grid of trainings as one resumable MLflow parent run with a child run per cell.

Owns the grid file and its cells (``grid``), the sweep's records in MLflow — cell states, the parent and its totals
(``bookkeeping``) — the forecast of what the cells will cost (``forecast``), from a short real calibration
(``calibration``, run in a process of its own by ``calibration_process``), and the scheduler that runs each cell in
its own training process (``scheduler``) on its slots (``slots``: a GPU each; a cell of several processes takes
several); ``python -m eemlflow.sweep`` is its command line (``__main__``). May import ``eemlflow.training`` (settings,
validation, the recipe a calibration runs), ``eemlflow.measure`` and ``eemlflow.store``; it starts trainings as
processes, so it never imports the runner.
"""

from eemlflow.store.schema import CELL_TAG
from eemlflow.sweep.grid import Cell, Grid, load_grid

__all__ = ["CELL_TAG", "Cell", "Grid", "load_grid"]
