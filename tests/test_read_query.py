"""Reading a table into pandas on SQLite, a chunk at a time (issue #24: a million CLEAN rows, fetched whole as
one ``str`` per cell, took 4.5 GB). PostgreSQL's path (COPY into pandas' CSV parser) is read by every CLEAN test."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from readmission import db
from readmission.db import create_db_engine, read_query

DTYPES = {"id": "int64", "level": "string", "count": "Int64"}


def _table(url: str, rows: list[tuple[int, str | None, int | None]]) -> Any:
    engine = create_db_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS levels"))
        conn.execute(text('CREATE TABLE levels (id BIGINT PRIMARY KEY, level TEXT, "count" INTEGER)'))
        if rows:
            conn.execute(
                text('INSERT INTO levels (id, level, "count") VALUES (:i, :l, :c)'),
                [{"i": i, "l": level, "c": c} for i, level, c in rows],
            )
    return engine


def _read(engine: Any) -> pd.DataFrame:
    with engine.connect() as conn:
        return read_query(conn, 'SELECT id, level, "count" FROM levels ORDER BY id', DTYPES)


def _peak_bytes(engine: Any, chunk_rows: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, pd.DataFrame]:
    monkeypatch.setattr(db, "READ_CHUNK_ROWS", chunk_rows)
    tracemalloc.start()
    try:
        frame = _read(engine)
        return tracemalloc.get_traced_memory()[1], frame
    finally:
        tracemalloc.stop()


def test_sqlite_rows_are_fetched_a_chunk_at_a_time(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the driver's rows (a new ``str`` per cell) were all held at once before the frame took its
    dtypes: 4.5 GB for a million CLEAN rows. Now at most a chunk's rows are (Python allocations, tracemalloc)."""
    rows = [(i, f"level-{i % 3}", i % 7) for i in range(60_000)]
    engine = _table(f"sqlite:///{tmp_path / 'levels.db'}", rows)
    whole_peak, whole = _peak_bytes(engine, 10**9, monkeypatch)
    chunked_peak, chunked = _peak_bytes(engine, 1_000, monkeypatch)
    assert chunked_peak < whole_peak * 0.6, (chunked_peak, whole_peak)  # 0.46 when written
    pd.testing.assert_frame_equal(whole, chunked)
    assert chunked["level"].tolist() == [level for _, level, _ in rows]
    assert {str(t) for t in chunked.dtypes} == {"int64", "string", "Int64"}


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(
        st.tuples(st.one_of(st.none(), st.sampled_from(["a", "b", "?", ""])), st.one_of(st.none(), st.integers(-5, 5))),
        max_size=60,
    ),
    chunk=st.integers(1, 70),
)
def test_any_chunking_reads_the_same_frame(values: list[tuple[str | None, int | None]], chunk: int) -> None:
    rows = [(i, level, count) for i, (level, count) in enumerate(values)]
    engine = _table("sqlite://", rows)
    whole = _read(engine)
    original = db.READ_CHUNK_ROWS
    try:
        db.READ_CHUNK_ROWS = chunk
        chunked = _read(engine)
    finally:
        db.READ_CHUNK_ROWS = original
    pd.testing.assert_frame_equal(whole, chunked)
    assert len(whole) == len(rows) and list(whole.columns) == list(DTYPES)
    assert whole["level"].isna().tolist() == [level is None for _, level, _ in rows]
