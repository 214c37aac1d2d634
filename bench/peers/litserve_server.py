"""LitServe serving the champion: one ``LitAPI``, one inference worker, one API server process.

POST /predict with one encounter (the body of our POST /predict) or ``{"encounters": [...]}`` (our batch body);
answers ``{"probabilities": [[...], ...]}`` in ``model.classes_`` order. With ``PEER_BATCHING=on`` LitServe
gathers concurrent requests (``max_batch_size``, ``batch_timeout``) and ``predict`` gets them as one list.
``PEER_FAST_QUEUE=off`` keeps LitServe's default multiprocessing queues instead of ZeroMQ (``fast_queue``,
which its documentation advises above 100 requests/s). Run with the LitServe virtualenv's Python (see
peer_model.py for the rest of the environment):

    MODEL_URI=models:/diabetes-readmission/3 PORT=8000 var/bench-peers/litserve/bin/python bench/peers/litserve_server.py
"""

import os
from typing import Any

import litserve as ls
import numpy as np
from peer_model import BATCHING, MAX_BATCH, MAX_WAIT_MS, PORT, Rows, Scorer, load_scorer, split


class ReadmissionAPI(ls.LitAPI):
    scorer: Scorer

    def setup(self, device: str) -> None:
        self.scorer = load_scorer()

    # decode_request's and encode_response's annotations would become the endpoint's request and response
    # types (FastAPI validation of both): left out, as in LitServe's examples, the body is read as JSON.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        rows: Rows = request.get("encounters", [request])
        return rows

    def predict(self, x: Any) -> Any:
        if not BATCHING:
            return self.scorer(x)
        batch: list[Rows] = x
        return split(self.scorer([row for rows in batch for row in rows]), [len(rows) for rows in batch])

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        probabilities: np.ndarray = output
        return {"probabilities": probabilities.tolist()}


if __name__ == "__main__":
    api = ReadmissionAPI(max_batch_size=MAX_BATCH, batch_timeout=MAX_WAIT_MS / 1000) if BATCHING else ReadmissionAPI()
    server = ls.LitServer(
        api, accelerator="cpu", workers_per_device=1, fast_queue=os.environ.get("PEER_FAST_QUEUE", "on") == "on"
    )
    server.run(host="127.0.0.1", port=PORT, num_api_servers=1, log_level="warning", generate_client_file=False)
