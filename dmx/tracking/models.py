"""A trained model in MLflow: `mlflow.pytorch.log_model` with a signature and an input example,
linked to the run that trained it, registered in the Model Registry when a name is given.

torch and mlflow.pytorch are imported inside the function: `dmx.tracking` stays torch-free for the
command line's `--help`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mlflow

from dmx.tracking.store import resolve_tracking_uri

MODEL_NAME = "ensemble"  # the logged model's name (its artifacts: RUN/artifacts/... via models:/)


@dataclass(frozen=True)
class LoggedModel:
    """Where a logged model is: `model_uri` (models:/m-...), the run it belongs to, and the
    Model Registry version when it was registered."""

    model_uri: str
    run_id: str
    registered_name: str = ""
    registered_version: str = ""


def log_ensemble_model(
    tracking_uri: str,
    run_id: str,
    model: Any,
    input_example: Any,
    *,
    registered_model_name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> LoggedModel:
    """Log `model` (an `nn.Module`: uint8 images (B, C, H, W) -> logits (B, K)) to the run
    `run_id` as an MLflow PyTorch model named "ensemble", with the signature inferred from
    `input_example` (a numpy uint8 batch) and the model's output on it, the example itself, and
    `metadata` (class names, source checkpoint). Saved in the "pt2" format (`torch.export`): loading
    it runs no pickled code. With `registered_model_name` a new version of that registered model
    is created. The run's status and end time are left as they were."""
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    uri = resolve_tracking_uri(tracking_uri)
    with torch.no_grad():
        output = model(torch.from_numpy(input_example)).numpy()
    signature = infer_signature(input_example, output)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # MLflow's model logging reads the global URI
    try:
        info = mlflow.pytorch.log_model(
            model,
            name=MODEL_NAME,
            signature=signature,
            input_example=input_example,
            registered_model_name=registered_model_name,
            metadata=dict(metadata or {}),
            serialization_format="pt2",
            # Stated, not inferred: inference loads the model in a subprocess (tens of seconds).
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"numpy=={np.__version__}",
                f"mlflow=={mlflow.__version__}",
            ],
            run_id=run_id,  # passed on to mlflow.models.Model.log: no active run needed
        )
    finally:
        mlflow.set_tracking_uri(previous)
    version = getattr(info, "registered_model_version", None)
    return LoggedModel(
        model_uri=info.model_uri,
        run_id=run_id,
        registered_name=registered_model_name or "",
        registered_version=str(version) if version is not None else "",
    )


__all__ = ["MODEL_NAME", "LoggedModel", "log_ensemble_model"]
