"""The monitor as a job: ``python -m inference_api.monitor`` (the CronJob model-monitor, hourly).

The same run as ``readmission monitor`` (``readmission.cli.monitor_run``), with the same settings (PREDICTION_LOG_URL,
MLFLOW_TRACKING_URI and its credentials, MONITOR_*, AIRFLOW_*), in the API's image, which has no typer or rich:
it logs plain lines instead of tables. Exit status: 0 done; 1 the database failed (the Job retries; the results
of one run are one transaction), or the registry could not be read for a served version (the results without
its test ROC-AUC and drift are stored, and the Job fails so that it is seen); 2 invalid settings.
"""

from __future__ import annotations

import logging
import os
import sys

from pydantic import ValidationError

log = logging.getLogger("inference_api.monitor")


def main() -> int:
    """Run the monitor once; the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a job's log, not a terminal
    from readmission.cli.monitor_run import run
    from readmission.cli.settings import Settings
    from readmission.errors import short_reason
    from readmission.monitoring import report_lines
    from readmission.retention import PredictionLogMissingError

    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        log.error("invalid setting (%s)", problems)
        return 2
    settings.export_mlflow_credentials()
    try:
        report = run(settings)
    except PredictionLogMissingError as exc:  # a new install before its first prediction: nothing to watch
        log.info("nothing to monitor: %s", exc)
        return 0
    except Exception as exc:  # the database or the registry: the Job's retry may succeed
        log.error("monitor run failed: %s", short_reason(exc))
        return 1
    for line in report_lines(report):
        log.info("%s", line)
    unread = [v.model_version for v in report.versions if (v.drift_problem or "").startswith("cannot read version")]
    if unread:  # stored, but without test ROC-AUC or drift: the alerts that need them cannot fire
        log.error("the registry could not be read for version(s) %s: the Job fails so that it is seen", unread)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
