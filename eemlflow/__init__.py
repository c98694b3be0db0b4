"""eemlflow: train timm image models under CodeCarbon and track every energy figure in MLflow.

Modules, from the bottom layer up:

- ``errors``: ``EemlflowError``, the root exception for problems a user can fix.
- ``config``: ``TrainConfig``, every training setting and its default, validated.
- ``schema``: the study's 42 CSV columns and where each lives on an MLflow run.
- ``data``: CIFAR-10/100 (on-disk format), scikit-learn digits and synthetic images.
- ``models``: timm model creation with helpful errors for unknown names.
- ``energy``: ``EnergyMonitor``, CodeCarbon measurement windows with provenance.
- ``loop``: the study's training recipe (timm's factories) and the epoch loop.
- ``tracking``: the MLflow run: params, per-epoch and final metrics, status.
- ``runner``: wires config, data, model, loop, energy and tracking into one run.
- ``train``/``export``/``ingest``: command-line entry points.
"""

from eemlflow.errors import EemlflowError

__version__ = "0.1.0"

__all__ = ["EemlflowError", "__version__"]
