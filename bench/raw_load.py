"""Raw load of the full UCI file into PostgreSQL: the project's loader vs the original approach vs bare COPY.

Each contender starts from the CSV file and ends with committed rows in a fresh database. Run:

    python bench/raw_load.py --data ../shared/data/diabetic_data.csv

The machine is shared and noisy, so each contender runs --repeat times and the median is compared;
all ratios come from the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from readmission.db import create_db_engine, quote
from readmission.raw import SourceFile, load_raw_batches, metadata, raw_encounters
from readmission.store_status import RAW_TABLE

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BENCH_DB = "readmission_bench_raw"


def _fresh_database(admin_url: str) -> str:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {BENCH_DB}"))
    admin.dispose()
    return make_url(admin_url).set(database=BENCH_DB).render_as_string(hide_password=False)


def project_loader(url: str, data: Path) -> int:
    """The platform's loader: batches of 15,000, validation, quarantine, ledger, COPY."""
    engine = create_db_engine(url)
    report = load_raw_batches(engine, SourceFile.read(data))
    engine.dispose()
    return report.rows_loaded


def _to_sql(url: str, data: Path) -> int:
    engine = create_engine(url)
    frame = pd.read_csv(data)
    frame.to_sql(RAW_TABLE, engine, if_exists="append", index=False, chunksize=15_000)
    engine.dispose()
    return len(frame)


def to_sql_psycopg2(url: str, data: Path) -> int:
    """The original course approach: read_csv + DataFrame.to_sql (default method, 15,000-row chunks) through
    psycopg2, the driver SQLAlchemy picks for a plain postgresql:// URL."""
    return _to_sql(make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False), data)


def to_sql_psycopg3(url: str, data: Path) -> int:
    """The same call through psycopg 3 (SQLAlchemy batches its inserts): the kindest form of the baseline."""
    return _to_sql(url, data)


def bare_copy(url: str, data: Path) -> int:
    """The floor: the same typed table, the file streamed to COPY FROM STDIN, no checks at all."""
    engine = create_db_engine(url)
    table = raw_encounters.to_metadata(type(metadata)())
    table.c.batch_number.nullable = True
    with engine.begin() as conn:
        table.create(conn)
        cols = ", ".join(quote(conn, c.name) for c in table.columns if c.name != "batch_number")
        driver = conn.connection.driver_connection
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY {RAW_TABLE} ({cols}) FROM STDIN (FORMAT csv, HEADER)") as cp,
        ):
            cp.write(data.read_bytes())
        count = conn.execute(text(f"SELECT COUNT(*) FROM {RAW_TABLE}")).scalar_one()
    engine.dispose()
    return int(count)


def measure(name: str, fn: Callable[[str, Path], int], admin_url: str, data: Path, repeat: int) -> float:
    """Median seconds of ``repeat`` runs, each into a fresh database."""
    times = []
    for _ in range(repeat):
        url = _fresh_database(admin_url)
        started = time.perf_counter()
        rows = fn(url, data)
        times.append(time.perf_counter() - started)
        print(f"  {name:<34} {times[-1]:7.2f} s  ({rows:,} rows)", flush=True)
    return statistics.median(times)


def main() -> None:
    """Run the three contenders and print seconds and ratios side by side."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("DATA_PATH", "../shared/data/diabetic_data.csv"))
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
        help="PostgreSQL URL of a database from which a scratch database can be created",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs of the loader and of bare COPY")
    parser.add_argument("--to-sql-repeat", type=int, default=1, help="runs of each pandas.to_sql variant (slow)")
    args = parser.parse_args()

    contenders: list[tuple[str, Callable[[str, Path], int], int]] = [
        ("project loader (batches+COPY)", project_loader, args.repeat),
        ("bare COPY FROM (no checks)", bare_copy, args.repeat),
        ("to_sql via psycopg2 (original)", to_sql_psycopg2, args.to_sql_repeat),
        ("to_sql via psycopg 3", to_sql_psycopg3, args.to_sql_repeat),
    ]
    results = {name: measure(name, fn, args.admin_url, args.data, n) for name, fn, n in contenders}
    ours = results["project loader (batches+COPY)"]
    print(f"\nmedian seconds, {args.data.name}, ratio = contender / project loader")
    print(f"{'method':<34} {'seconds':>8} {'ratio':>8}")
    for name, seconds in results.items():
        print(f"{name:<34} {seconds:8.2f} {seconds / ours:7.2f}x")
    print(
        f"\nproject loader: {results['to_sql via psycopg2 (original)'] / ours:.1f}x faster than the original to_sql "
        f"(target >= 15x), {results['to_sql via psycopg 3'] / ours:.1f}x faster than to_sql on psycopg 3, "
        f"{ours / results['bare COPY FROM (no checks)']:.2f}x the time of bare COPY (target <= 1.5x)"
    )


if __name__ == "__main__":
    main()
