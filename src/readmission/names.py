"""Names shared by the library, the inference API and the Airflow DAG: the registered model, its experiment,
its aliases, the tags the lifecycle writes, the RAW batch size and the prediction log's table and retention.

This module imports nothing, so reading the API's settings or parsing the DAG never loads MLflow.
"""

from __future__ import annotations

MODEL_NAME = "diabetes-readmission"
EXPERIMENT_NAME = "diabetes-readmission"
CHAMPION = "champion"
CHALLENGER = "challenger"
SELECTION_METRIC = "roc_auc_30"

TRAINING_KEY_TAG = "training_key"  # one training job (a CLI call or an Airflow DAG run) on its runs and version
DECISION_TAG = "promotion.decision"  # written last by the gate: a version without it has not been gated

# The evidence training logs to the winner's run (``training.log_evidence_and_register``), read back by the API's
# GET /model/plots/{name} and /model/importance: the plots folder, each plot's file by the API's name for it, and
# the global feature importance (JSON object feature -> drop in ROC-AUC of the 30-day risk, largest first).
PLOTS_FOLDER = "plots"
PLOT_FILES = {
    "roc": "roc_curve.png",
    "precision-recall": "precision_recall_curve.png",
    "reliability": "calibration_curve.png",
    "confusion-matrix": "confusion_matrix.png",
    "feature-importance": "feature_importance.png",
}
IMPORTANCE_ARTIFACT = "feature_importance.json"

DEFAULT_BATCH_SIZE = 15_000  # rows per RAW batch, one transaction each (the design brief's 15,000-row batches)

PREDICTION_LOG_TABLE = "prediction_log"  # written by the inference API, purged by its retention job and the CLI
EXPLANATION_LOG_TABLE = "prediction_explanations"  # the explanations asked for, beside the log (same retention)
OUTCOME_TABLE = "prediction_outcomes"  # observed readmissions by encounter (the outcome feed), beside the log
MONITORING_TABLE = "model_monitoring"  # the monitor's results: one row per run and served model version
REFERENCE_PROFILE_ARTIFACT = "reference_profile.json"  # the training inputs' distributions, on the version's run
DEFAULT_RETENTION_DAYS = 90  # days a prediction-log row is kept (PREDICTION_LOG_RETENTION_DAYS)

# Train rows fitted at most (TRAIN_MAX_FIT_ROWS; ``training.fit_sample``): the UCI file's 69,641 are all fitted.
# Ten times the file (695,177 train rows) passed 9.6 GB and took 205 s for one logistic-regression refit on 2
# cores; cut to 250,000 it peaked at 2.7 GB but two families took 20 minutes against the 240 s budget. At
# 100,000 the job stays within a small multiple of the file's (bench/scale.py, README "How it scales").
DEFAULT_MAX_FIT_ROWS = 100_000
