"""FastAPI's native OpenTelemetry bridge stays off (#24): the API's telemetry is Prometheus and the prediction log.

On by default, the bridge asked the OpenTelemetry API for its global providers on every request, and with an
SDK tracer or meter provider configured in the process (MLflow installs the SDK; an operator's OpenTelemetry
set-up could configure one) it would record a span and metrics per request. Tracing and metrics are checked
here (the logs bridge records nothing for a plain request, so a check of it could not fail). The check runs
in a child process because a global provider can be set only once per process.
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
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
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
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))


def points():
    # Measurements recorded so far: a histogram point's count, a counter's or gauge's value.
    data = reader.get_metrics_data()
    if data is None:
        return 0
    return sum(
        getattr(point, "count", None) or abs(getattr(point, "value", 0)) or 0
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    )


folder = sys.argv[1]
counts = {}
plain = FastAPI()
plain.get("/health/live")(lambda: {"status": "alive"})
ours = create_app(settings_for(f"sqlite:///{folder}/empty-mlflow.db", f"sqlite:///{folder}/log.db"))
for name, app in (("the API", ours), ("plain FastAPI", plain)):
    exporter.clear()
    before = points()
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/health/live").status_code == 200
    counts[name] = {"spans": len(exporter.get_finished_spans()), "measurements": points() - before}
print(json.dumps(counts))
"""


def test_the_api_records_no_opentelemetry_span_or_metric_even_with_an_sdk_configured(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    # The bridge is there and the SDK records, so the check can fail.
    assert counts["plain FastAPI"]["spans"] > 0 and counts["plain FastAPI"]["measurements"] > 0
    assert counts["the API"] == {"spans": 0, "measurements": 0}
