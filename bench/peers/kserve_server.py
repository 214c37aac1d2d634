"""KServe's Python model server serving the champion: one ``kserve.Model``, ``ModelServer`` with one worker.

POST /v1/models/readmission:predict with the V1 protocol, ``{"instances": [encounter, ...]}``; answers
``{"predictions": [[...], ...]}`` in ``model.classes_`` order. KServe's Python server has no adaptive batching
(batching is an add-on of KServe's Kubernetes deployment, an agent in front of the pod): every request is
one ``predict`` call. Run with the KServe virtualenv's Python (see peer_model.py for the environment):

    MODEL_URI=models:/diabetes-readmission/3 PORT=8080 var/bench-peers/kserve/bin/python bench/peers/kserve_server.py
"""

from __future__ import annotations

import socket
from typing import Any

from kserve import Model, ModelServer
from peer_model import PORT, Scorer, load_scorer

NAME = "readmission"


class ReadmissionModel(Model):
    scorer: Scorer

    def load(self) -> bool:
        self.scorer = load_scorer()
        self.ready = True
        return self.ready

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        return {"predictions": self.scorer(payload["instances"]).tolist()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    model = ReadmissionModel(NAME)
    model.load()
    ModelServer(http_port=PORT, grpc_port=_free_port(), workers=1).start([model])
