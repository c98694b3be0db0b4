"""eemlflow: train timm image models under CodeCarbon and track every energy figure in MLflow.

Floors, from the bottom up; each imports only the floors below it (``tests/test_layers.py`` checks):

- ``errors``: ``EemlflowError``, the root exception for problems a user can fix; ``atomic`` (whole-file writes) and
  ``lazy`` (a package's names imported on first use, so a command that never trains never imports torch) and
  ``parent`` (a training that stops itself once the process that started it is gone; whether a process of this
  host is alive) beside it.
- ``training/``: what a run is and how it trains — ``TrainConfig`` (every setting and default), data, timm
  models, the study's recipe and epoch loop, the device data path.
- ``measure/``: what it costs — CodeCarbon energy windows returning ``EnergyReading``/``EnergyResult``, with
  provenance and suspicions; which GPU to measure.
- ``store/``: MLflow — the one map of keys (``schema``), connecting with a schema lock, the resilient writer and
  its spool, one training run's records, the CSV export and ingest libraries.
- ``runner``: one training run end to end (config -> data + model -> loop, measured, logged).
- ``sweep/``: a grid of runs as one resumable parent run, each cell a training process.
- Command lines, thin, on top: ``train``, ``export``, ``ingest``, ``runs``, ``sweep/__main__``, with ``cli``
  (errors and exit codes) and ``progress`` (rich displays).
"""

from eemlflow.errors import EemlflowError

__version__ = "0.1.0"

__all__ = ["EemlflowError", "__version__"]
