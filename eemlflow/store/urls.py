"""Where a person opens a run or an experiment in the MLflow UI, in its training view.

MLflow 3's UI opens on its GenAI view (traces, judges, evaluation runs); it takes the view from the URL's
``workflowType=machine_learning`` (or from the browser's memory of the last toggle), so every address eemlflow
prints carries it. For a server the address is the server's; for a local store (sqlite or a folder) it is the
address ``mlflow ui`` serves by default, with the command that starts it.
"""

from __future__ import annotations

TRAINING_VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # the UI's kind of an experiment
TRAINING_KIND = "custom_model_development"


def ui_base(tracking_uri: str) -> str:
    """The UI's address for this store: the server itself, or what ``mlflow ui`` serves for a local store."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI


def run_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The run's page (or, without a run, the experiment's runs table) in the training view."""
    page = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return f"{ui_base(tracking_uri)}/{page}?{TRAINING_VIEW}"


def ui_hint(tracking_uri: str) -> str:
    """How to reach the UI: nothing to start for a server, the ``mlflow ui`` command for a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return ""
    return f" (start the UI first: mlflow ui --backend-store-uri {tracking_uri})"
