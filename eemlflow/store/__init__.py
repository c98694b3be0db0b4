"""The tracking store: where every figure of a run lives in MLflow, and how it gets there and back out.

Owns the study's schema and every MLflow key eemlflow writes or reads (``schema``); reaching a store with its
schema created once under a lock, race-tolerant get-or-create, one-line errors (``connect``); the resilient
writer — bounded retries, then a local spool that ``python -m eemlflow.runs replay`` puts back (``writer``); one
training run's records (``run``); the CSV export and the ingest of published CSVs (``export``, ``ingest``).
May import ``eemlflow.training`` and ``eemlflow.measure`` (for the types it logs), ``eemlflow.parent`` (whether a
process is alive), MLflow and pandas; nothing of the runner, the sweep or the command lines.
"""

from eemlflow.store.connect import connect, experiment_id_for, search_all_runs
from eemlflow.store.writer import StoreWriter, is_transient, replay

__all__ = ["StoreWriter", "connect", "experiment_id_for", "is_transient", "replay", "search_all_runs"]
