#!/bin/sh
# Runs once, on an empty data directory (the postgres image's /docker-entrypoint-initdb.d): the RAW and
# CLEAN databases, each owned by a user of its own. Passwords come from the postgres-credentials Secret.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v raw_password="$RAW_DB_PASSWORD" -v clean_password="$CLEAN_DB_PASSWORD" \
  -v reader_password="$CLEAN_READER_PASSWORD" <<'SQL'
CREATE USER raw_writer WITH PASSWORD :'raw_password';
CREATE USER clean_writer WITH PASSWORD :'clean_password';
CREATE USER clean_reader WITH PASSWORD :'reader_password';
CREATE DATABASE raw OWNER raw_writer;
CREATE DATABASE clean OWNER clean_writer;
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
