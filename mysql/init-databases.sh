#!/bin/sh
# Runs once, on an empty data directory (the mysql image's /docker-entrypoint-initdb.d): one database
# and one user per client, each user limited to its own database. Passwords: the mysql-credentials Secret.
# inference_purge is the prediction-log retention job's (CronJob prediction-log-purge): it may read and delete
# only. The grant is on the database `inference`, which holds nothing but the tables prediction_log and prediction_explanations: MySQL refuses
# a table-level grant (without CREATE) on a table that does not exist yet, and the API creates it with its
# first logged prediction (and the second with its first explanation). On a data directory that exists already, see the README ("Operations").
set -eu
mysql --protocol=socket -uroot -p"$MYSQL_ROOT_PASSWORD" <<SQL
CREATE DATABASE IF NOT EXISTS mlflow CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE DATABASE IF NOT EXISTS inference CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER IF NOT EXISTS 'mlflow'@'%' IDENTIFIED BY '${MLFLOW_DB_PASSWORD}';
CREATE USER IF NOT EXISTS 'inference'@'%' IDENTIFIED BY '${INFERENCE_DB_PASSWORD}';
CREATE USER IF NOT EXISTS 'inference_purge'@'%' IDENTIFIED BY '${INFERENCE_PURGE_DB_PASSWORD}';
GRANT ALL PRIVILEGES ON mlflow.* TO 'mlflow'@'%';
GRANT SELECT, INSERT, CREATE, INDEX ON inference.* TO 'inference'@'%';
GRANT SELECT, DELETE ON inference.* TO 'inference_purge'@'%';
FLUSH PRIVILEGES;
SQL
