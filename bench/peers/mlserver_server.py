"""MLServer 1.7 serving the champion through a custom runtime (``ReadmissionRuntime``), one parallel worker.

POST /v2/models/readmission/infer with the V2 inference protocol: one BYTES input ``encounters`` of shape [n],
each element an encounter as JSON (content type ``str``); answers one FP64 output ``probabilities`` of shape
[n, 3] in ``model.classes_`` order. With ``PEER_BATCHING=on`` the model settings turn on MLServer's adaptive
batching (``max_batch_size`` requests, ``max_batch_time`` seconds), which concatenates the inputs of
concurrent requests and splits the answer. Running this file writes the server and model settings to a
folder of the temporary directory and starts ``mlserver start`` on it with the MLServer virtualenv (see peer_model.py):

    MODEL_URI=models:/diabetes-readmission/3 PORT=8080 var/bench-peers/mlserver/bin/python bench/peers/mlserver_server.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse
from peer_model import BATCHING, MAX_BATCH, MAX_WAIT_MS, PORT, Scorer, load_scorer

NAME = "readmission"


class ReadmissionRuntime(MLModel):
    scorer: Scorer

    async def load(self) -> bool:
        self.scorer = load_scorer()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        encounters = StringCodec.decode_input(payload.inputs[0])
        probabilities = self.scorer([json.loads(encounter) for encounter in encounters])
        output = NumpyCodec.encode_output("probabilities", probabilities)
        return InferenceResponse(model_name=self.name, outputs=[output])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings(folder: Path) -> None:
    """settings.json (ports, no debug access log) and the model's model-settings.json in ``folder``."""
    server = {"host": "127.0.0.1", "http_port": PORT, "grpc_port": _free_port(), "metrics_port": _free_port()}
    places = {"metrics_dir": str(folder / ".metrics"), "environments_dir": str(folder / ".envs")}
    (folder / "settings.json").write_text(json.dumps({**server, **places, "debug": False, "parallel_workers": 1}))
    model: dict[str, Any] = {"name": NAME, "implementation": f"{Path(__file__).stem}.ReadmissionRuntime"}
    if BATCHING:
        model |= {"max_batch_size": MAX_BATCH, "max_batch_time": MAX_WAIT_MS / 1000}
    (folder / NAME).mkdir()
    (folder / NAME / "model-settings.json").write_text(json.dumps(model))


if __name__ == "__main__":
    folder = Path(tempfile.gettempdir()) / f"bench-mlserver-{PORT}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    _settings(folder)
    here = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    mlserver_cli = str(Path(sys.executable).with_name("mlserver"))
    os.execve(mlserver_cli, [mlserver_cli, "start", str(folder)], env)
