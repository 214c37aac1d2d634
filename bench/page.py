"""The page with a 100,000-row file uploaded: what an unrelated click costs, beside checking the file once,
in one run (Streamlit's AppTest runs the real script; no API is needed until Score):

    python bench/page.py --rows 100000 --data ../shared/data/diabetic_data.csv

Prints the first run after the upload (the file is read and every row checked), then the median of
``--clicks`` unrelated clicks (an example patient's button: a rerun of the whole script), and their ratio.
Before the check was cached per file content, every click re-checked the whole file (46 s measured).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
from streamlit.testing.v1 import AppTest

from readmission import schema

APP = Path(__file__).resolve().parents[1] / "streamlit" / "app.py"


def _file(data: Path, rows: int) -> bytes:
    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    ended = frame["discharge_disposition_id"].isin([str(c) for c in schema.DEATH_OR_HOSPICE_DISCHARGE_IDS])
    frame = frame[~ended]
    copies = [
        frame.assign(encounter_id=frame["encounter_id"].astype(int) + k * 10**9) for k in range(rows // len(frame) + 1)
    ]
    return pd.concat(copies).head(rows).astype(str).to_csv(index=False).encode()  # distinct ids in every copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/diabetic_data.csv"))
    parser.add_argument("--clicks", type=int, default=5)
    args = parser.parse_args()
    content = _file(args.data, args.rows)
    at = AppTest.from_file(str(APP), default_timeout=600)
    at.run()
    at.get("file_uploader")[0].set_value(("big.csv", content, "text/csv"))
    started = time.perf_counter()
    at.run()
    first = time.perf_counter() - started
    assert f"big.csv: {args.rows:,} valid encounters." in "\n".join(str(e.value) for e in at.success), at.error
    clicks = []
    for _ in range(args.clicks):
        started = time.perf_counter()
        at.button(key=f"example {next(iter(schema.EXAMPLE_ENCOUNTERS))}").click().run()
        clicks.append(time.perf_counter() - started)
    click = statistics.median(clicks)
    print(f"file of {args.rows:,} rows ({len(content) / 2**20:.1f} MiB)")
    print(f"first run after the upload (read + check every row): {first:7.2f} s")
    print(f"an unrelated click, median of {args.clicks}:             {click:7.2f} s  (max {max(clicks):.2f} s)")
    print(f"ratio first run / click:                               {first / click:7.1f}x")


if __name__ == "__main__":
    main()
