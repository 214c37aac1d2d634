"""BentoML 1.4 serving the champion: one ``@bentoml.service`` (one worker), one ``@bentoml.api``.

POST /predict with ``{"rows": [encounter, ...]}`` (one encounter or our batch's 100); answers the list of
probability rows in ``model.classes_`` order. With ``PEER_BATCHING=on`` the API is ``batchable``: BentoML's
adaptive batching gathers the rows of concurrent requests into one call, at most ``PEER_MAX_BATCH_ROWS``
rows (default 256, as our API's micro-batches) and its own adaptive window (``max_latency_ms`` left at its
default, which bounds the latency it sheds requests at). Running this file starts ``bentoml serve`` on it with
the BentoML virtualenv (see peer_model.py for the environment):

    MODEL_URI=models:/diabetes-readmission/3 PORT=3000 var/bench-peers/bentoml/bin/python bench/peers/bentoml_server.py
"""

# No `from __future__ import annotations`: BentoML builds the API's input and output schema from the annotations.
import os
import sys
from pathlib import Path
from typing import Any

import bentoml
from peer_model import BATCHING, PORT, load_scorer

MAX_BATCH_ROWS = int(os.environ.get("PEER_MAX_BATCH_ROWS", "256"))


@bentoml.service(workers=1)
class Readmission:
    def __init__(self) -> None:
        self.scorer = load_scorer()

    @bentoml.api(route="/predict", batchable=BATCHING, max_batch_size=MAX_BATCH_ROWS)
    def predict(self, rows: list[dict[str, Any]]) -> list[list[float]]:
        probabilities: list[list[float]] = self.scorer(rows).tolist()
        return probabilities


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    bentoml_cli = str(Path(sys.executable).with_name("bentoml"))
    command = [bentoml_cli, "serve", f"{Path(__file__).stem}:Readmission", "--working-dir", str(here)]
    os.execv(bentoml_cli, [*command, "--host", "127.0.0.1", "--port", str(PORT)])
