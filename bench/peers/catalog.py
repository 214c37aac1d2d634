"""The serving frameworks bench/api.py measures ours against: how each is started, asked and read.

Each peer runs its own server program (``bench/peers/<peer>_server.py``) with the Python of its own virtualenv
(venvs.py), in variants: the stock path (``model.predict_proba`` on a DataFrame, what a user of the framework
writes) or our compiled predictor (``readmission.serving.Predictor``), each with the framework's adaptive
batching on and off where it has one. Request bodies carry the same encounters as ours, in the framework's own
protocol; ``probabilities`` reads an answer back as rows in ``model.classes_`` order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Rows = list[dict[str, Any]]
Probabilities = list[list[float]]

# The most a batch may wait for more requests, in the bench: the peers' batch timeout (LitServe's batch_timeout,
# MLServer's max_batch_time; both frameworks default to 0, no wait) and, when a peer with batching runs and
# bench/api.py's --ours-wait-ms is not given, our MICROBATCH_MAX_WAIT_MS (ours waits only while other requests
# are in flight). BentoML keeps its own adaptive window.
BATCH_WINDOW_MS = 10.0


@dataclass(frozen=True)
class Peer:
    name: str
    package: str  # its distribution in requirements/bench-peers.txt
    ready_path: str
    path: str  # single encounters and batches alike
    body: Callable[[Rows, bool], Any]  # (rows, batch request?) -> JSON body
    probabilities: Callable[[Any], Probabilities]  # JSON answer -> probabilities
    batching: str  # its adaptive batching, or why it has none

    @property
    def script(self) -> str:
        return f"{self.name}_server.py"

    @property
    def batches(self) -> bool:
        """Whether the framework has adaptive batching of its own (variants with it on and off)."""
        return self.batching.startswith("adaptive")


@dataclass(frozen=True)
class Variant:
    peer: Peer
    predictor: str  # "stock" or "compiled"
    batching: bool

    @property
    def name(self) -> str:
        return f"{self.peer.name}/{self.predictor}{'-batching' if self.batching else ''}"

    @property
    def label(self) -> str:
        what = "stock" if self.predictor == "stock" else "our compiled predictor,"
        return f"{what} {'batching' if self.batching else 'no batching'}"

    def env(self) -> dict[str, str]:
        """The peer server's environment for this variant (read by ``peer_model``)."""
        return {
            "PEER_PREDICTOR": self.predictor,
            "PEER_BATCHING": "on" if self.batching else "off",
            "PEER_MAX_WAIT_MS": f"{BATCH_WINDOW_MS:g}",
        }


def _mlserver_body(rows: Rows, _batch: bool) -> dict[str, Any]:
    encounters = [json.dumps(row) for row in rows]
    tensor = {"name": "encounters", "shape": [len(rows)], "datatype": "BYTES", "data": encounters}
    return {"inputs": [{**tensor, "parameters": {"content_type": "str"}}]}


def _mlserver_probabilities(answer: dict[str, Any]) -> Probabilities:
    output = answer["outputs"][0]
    data, (_, width) = output["data"], output["shape"]
    return [data[i : i + width] for i in range(0, len(data), width)]


PEERS = {
    peer.name: peer
    for peer in (
        Peer("litserve", "litserve", "/health", "/predict",
             lambda rows, batch: {"encounters": rows} if batch else rows[0], lambda a: a["probabilities"],
             f"adaptive: LitAPI max_batch_size=64 requests, batch_timeout={BATCH_WINDOW_MS:g} ms; ZeroMQ queues "
             "(fast_queue)"),
        Peer("bentoml", "bentoml", "/readyz", "/predict", lambda rows, _: {"rows": rows}, lambda a: a,
             "adaptive: batchable API, max_batch_size=256 rows, its adaptive window"),
        Peer("mlserver", "mlserver", "/v2/models/readmission/ready", "/v2/models/readmission/infer",
             _mlserver_body, _mlserver_probabilities,
             f"adaptive: max_batch_size=64 requests, max_batch_time={BATCH_WINDOW_MS:g} ms (model-settings)"),
        Peer("kserve", "kserve", "/v1/models/readmission", "/v1/models/readmission:predict",
             lambda rows, _: {"instances": rows}, lambda a: a["predictions"],
             "none: KServe's Python model server has no adaptive batching (only its Kubernetes agent batches)"),
    )
}  # fmt: skip


def variants(peer: Peer) -> list[Variant]:
    """Stock and compiled, each with batching on and off (off only, where the framework has none)."""
    switches = (True, False) if peer.batches else (False,)
    return [Variant(peer, predictor, on) for predictor in ("stock", "compiled") for on in switches]
