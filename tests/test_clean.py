"""CLEAN dataset: cleaning rules, leakage-free history, patient-grouped split, full-data counts."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from readmission import schema
from readmission.clean import (
    SplitSpec,
    assign_split,
    build_clean,
    clean_frame,
    diagnosis_group,
    read_clean,
)
from readmission.db import create_db_engine
from readmission.errors import EmptyStoreError
from readmission.raw import SourceFile, load_raw_batches
from readmission.store_status import clean_status
from readmission.synthetic import synthetic_encounters

UrlFactory = tuple[str, Callable[[], str]]


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({c.name: "int64" for c in schema.COLUMNS if c.is_integer}).assign(batch_number=0)


def test_diagnosis_groups_follow_the_icd9_chapters() -> None:
    codes = pd.Series(
        [
            "428",
            "785",
            "486",
            "786",
            "562",
            "787",
            "250.83",
            "250",
            "820",
            "996",
            "715",
            "599",
            "788",
            "162",
            "V57",
            "E878",
            "8",
            None,
        ]
    )
    expected = [
        "circulatory",
        "circulatory",
        "respiratory",
        "respiratory",
        "digestive",
        "digestive",
        "diabetes",
        "diabetes",
        "injury",
        "injury",
        "musculoskeletal",
        "genitourinary",
        "genitourinary",
        "neoplasms",
        "other",
        "other",
        "other",
        None,
    ]
    assert diagnosis_group(codes).astype(object).where(lambda s: s.notna(), None).tolist() == expected


def test_cleaning_rules() -> None:
    raw = synthetic_encounters(400, seed=5)
    raw["discharge_disposition_id"] = "1"
    raw.loc[0:9, "discharge_disposition_id"] = ["11", "13", "14", "19", "20", "21", "1", "2", "3", "25"]
    raw.loc[0:9, "race"] = "?"
    clean = clean_frame(_typed(raw), SplitSpec())
    assert len(clean) == 394  # the six death/hospice encounters are gone
    assert not clean["discharge_disposition_id"].isin(sorted(schema.DEATH_OR_HOSPICE_DISCHARGE_IDS)).any()
    assert not (clean.select_dtypes(include=["object", "string"]) == "?").any().any()
    kept = clean.set_index("encounter_id").loc[raw.loc[6:9, "encounter_id"].astype(int)]
    assert kept["race"].isna().all()
    assert {"diag_1_group", "diag_2_group", "diag_3_group", "split", schema.PRIOR_ENCOUNTERS} <= set(clean.columns)


def test_history_counts_only_earlier_encounters() -> None:
    raw = synthetic_encounters(6, seed=2)
    raw["patient_nbr"] = ["7", "7", "7", "8", "8", "9"]
    raw["encounter_id"] = ["300", "100", "200", "50", "60", "10"]
    raw["readmitted"] = ["NO", "<30", ">30", "<30", "NO", "<30"]
    raw["discharge_disposition_id"] = "1"
    history = list(schema.HISTORY_FEATURE_NAMES)
    clean = clean_frame(_typed(raw), SplitSpec()).set_index("encounter_id")[history]
    # patient 7 in time order: 100 (<30), 200 (>30), 300 (NO); patient 8: 50 (<30), 60 (NO); patient 9: 10
    raw["number_inpatient"] = ["3", "1", "2", "4", "5", "6"]
    clean = clean_frame(_typed(raw), SplitSpec()).set_index("encounter_id")[history]
    assert history == [
        "prior_encounters",
        "prior_readmissions",
        "prior_early_readmissions",
        "previous_number_inpatient",
        "previous_readmission",
        "previous_early_readmission",
    ]
    assert clean.loc[[100, 200, 300]].to_numpy().tolist() == [
        [0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
        [2, 2, 1, 2, 1, 0],
    ]
    assert clean.loc[[50, 60, 10]].to_numpy().tolist() == [[0, 0, 0, 0, 0, 0], [1, 1, 1, 4, 1, 1], [0, 0, 0, 0, 0, 0]]
    # Changing a LATER encounter's outcome, or adding one, changes nothing for the earlier ones.
    later = pd.concat([raw, raw.iloc[[0]].assign(encounter_id="999", readmitted="<30")])
    later.loc[later["encounter_id"] == "300", "readmitted"] = "<30"
    again = clean_frame(_typed(later), SplitSpec()).set_index("encounter_id")[history]
    assert again.drop(999).equals(clean)


def test_split_is_by_patient_deterministic_and_stable_as_data_grows() -> None:
    patients = pd.Series(range(1, 20_001))
    first = assign_split(patients, SplitSpec(seed=1))
    assert first.equals(assign_split(patients, SplitSpec(seed=1)))
    assert not first.equals(assign_split(patients, SplitSpec(seed=2)))
    grown = assign_split(pd.Series(range(1, 30_001)), SplitSpec(seed=1))
    assert grown.iloc[:20_000].reset_index(drop=True).equals(first)
    shares = first.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.70, abs=0.02)
    assert shares["validation"] == pytest.approx(0.15, abs=0.02)
    assert shares["test"] == pytest.approx(0.15, abs=0.02)


def test_split_fractions_are_checked() -> None:
    with pytest.raises(ValueError, match="leave room for training"):
        SplitSpec(validation=0.5, test=0.5)


def test_build_refuses_an_empty_raw_database(tmp_path: Path) -> None:
    with pytest.raises(EmptyStoreError, match="run `readmission load-raw` first"):
        build_clean(
            create_db_engine(f"sqlite:///{tmp_path}/r.db"), create_db_engine(f"sqlite:///{tmp_path}/c.db"), SplitSpec()
        )


@pytest.mark.slow
def test_full_data_into_separate_raw_and_clean_databases(db_url_factory: UrlFactory, real_data_path: Path) -> None:
    backend, new_url = db_url_factory
    raw_url, clean_url = new_url(), new_url()
    assert raw_url != clean_url
    load = load_raw_batches(create_db_engine(raw_url), SourceFile.read(real_data_path))
    assert (len(load.loaded), load.rows_loaded, load.rows_quarantined) == (7, 101_766, 0)

    report = build_clean(create_db_engine(raw_url), create_db_engine(clean_url), SplitSpec(seed=42))
    assert (report.raw_rows, report.excluded_rows, report.clean_rows) == (101_766, 2_423, 99_343)
    assert sum(report.split_rows.values()) == 99_343
    assert report.raw_batches == list(range(7))

    clean_engine = create_db_engine(clean_url)
    with clean_engine.connect() as conn:
        on_two_sides = conn.execute(
            text(
                "SELECT COUNT(*) FROM (SELECT patient_nbr FROM clean_encounters GROUP BY patient_nbr "
                "HAVING COUNT(DISTINCT split) > 1) t"
            )
        ).scalar_one()
        missing_marks = conn.execute(text("SELECT COUNT(*) FROM clean_encounters WHERE race = '?'")).scalar_one()
    assert on_two_sides == 0, f"{on_two_sides} patients are in more than one split ({backend})"
    assert missing_marks == 0
    status = clean_status(clean_engine)
    assert status.clean_rows == 99_343 and status.split_rows == report.split_rows
    test_rows = read_clean(clean_engine, "test")
    assert len(test_rows) == report.split_rows["test"]
    assert test_rows["encounter_id"].is_monotonic_increasing
    assert str(test_rows["number_inpatient"].dtype) == "Int64"

    # The table before issue #24's partitioned build, to the bit (hash of every value, encounter order).
    assert _table_checksum(clean_engine) == REAL_FILE_CLEAN_CHECKSUM

    # A rebuild is a full replacement, not an append; in 7 patient partitions it is the same table.
    partitioned = build_clean(create_db_engine(raw_url), clean_engine, SplitSpec(seed=42), partition_rows=15_000)
    with clean_engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM clean_encounters")).scalar_one() == 99_343
    assert _table_checksum(clean_engine) == REAL_FILE_CLEAN_CHECKSUM
    assert (partitioned.split_rows, partitioned.split_patients) == (report.split_rows, report.split_patients)


# sha256 of pandas' row hashes of read_clean() on the UCI file, split seed 42, as built before issue #24
REAL_FILE_CLEAN_CHECKSUM = "9db5b982d623d499e056652006d4d4eeda98506eaa7751abcd59466e497d2e70"


def _table_checksum(engine: Any) -> str:
    frame = read_clean(engine)
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()


@settings(max_examples=12, deadline=None)
@given(rows=st.integers(1, 400), patients=st.integers(1, 150), seed=st.integers(0, 2**16), parts=st.integers(1, 40))
def test_any_partitioning_builds_the_same_table(rows: int, patients: int, seed: int, parts: int) -> None:
    """Issue #24: the build reads RAW in patient partitions to bound memory; the table must not notice."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "s.csv"
        synthetic_encounters(rows, seed, patients).to_csv(source, index=False)
        raw = create_db_engine(f"sqlite:///{folder}/raw.db")
        load_raw_batches(raw, SourceFile.read(source))
        whole, split = (create_db_engine(f"sqlite:///{folder}/{n}.db") for n in ("whole", "parts"))
        one = build_clean(raw, whole, SplitSpec(seed=seed % 7))
        many = build_clean(raw, split, SplitSpec(seed=seed % 7), partition_rows=-(-rows // parts))
        assert _table_checksum(whole) == _table_checksum(split)
        assert (one.clean_rows, one.split_rows, one.split_patients) == (
            many.clean_rows,
            many.split_rows,
            many.split_patients,
        )
        for engine in (raw, whole, split):
            engine.dispose()


def test_ids_beyond_32_bits_reach_clean(db_url_factory: UrlFactory, tmp_path: Path) -> None:
    """Issue #24: CLEAN stored the ids as 32-bit INTEGER on PostgreSQL (RAW: BIGINT); an id above 2**31 - 1 (the
    10x data's, or any real system's past 2.1 billion) failed the build with NumericValueOutOfRange."""
    _, new_url = db_url_factory
    frame = synthetic_encounters(300, 4)
    for name in ("encounter_id", "patient_nbr"):
        frame[name] = (frame[name].astype("int64") + 9_000_000_000).astype(str)
    source = tmp_path / "large-ids.csv"
    frame.to_csv(source, index=False)
    raw, clean = create_db_engine(new_url()), create_db_engine(new_url())
    load_raw_batches(raw, SourceFile.read(source))
    report = build_clean(raw, clean, SplitSpec(seed=42), partition_rows=100)
    stored = read_clean(clean)
    assert report.clean_rows == len(stored) > 0
    assert set(stored["encounter_id"].astype("int64")) <= set(frame["encounter_id"].astype("int64"))
    assert stored["patient_nbr"].min() > 2**31


def test_rows_no_partition_reads_stop_the_build_and_keep_the_old_table(
    db_url_factory: UrlFactory, tmp_path: Path
) -> None:
    """Review of #24: a row outside every partition (a negative patient_nbr written around `load-raw`) would have
    been left out of CLEAN in silence; the count of RAW is checked against the rows the partitions read."""
    _, new_url = db_url_factory
    source = tmp_path / "s.csv"
    synthetic_encounters(400, 2).to_csv(source, index=False)
    raw, clean = create_db_engine(new_url()), create_db_engine(new_url())
    load_raw_batches(raw, SourceFile.read(source))
    before = build_clean(raw, clean, SplitSpec(seed=42), partition_rows=100)
    checksum = _table_checksum(clean)
    with raw.begin() as conn:
        conn.execute(text("UPDATE raw_encounters SET patient_nbr = -patient_nbr WHERE encounter_id = "
                          "(SELECT MIN(encounter_id) FROM raw_encounters)"))  # fmt: skip
    with pytest.raises(RuntimeError, match=r"read 399 rows of 400"):
        build_clean(raw, clean, SplitSpec(seed=42), partition_rows=100)
    assert _table_checksum(clean) == checksum and clean_status(clean).clean_rows == before.clean_rows
