"""The tracking store: how eemlflow reaches MLflow and keeps every record even when the store misbehaves.

Owns: connecting to a store (sqlite file, PostgreSQL, ``mlflow server``) with its schema created once under a
lock, get-or-create of experiments that tolerates concurrent writers, the translation of store failures into
one-line ``EemlflowError``s, and the resilient writer (bounded retries, then a local spool file that
``python -m eemlflow.runs replay`` puts back). May import ``eemlflow.errors`` and MLflow; nothing of training,
energy or the command lines.
"""

from eemlflow.store.connect import connect, experiment_id_for, search_all_runs
from eemlflow.store.writer import StoreWriter, is_transient, replay

__all__ = ["StoreWriter", "connect", "experiment_id_for", "is_transient", "replay", "search_all_runs"]
