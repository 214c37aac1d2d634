"""Realistic load on the inference API.

    locust -f locust/locustfile.py --host http://127.0.0.1:8000                 # the web UI on :8089
    locust -f locust/locustfile.py,locust/capacity.py --headless --host ...    # the capacity finder

Payloads are encounters drawn from the CLEAN test split (LOADTEST_CLEAN_URL; default: the embedded
default's var/clean.db), so they follow the real data's distribution, in the request model's terms. The mix:
single predictions, batches, and a small share of deliberately invalid requests that must get 422 (a 422
counts as a success, anything else as a failure).
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import MasterRunner

from readmission.clean import sample_encounters
from readmission.db import create_db_engine

PAYLOADS: list[dict[str, Any]] = []

# Invalid encounters: each breaks one rule of the contract the API must refuse with 422.
CORRUPTIONS: tuple[tuple[str, Any], ...] = (
    ("age", "[100-110)"),  # not a bracket of the contract
    ("time_in_hospital", 99),  # above the range (1-14)
    ("admission_type_id", 42),  # not a code of the lookup table
    ("num_medications", "12"),  # a string where the contract wants a number
    ("diag_1", "not-a-code"),  # not an ICD-9 code
    ("discharge_disposition_id", 11),  # expired: outside the model's population (422 not_eligible)
)


def _setting(name: str, default: str) -> str:
    return os.environ.get(name) or default


BATCH_MAX = int(_setting("LOADTEST_BATCH_MAX", "50"))  # read once, not on every task


@events.init.add_listener
def _load_payloads(environment: Environment, **_: Any) -> None:
    """Draw the payloads once per process that runs users (not a distributed master) before any user starts."""
    if PAYLOADS or isinstance(environment.runner, MasterRunner):
        return
    url = _setting("LOADTEST_CLEAN_URL", "sqlite:///var/clean.db")
    rows = int(_setting("LOADTEST_PAYLOAD_ROWS", "2000"))
    engine = create_db_engine(url)
    try:
        PAYLOADS.extend(sample_encounters(engine, rows, seed=int(_setting("LOADTEST_SEED", "0"))))
    finally:
        engine.dispose()


class ApiUser(FastHttpUser):
    """A client of the API: mostly single predictions, some batches, a few invalid requests."""

    wait_time = between(float(_setting("LOADTEST_WAIT_MIN", "0.5")), float(_setting("LOADTEST_WAIT_MAX", "1.5")))

    @task(16)
    def predict(self) -> None:
        self.client.post("/predict", json=random.choice(PAYLOADS), name="/predict")

    @task(3)
    def predict_batch(self) -> None:
        size = random.randint(10, BATCH_MAX)
        self.client.post("/predict/batch", json={"encounters": random.sample(PAYLOADS, size)}, name="/predict/batch")

    @task(1)
    def invalid(self) -> None:
        field, value = random.choice(CORRUPTIONS)
        body = json.dumps({**random.choice(PAYLOADS), field: value})
        with self.client.post(
            "/predict",
            data=body,
            headers={"Content-Type": "application/json"},
            name="/predict [invalid: expect 422]",
            catch_response=True,
        ) as response:
            if response.status_code == 422:
                response.success()
            else:
                response.failure(f"invalid {field}={value!r} got HTTP {response.status_code}, expected 422")
