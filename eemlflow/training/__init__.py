"""Training: what a run is (``TrainConfig``), its data, its model and the study's recipe, epoch by epoch.

Owns the settings and their defaults (``config``), CIFAR/digits/synthetic images (``data``), timm model creation
(``models``) and its names, checked without importing timm (``model_names``), the device a run trains on
(``devices``), the recipe built from timm's factories and the epoch loop (``recipe``), the same augmentations done
batch-wise on the device (``device_data``), and data-parallel training over torchrun's ranks (``ranks``: who this
process is; ``distributed``: the process group, DDP and the sums over ranks). The bottom floor: it may import
``eemlflow.errors``, torch, timm and numpy — nothing of energy measurement, MLflow or the command lines, so that it
can be reused and tested alone.
"""

from eemlflow.lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "eemlflow.training.config",
    "ImageData": "eemlflow.training.data",
    "check_available": "eemlflow.training.datasets",
    "load_data": "eemlflow.training.datasets",
    "check_model_name": "eemlflow.training.model_names",
    "create_model": "eemlflow.training.models",
    "EpochResult": "eemlflow.training.recipe",
    "Recipe": "eemlflow.training.recipe",
    "build_recipe": "eemlflow.training.recipe",
    "device_identity": "eemlflow.training.devices",
    "eval_step": "eemlflow.training.recipe",
    "resolve_device": "eemlflow.training.devices",
    "run_epochs": "eemlflow.training.recipe",
    "synchronizer": "eemlflow.training.devices",
    "train_loss_fn": "eemlflow.training.recipe",
    "train_step": "eemlflow.training.recipe",
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
__all__ = sorted(_EXPORTS)
