"""What every peer server computes, set by the environment bench/api.py starts it with.

- ``MODEL_URI`` (``models:/diabetes-readmission/<version>``) and ``MLFLOW_TRACKING_URI``: the champion, loaded
  with ``mlflow.sklearn.load_model``;
- ``PEER_PREDICTOR=stock`` (default): ``model.predict_proba`` on the frame ``readmission.serving.rows_to_frame``
  builds, what a user of the framework would write; ``compiled``: our ``readmission.serving.Predictor`` on
  the rows themselves, as our API calls it;
- ``PEER_BATCHING=on`` turns on the framework's own adaptive batching, with at most ``PEER_MAX_BATCH``
  requests (default 64) gathered for at most ``PEER_MAX_WAIT_MS`` milliseconds (default 10).

Rows are dicts keyed by the model's input names (the bodies our API gets); probabilities come back one row per
input row, columns in ``model.classes_`` order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Rows = Sequence[dict[str, Any]]
Scorer = Callable[[Rows], np.ndarray]

BATCHING = os.environ.get("PEER_BATCHING", "off") == "on"
MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "64"))
MAX_WAIT_MS = float(os.environ.get("PEER_MAX_WAIT_MS", "10"))
PORT = int(os.environ.get("PORT", "8000"))


def load_scorer() -> Scorer:
    """The champion's ``rows -> probabilities``, the stock way or through our compiled predictor."""
    import mlflow

    from readmission.serving import Predictor, rows_to_frame

    model = mlflow.sklearn.load_model(os.environ["MODEL_URI"])
    if os.environ.get("PEER_PREDICTOR", "stock") == "compiled":
        return Predictor(model).predict_proba

    def stock(rows: Rows) -> np.ndarray:
        probabilities: np.ndarray = model.predict_proba(rows_to_frame(rows))
        return probabilities

    return stock


def split(probabilities: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """The rows of one batched answer, given back to the requests they came from."""
    return np.split(probabilities, np.cumsum(counts)[:-1])
