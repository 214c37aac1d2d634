"""Database engines and the bulk paths the data stores need (COPY on PostgreSQL)."""

from __future__ import annotations

import io
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError

if TYPE_CHECKING:  # pandas and psycopg take a second to import: `readmission status` needs neither
    import pandas as pd

_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg", "mysql": "mysql+pymysql"}


def normalize_url(url: str) -> str:
    """The URL with the driver this project installs (psycopg 3, PyMySQL) when none is named."""
    parsed = make_url(url)
    driver = _DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver).render_as_string(hide_password=False) if driver else url


def display_url(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def create_db_engine(url: str, **options: Any) -> Engine:
    """An engine for ``url``; SQLite files get their folder created and real transactions (DDL too).
    ``options`` go to ``sqlalchemy.create_engine`` (e.g. ``json_serializer``)."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **options)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60}, **options)

    # pysqlite's own transaction handling skips DDL and starts late; hand BEGIN to SQLAlchemy so a
    # rebuild (DROP, CREATE, INSERT) is one atomic unit, as it is on PostgreSQL.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


_WRITE = "readmission_write"  # execution option: this transaction writes (SQLite: take the write lock first)


def write_transaction(engine: Engine) -> AbstractContextManager[Connection]:
    """``engine.begin()`` for a transaction that writes. On SQLite it starts with ``BEGIN IMMEDIATE``: a plain
    BEGIN reads first (even CREATE ... IF NOT EXISTS reads the schema), and a transaction that has read cannot
    then take the write lock while another process writes: "database is locked" at once, without waiting for the
    busy timeout. Taking the lock at BEGIN waits for it (up to the 60 s timeout) instead. Elsewhere: ``begin()``."""
    return engine.execution_options(**{_WRITE: True}).begin()


def is_postgres(engine: Engine | Connection) -> bool:
    """Whether the bulk COPY path applies."""
    return engine.dialect.name == "postgresql"


def quote(conn: Connection, name: str) -> str:
    """``name`` quoted as an identifier for the connection's dialect."""
    return conn.dialect.identifier_preparer.quote(name)


def copy_csv_into(conn: Connection, table: str, columns: list[str], payload: bytes) -> None:
    """COPY CSV ``payload`` (no header) into ``table`` inside the connection's open transaction."""
    cols = ", ".join(quote(conn, c) for c in columns)
    sql = f"COPY {quote(conn, table)} ({cols}) FROM STDIN (FORMAT csv)"
    import psycopg

    driver_connection: Any = conn.connection.driver_connection
    try:
        with driver_connection.cursor() as cursor, cursor.copy(sql) as copy:
            copy.write(payload)
    except psycopg.errors.IntegrityError as exc:  # raised by the driver directly: give callers SQLAlchemy's type
        raise IntegrityError(sql, None, exc) from exc


def insert_rows(conn: Connection, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` with one executemany (the portable path)."""
    if not rows:
        return
    cols = ", ".join(quote(conn, c) for c in columns)
    marks = ", ".join("?" if conn.dialect.paramstyle == "qmark" else "%s" for _ in columns)
    conn.exec_driver_sql(f"INSERT INTO {quote(conn, table)} ({cols}) VALUES ({marks})", rows)


def write_frame(conn: Connection, table: str, frame: pd.DataFrame) -> None:
    """Append ``frame`` to ``table``: COPY on PostgreSQL, executemany elsewhere. NaN/None become NULL."""
    columns = [str(c) for c in frame.columns]
    if is_postgres(conn):
        buffer = io.StringIO()
        frame.to_csv(buffer, header=False, index=False)
        copy_csv_into(conn, table, columns, buffer.getvalue().encode())
        return
    native = frame.astype(object).where(frame.notna(), None)
    insert_rows(conn, table, columns, list(native.itertuples(index=False, name=None)))


READ_CHUNK_ROWS = 50_000  # rows fetched at once from SQLite (read_query)


def read_query(conn: Connection, sql: str, dtypes: dict[str, Any]) -> pd.DataFrame:
    """Rows of ``sql`` as a frame with ``dtypes``; PostgreSQL streams them with COPY TO (much faster).

    On SQLite, whose driver makes a new ``str`` per cell, rows are fetched ``READ_CHUNK_ROWS`` at a time and each
    chunk cast to ``dtypes`` (text into pandas' compact ``string`` columns, Arrow-backed with pandas 3) before the
    next is fetched, so the driver's rows are never all held at once: a million CLEAN rows fetched whole took
    4.5 GB (bench/scale.py)."""
    import pandas as pd

    if is_postgres(conn):
        driver_connection: Any = conn.connection.driver_connection
        buffer = io.BytesIO()
        with (
            driver_connection.cursor() as cursor,
            cursor.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv, HEADER)") as cp,
        ):
            for block in cp:
                buffer.write(block)
        buffer.seek(0)
        return pd.read_csv(buffer, dtype=dtypes, keep_default_na=False, na_values=[""])
    chunks = [
        chunk.astype(dtypes)
        for chunk in pd.read_sql_query(sql, conn.connection.driver_connection, chunksize=READ_CHUNK_ROWS)
    ]
    return pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
