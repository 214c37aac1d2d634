#!/bin/sh
# Runs once, on an empty data directory (the postgres image's /docker-entrypoint-initdb.d): the RAW and
# CLEAN databases and MLflow's user store, each owned by a user of its own. Passwords come from the
# postgres-credentials Secret. A data directory made before a database was added: README, "Security".
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v raw_password="$RAW_DB_PASSWORD" -v clean_password="$CLEAN_DB_PASSWORD" \
  -v reader_password="$CLEAN_READER_PASSWORD" -v mlflow_auth_password="$MLFLOW_AUTH_DB_PASSWORD" <<'SQL'
CREATE USER raw_writer WITH PASSWORD :'raw_password';
CREATE USER clean_writer WITH PASSWORD :'clean_password';
CREATE USER clean_reader WITH PASSWORD :'reader_password';
CREATE DATABASE raw OWNER raw_writer;
CREATE DATABASE clean OWNER clean_writer;
-- MLflow's basic-auth user store (users, password hashes, grants); only the MLflow server connects.
CREATE USER mlflow_auth WITH PASSWORD :'mlflow_auth_password';
CREATE DATABASE mlflow_auth OWNER mlflow_auth;
REVOKE ALL ON DATABASE mlflow_auth FROM PUBLIC;
REVOKE ALL ON DATABASE raw FROM PUBLIC;
REVOKE ALL ON DATABASE clean FROM PUBLIC;
-- The pipeline builds CLEAN from RAW: the clean user reads RAW.
GRANT CONNECT ON DATABASE raw TO clean_writer;
\connect raw
ALTER DEFAULT PRIVILEGES FOR ROLE raw_writer IN SCHEMA public GRANT SELECT ON TABLES TO clean_writer;
-- The load test (locust/) draws its payloads from CLEAN's test split: it may read CLEAN, nothing else.
GRANT CONNECT ON DATABASE clean TO clean_reader;
\connect clean
ALTER DEFAULT PRIVILEGES FOR ROLE clean_writer IN SCHEMA public GRANT SELECT ON TABLES TO clean_reader;
SQL
