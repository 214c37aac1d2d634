"""The `readmission` command as a user runs it: help, the whole job, incremental loads, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from readmission.synthetic import write_synthetic_csv

# One trial per family: the same models on a fast or a loaded machine (a time budget alone is not).
FAST_TRAINING = {"TRAIN_TIME_BUDGET_SECONDS": "60", "TRAIN_MAX_TRIALS": "1", "TRAIN_FAMILIES": "logistic_regression"}


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean_env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATA_PATH", "RAW_DATABASE_URL", "CLEAN_DATABASE_URL", "PREDICTION_LOG_URL"}
    }
    return subprocess.run(
        [sys.executable, "-m", "readmission.cli.app", *args],
        cwd=cwd,
        env={**clean_env, **(env or {}), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=900,  # a hang guard (the per-test limit), not a speed limit
    )


def test_help_explains_every_command(tmp_path: Path) -> None:
    result = _cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in (
        "fetch",
        "load-raw",
        "build-clean",
        "status",
        "run",
        "synthesize",
        "train",
        "promote",
        "models",
        "evaluate",
    ):
        assert command in result.stdout
    assert "rollback" in result.stdout and "Models:" in result.stdout  # was: described fetch/load/clean only
    assert "purge-predictions" in result.stdout and "Prediction log" in result.stdout
    load_help = _cli("load-raw", "--help", cwd=tmp_path).stdout
    assert "--batches" in load_help and "pending batches" in load_help


def test_run_on_the_embedded_default_then_status(tmp_path: Path) -> None:
    data = write_synthetic_csv(tmp_path / "data.csv", rows=3_000, seed=11)
    result = _cli("run", "--data-path", str(data), cwd=tmp_path, env={"BATCH_SIZE": "1000", **FAST_TRAINING})
    assert result.returncode == 0, result.stderr
    assert "load-raw: 3 batch(es) loaded (3,000 rows), 0 already loaded, 0 pending" in result.stdout
    assert "RAW holds 3,000 rows in 3 batch(es) at sqlite:///var/raw.db" in result.stdout
    assert "build-clean:" in result.stdout
    assert "train: registered diabetes-readmission v1" in result.stdout
    assert "promoted to champion: no champion yet" in result.stdout
    assert "champion is diabetes-readmission v1" in result.stdout
    assert (tmp_path / "var" / "raw.db").is_file() and (tmp_path / "var" / "clean.db").is_file()
    status = _cli("status", cwd=tmp_path)
    assert "status: 3,000 raw rows in 3 of 3 batches" in status.stdout


def test_load_raw_batches_option_adds_one_batch_per_call(tmp_path: Path) -> None:
    data = write_synthetic_csv(tmp_path / "data.csv", rows=2_500, seed=11)
    env = {"BATCH_SIZE": "1000", "DATA_PATH": str(data)}
    first = _cli("load-raw", "--batches", "1", cwd=tmp_path, env=env)
    second = _cli("load-raw", "--batches", "1", cwd=tmp_path, env=env)
    assert "1 batch(es) loaded (1,000 rows), 0 already loaded, 2 pending" in first.stdout
    assert "1 batch(es) loaded (1,000 rows), 1 already loaded, 1 pending" in second.stdout


def test_offline_without_a_local_copy_fails_with_one_clear_line(tmp_path: Path) -> None:
    result = _cli("run", cwd=tmp_path, env={"DATA_URL": "http://127.0.0.1:9/uci.zip"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error: could not download the data set" in result.stderr
    assert "DATA_PATH=/path/to/diabetic_data.csv" in result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BATCH_SIZE": "lots"}, "invalid setting (BATCH_SIZE: Input should be a valid integer"),
        ({"TEST_FRACTION": "2"}, "invalid setting (TEST_FRACTION: Input should be less than 1)"),
    ],
)
def test_bad_settings_name_the_variable(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = _cli("status", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert message in result.stderr


def test_build_clean_before_loading_says_what_to_run(tmp_path: Path) -> None:
    result = _cli("build-clean", cwd=tmp_path)
    assert result.returncode == 1
    assert "run `readmission load-raw` first" in result.stderr


def test_synthesize_writes_a_loadable_file(tmp_path: Path) -> None:
    result = _cli("synthesize", "demo.csv", "--rows", "120", cwd=tmp_path)
    assert result.returncode == 0
    loaded = _cli("load-raw", "--data-path", "demo.csv", cwd=tmp_path)
    assert "(120 rows)" in loaded.stdout
    assert "not the official UCI file" in loaded.stderr


def test_model_commands_train_list_rollback_promote(tmp_path: Path) -> None:
    data = write_synthetic_csv(tmp_path / "data.csv", rows=3_000, seed=4)
    env = {"DATA_PATH": str(data), **FAST_TRAINING}
    first = _cli("promote", cwd=tmp_path, env=env)  # the first command creates the MLflow store
    assert "no `challenger` yet" in first.stderr
    assert " INFO " not in first.stderr, first.stderr  # was: "INFO mlflow.store.db.utils: Creating initial ..."
    whole = _cli("run", cwd=tmp_path, env=env)
    assert whole.returncode == 0, whole.stderr
    steps = [line.split(":")[0].strip() for line in whole.stderr.splitlines() if line.strip()]
    for step in ("select", "evidence", "register", "gate"):  # the steps after the trials say what they do
        assert step in steps, whole.stderr
    second = _cli("train", cwd=tmp_path, env=env)
    assert "train: registered diabetes-readmission v2" in second.stdout
    assert "does not beat champion v1" in second.stdout  # same data, same seed: no gain, no promotion

    listing = _cli("models", cwd=tmp_path, env=env)
    assert "models: 2 version(s); champion v1" in listing.stdout
    assert "challenger" in listing.stdout

    assert "rollback: champion is now v2 (was v1)" in _cli("rollback", "02", cwd=tmp_path, env=env).stdout
    assert "models: 2 version(s); champion v2" in _cli("models", cwd=tmp_path, env=env).stdout
    missing = _cli("rollback", "9", cwd=tmp_path, env=env)
    assert missing.returncode == 1
    assert "has no version 9 (known versions: 1, 2)" in missing.stderr
    for wrong, says in (("99", "has no version 99 (known versions: 1, 2)"), ("latest", "are numbers")):
        refused = _cli("promote", "--version", wrong, cwd=tmp_path, env=env)  # was: blamed the registry
        assert refused.returncode == 1 and says in refused.stderr and "registry failed" not in refused.stderr
    # v1 and v2 are the same model (same data and seed): the gate keeps the champion.
    promote = _cli("promote", "--version", "1", cwd=tmp_path, env=env)
    assert "promote: v1 not promoted" in promote.stdout
    assert "models: 2 version(s); champion v2" in _cli("models", cwd=tmp_path, env=env).stdout


def test_train_before_the_clean_dataset_exists_says_what_to_run(tmp_path: Path) -> None:
    result = _cli("train", cwd=tmp_path, env=FAST_TRAINING)
    assert result.returncode == 1
    assert "run `readmission build-clean` first" in result.stderr


def test_unknown_model_family_is_named(tmp_path: Path) -> None:
    result = _cli("train", cwd=tmp_path, env={"TRAIN_FAMILIES": "xgboost"})
    assert result.returncode == 1
    assert "invalid setting TRAIN_FAMILIES: unknown model families ['xgboost']" in result.stderr


def test_an_unreachable_registry_is_one_line_and_a_bad_version_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    for command in (("models",), ("rollback", "1")):
        result = _cli(*command, cwd=tmp_path, env=down)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "error: the MLflow registry failed" in result.stderr and "MLFLOW_TRACKING_URI" in result.stderr
        # The cause, whole, on one line (was: cut at 300 characters inside urllib3's parenthesis).
        assert "failed: Failed to establish a new connection: [Errno 111] Connection refused;" in result.stderr
        assert "`readmission models` shows what the registry holds" in result.stderr
    bad = _cli("rollback", "abc", cwd=tmp_path)
    assert bad.returncode == 1 and "are numbers" in bad.stderr and "Traceback" not in bad.stderr


def test_the_models_table_fits_80_columns_and_never_cuts_a_version() -> None:
    """Was: `versi…`, `roc_a…` and a wrapped champion marker at 80 columns (the table needed ~165)."""
    from rich.console import Console

    from readmission.cli.model_commands import versions_table
    from readmission.registry import VersionSummary

    metrics = {"roc_auc_30": 0.6917, "brier_skill_30": 0.0412, "roc_auc_ovr_macro": 0.6, "average_precision_30": 0.2}
    versions = [
        VersionSummary("12345", ("champion", "challenger"), "0" * 32, "hist_gradient_boosting", metrics, "promoted"),
        VersionSummary("7", (), "1" * 32, "logistic_regression", {}, "kept previous champion"),
    ]
    narrow = Console(width=80, record=True)
    narrow.print(versions_table(versions))
    text = narrow.export_text()
    assert max(map(len, text.splitlines())) <= 80, text
    assert "12345" in text and "champion, challenger" in text and "0.6917" in text and "ROC-AUC <30" in text
    assert "hist gradient" in text and "kept" in text
    wide = Console(width=250, record=True)
    wide.print(versions_table(versions, wide=True))
    text = wide.export_text()
    tiny = Console(width=30, record=True)  # below the table's minimum: values still whole
    tiny.print(versions_table(versions))
    small = tiny.export_text()
    assert "12345" in small and "champion, challenger" in small, small
    assert "avg precision <30" in text and "0" * 32 in text and "kept previous champion" in text


def test_a_local_file_is_checked_not_downloaded(tmp_path: Path) -> None:
    """Was: "downloading UCI data set" shown while a local DATA_PATH was read (seen in a terminal)."""
    write_synthetic_csv(tmp_path / "demo.csv", rows=200, seed=1)
    terminal = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}  # rich draws its progress as on a terminal
    loaded = _cli("load-raw", "--data-path", "demo.csv", cwd=tmp_path, env=terminal)
    assert loaded.returncode == 0, loaded.stderr
    assert "checking demo.csv" in loaded.stderr and "downloading" not in loaded.stderr


def test_purge_predictions_keeps_the_retention_of_the_embedded_log(tmp_path: Path) -> None:
    import datetime as dt

    from logsupport import seed_log

    from readmission.db import create_db_engine

    missing = _cli("purge-predictions", cwd=tmp_path)
    assert missing.returncode == 1 and "error: no prediction log at var/predictions.db" in missing.stderr
    assert not (tmp_path / "var" / "predictions.db").exists()  # looking never creates it
    url = f"sqlite:///{tmp_path / 'var' / 'predictions.db'}"
    engine = create_db_engine(url)
    now = dt.datetime.now(dt.UTC)
    seed_log(engine, [now - dt.timedelta(days=100)] * 20 + [now - dt.timedelta(days=40)] * 30 + [now] * 5)
    engine.dispose()
    default = _cli("purge-predictions", cwd=tmp_path)  # PREDICTION_LOG_RETENTION_DAYS' default: 90
    assert default.returncode == 0, default.stderr
    assert "purge-predictions: 20 row(s) older than 90 day(s)" in default.stdout
    from_env = _cli("purge-predictions", cwd=tmp_path, env={"PREDICTION_LOG_RETENTION_DAYS": "30"})
    assert "purge-predictions: 30 row(s) older than 30 day(s)" in from_env.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    option = _cli("purge-predictions", "--days", "1", "--log-url", url, "--chunk-rows", "2", cwd=elsewhere)
    assert option.returncode == 0, option.stderr
    assert "purge-predictions: 0 row(s) older than 1 day(s)" in option.stdout and "in 0 chunk(s)" in option.stdout


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://nobody:not-a-password@127.0.0.1:9/inference", "Can't connect"),
        ("foo://bar", "Can't load plugin"),
        ("not-a-url", "Could not parse"),
    ],
)
def test_purge_predictions_reports_an_unusable_log_in_one_line(tmp_path: Path, url: str, reason: str) -> None:
    """Was a 169-line traceback ending in the driver's error."""
    done = _cli("purge-predictions", "--log-url", url, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert reason in done.stderr and "check --log-url or PREDICTION_LOG_URL" in done.stderr
    assert "not-a-password" not in done.stderr  # the URL is shown without its password
