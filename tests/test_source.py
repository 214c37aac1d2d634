"""Data source: local files, a real HTTP download on loopback, the cache, checksums and offline errors."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from readmission.errors import ChecksumMismatchError, DataUnavailableError, SourceFormatError
from readmission.source import DATA_SHA256, resolve_dataset
from readmission.synthetic import write_synthetic_csv


class _Server:
    def __init__(self, root: Path) -> None:
        handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.requests = 0
        original = self.httpd.finish_request

        def counting(*args: object) -> None:
            self.requests += 1
            original(*args)  # type: ignore[arg-type]

        self.httpd.finish_request = counting  # type: ignore[method-assign]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[_Server, str]]:
    """A loopback HTTP server with a UCI-style zip (data file in a sub-folder) and the file's checksum."""
    root = tmp_path / "www"
    root.mkdir()
    csv_path = write_synthetic_csv(tmp_path / "diabetic_data.csv", rows=200, seed=3)
    with zipfile.ZipFile(root / "uci.zip", "w") as zf:
        zf.write(csv_path, "dataset_diabetes/diabetic_data.csv")
        zf.writestr("dataset_diabetes/IDS_mapping.csv", "admission_type_id,description\n")
    server = _Server(root)
    yield server, hashlib.sha256(csv_path.read_bytes()).hexdigest()
    server.httpd.shutdown()


def test_download_verifies_and_caches_then_works_without_network(served: tuple[_Server, str], tmp_path: Path) -> None:
    server, digest = served
    seen: list[int] = []
    first = resolve_dataset(
        tmp_path / "var", url=server.url("uci.zip"), expected_sha256=digest, progress=lambda d, _: seen.append(d)
    )
    assert (first.origin, first.sha256) == ("download", digest)
    assert first.path == tmp_path / "var" / "uci" / "diabetic_data.csv"
    assert seen and seen[-1] == (tmp_path / "www" / "uci.zip").stat().st_size
    server.httpd.shutdown()
    again = resolve_dataset(tmp_path / "var", url=server.url("uci.zip"), expected_sha256=digest)
    assert again.origin == "cache"
    assert server.requests == 1
    assert not list((tmp_path / "var" / "uci").glob("*.zip")) and not list((tmp_path / "var" / "uci").glob("*.part"))


def test_download_with_wrong_checksum_is_deleted_and_refused(served: tuple[_Server, str], tmp_path: Path) -> None:
    server, _ = served
    with pytest.raises(ChecksumMismatchError, match=r"expected 000000.*it was deleted"):
        resolve_dataset(tmp_path / "var", url=server.url("uci.zip"), expected_sha256="0" * 64)
    assert not (tmp_path / "var" / "uci" / "diabetic_data.csv").exists()


def test_corrupt_cache_is_fetched_again(served: tuple[_Server, str], tmp_path: Path) -> None:
    server, digest = served
    cached = tmp_path / "var" / "uci" / "diabetic_data.csv"
    cached.parent.mkdir(parents=True)
    cached.write_text("half a file")
    dataset = resolve_dataset(tmp_path / "var", url=server.url("uci.zip"), expected_sha256=digest)
    assert (dataset.origin, dataset.sha256) == ("download", digest)


def test_offline_error_says_how_to_use_a_local_copy(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as info:
        resolve_dataset(tmp_path / "var", url="http://127.0.0.1:9/uci.zip", timeout_seconds=5)
    message = str(info.value)
    assert "could not download the data set from http://127.0.0.1:9/uci.zip" in message
    assert "DATA_PATH=/path/to/diabetic_data.csv" in message and "--data-path" in message
    assert not any((tmp_path / "var").rglob("*.part"))


def test_http_error_is_reported_as_unavailable(served: tuple[_Server, str], tmp_path: Path) -> None:
    server, digest = served
    with pytest.raises(DataUnavailableError, match=r"missing\.zip \(HTTP 404 File not found\)"):
        resolve_dataset(tmp_path / "var", url=server.url("missing.zip"), expected_sha256=digest)


def test_local_csv_zip_and_folder(tmp_path: Path) -> None:
    csv_path = write_synthetic_csv(tmp_path / "in" / "diabetic_data.csv", rows=50)
    archive = tmp_path / "copy.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(csv_path, "diabetic_data.csv")
    as_csv = resolve_dataset(tmp_path / "var", csv_path)
    as_zip = resolve_dataset(tmp_path / "var", archive)
    as_dir = resolve_dataset(tmp_path / "var", csv_path.parent)
    assert as_csv.origin == "local file" and as_dir.path == csv_path
    assert as_zip.origin == "local zip" and as_zip.path.read_bytes() == csv_path.read_bytes()
    assert as_csv.sha256 == as_zip.sha256 == as_dir.sha256
    assert not as_csv.is_official


def test_missing_or_broken_local_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match=r"data file .*nowhere\.csv does not exist\. Set DATA_PATH"):
        resolve_dataset(tmp_path, tmp_path / "nowhere.csv")
    (tmp_path / "not.zip").write_text("plain text")
    with pytest.raises(SourceFormatError, match=r"not\.zip is not a valid zip file"):
        resolve_dataset(tmp_path, tmp_path / "not.zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(SourceFormatError, match=r"has no diabetic_data\.csv"):
        resolve_dataset(tmp_path, tmp_path / "other.zip")


def test_the_shared_copy_is_the_official_release(real_data_path: Path, tmp_path: Path) -> None:
    dataset = resolve_dataset(tmp_path, real_data_path)
    assert dataset.sha256 == DATA_SHA256
    assert dataset.is_official
