"""The trained model in MLflow: ``mlflow.pytorch`` with a signature and an input example of the dataset's shape.

Logged once a run has finished training and its energy is measured, before the run is closed: the seconds spent
writing the model are in no energy column (they are not training). May import MLflow, torch and numpy.
"""

from __future__ import annotations

import logging

import torch

from eemlflow.store import schema

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # runs:/<run_id>/model


def log_trained_model(run_id: str, model: torch.nn.Module, example: torch.Tensor,
                      register_as: str | None = None) -> str:
    """Log ``model`` (in eval mode, on the CPU) to run ``run_id`` with its signature and ``example`` (one batch of
    the evaluation data as the model sees it); register it as ``register_as`` when given. Returns its model URI."""
    import mlflow.pytorch
    import timm
    from mlflow.models import infer_signature

    model = model.eval().to("cpu")
    inputs = example[:2].detach().to("cpu", torch.float32).contiguous().numpy()
    with torch.no_grad():
        outputs = model(torch.from_numpy(inputs)).float().numpy()
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"]
    info = mlflow.pytorch.log_model(model, name=MODEL_NAME, signature=infer_signature(inputs, outputs),
                                    input_example=inputs, registered_model_name=register_as or None, run_id=run_id,
                                    serialization_format="pickle",  # loads back as the torch.nn.Module it was
                                    pip_requirements=requirements)
    return info.model_uri


def model_tags(run_id: str, model: torch.nn.Module, example: torch.Tensor, register_as: str | None) -> dict[str, str]:
    """``log_trained_model``, as the run's tags: the model's URI, or why it could not be logged. A failure is warned,
    not raised: the training it took is measured and kept either way, and the run still FINISHES."""
    try:
        return {schema.MODEL_TAG: log_trained_model(run_id, model, example, register_as)}
    except Exception as e:
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
        log.warning("the trained model could not be logged: %s", reason)
        return {schema.MODEL_ERROR_TAG: reason}
