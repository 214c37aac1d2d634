"""FastAPI's native OpenTelemetry bridge stays off (#24): the API's telemetry is Prometheus and the prediction log.

On by default, the bridge asked the OpenTelemetry API for its global providers on every request, and with an
SDK configured in the process (MLflow brings one) it would open a span per request. The check runs in a
child process because a global tracer provider can be set only once per process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_CHILD = """
import json, sys
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
sys.path.insert(0, sys.argv[2])
from apisupport import settings_for
from inference_api.app import create_app

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
folder = sys.argv[1]
counts = {}
plain = FastAPI()
plain.get("/health/live")(lambda: {"status": "alive"})
ours = create_app(settings_for(f"sqlite:///{folder}/empty-mlflow.db", f"sqlite:///{folder}/log.db"))
for name, app in (("plain FastAPI", plain), ("the API", ours)):
    exporter.clear()
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/health/live").status_code == 200
    counts[name] = len(exporter.get_finished_spans())
print(json.dumps(counts))
"""


def test_the_api_opens_no_opentelemetry_span_even_with_an_sdk_configured(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["plain FastAPI"] > 0  # the bridge is there and the SDK records: the check can fail
    assert counts["the API"] == 0
