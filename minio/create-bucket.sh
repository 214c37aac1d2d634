#!/bin/sh
# Run by the Job minio-create-bucket: the bucket `mlflow` and the user MLflow writes it as, limited to it by
# the policy mlflow-artifacts. Every step is safe to run again (the Job retries until MinIO is up).
set -eu
mc alias set store http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing store/mlflow
mc admin policy create store mlflow-artifacts /config/mlflow-policy.json
mc admin user add store "$MLFLOW_S3_USER" "$MLFLOW_S3_PASSWORD"
if ! mc admin user info store "$MLFLOW_S3_USER" | grep -q mlflow-artifacts; then
  mc admin policy attach store mlflow-artifacts --user "$MLFLOW_S3_USER"
fi
echo "bucket mlflow and user $MLFLOW_S3_USER (policy mlflow-artifacts) are ready"
