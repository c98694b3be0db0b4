"""The report: the grid's answer at a glance, as one self-contained HTML file and its figures as PNG.

Owns what the report reads from a store (``data``: rows with the efficiency columns, provenance tags, per-epoch
histories of the Pareto runs), its matplotlib figures (``figures``), the measurement statement generated from
the runs (``statement``) and the page that holds them (``page``); ``python -m eemlflow.report`` is its command
line (``__main__``). May import ``eemlflow.store`` and ``eemlflow.measure``; nothing of training, the runner or
the sweep (the sweep calls it at its end).
"""

from eemlflow.report.page import write_report

__all__ = ["write_report"]
