"""Where the data set comes from: the official UCI zip (downloaded once, cached, checksummed) or a
local ``.csv``/``.zip`` given by path."""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from readmission.errors import ChecksumMismatchError, DataUnavailableError, SourceFormatError

UCI_ZIP_URL = "https://archive.ics.uci.edu/static/public/296/diabetes+130-us+hospitals+for+years+1999-2008.zip"
UCI_DATASET_PAGE = "https://archive.ics.uci.edu/dataset/296"
DATA_FILE_NAME = "diabetic_data.csv"
# SHA-256 of diabetic_data.csv as the official zip holds it (101,766 rows, CRLF line ends). The zip
# itself is not pinned: UCI has re-packed archives before, the content is what matters.
DATA_SHA256 = "0689e7ec031237dc63031b938805c48377748761a3b26acab621567afa24df97"

ProgressCallback = Callable[[int, int | None], None]
"""Called with (bytes done, total bytes or None) while a file is downloaded."""


@dataclass(frozen=True)
class Dataset:
    """A local copy of diabetic_data.csv ready to load."""

    path: Path
    sha256: str
    origin: str  # "download", "cache", "local file" or "local zip"

    @property
    def is_official(self) -> bool:
        """Whether the file is byte for byte the UCI release."""
        return self.sha256 == DATA_SHA256


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_dataset(
    data_dir: Path,
    data_path: Path | None = None,
    *,
    url: str = UCI_ZIP_URL,
    expected_sha256: str = DATA_SHA256,
    timeout_seconds: float = 60.0,
    progress: ProgressCallback | None = None,
) -> Dataset:
    """Find the data set: ``data_path`` when given, else the cache under ``data_dir``, else download ``url``.

    A given path is used as it is (a CSV that is not the official file is allowed, e.g. a subset);
    a download must match ``expected_sha256`` or it is deleted and refused.
    """
    if data_path is not None:
        return _local_dataset(Path(data_path), Path(data_dir))
    cached = Path(data_dir) / "uci" / DATA_FILE_NAME
    if cached.is_file():
        digest = file_sha256(cached)
        if digest == expected_sha256:
            return Dataset(cached, digest, "cache")
        cached.unlink()  # a partial or tampered copy: fetch it again
    return _download_dataset(url, cached, expected_sha256, timeout_seconds, progress)


def _local_dataset(path: Path, data_dir: Path) -> Dataset:
    if not path.exists():
        raise DataUnavailableError(
            f"data file {path} does not exist. Set DATA_PATH (or --data-path) to a copy of "
            f"{DATA_FILE_NAME} or of the UCI zip ({UCI_DATASET_PAGE})."
        )
    if path.is_dir():
        candidate = path / DATA_FILE_NAME
        if not candidate.is_file():
            raise DataUnavailableError(f"directory {path} has no {DATA_FILE_NAME}; point at the file itself.")
        path = candidate
    if path.suffix.lower() == ".zip":
        target = data_dir / "extracted" / f"{path.stem}-{DATA_FILE_NAME}"
        _extract_data_file(path, target)
        return Dataset(target, file_sha256(target), "local zip")
    return Dataset(path, file_sha256(path), "local file")


def _extract_data_file(archive: Path, target: Path) -> None:
    """Copy the diabetic_data.csv member of ``archive`` (at any depth) to ``target``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [n for n in zf.namelist() if Path(n).name == DATA_FILE_NAME]
            if not members:
                raise SourceFormatError(f"zip {archive} has no {DATA_FILE_NAME} (members: {zf.namelist()[:10]})")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".part")
            with zf.open(members[0]) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            partial.replace(target)
    except zipfile.BadZipFile as exc:
        raise SourceFormatError(f"{archive} is not a valid zip file ({exc}); download it again.") from exc


def _download_dataset(
    url: str, cached: Path, expected_sha256: str, timeout_seconds: float, progress: ProgressCallback | None
) -> Dataset:
    archive = cached.parent / "download.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".part")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "readmission-platform"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response, partial.open("wb") as out:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            for block in iter(lambda: response.read(1 << 16), b""):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, urllib.error.HTTPError):
            why = f"HTTP {exc.code} {exc.reason}"
        else:
            why = str(getattr(exc, "reason", exc))
        raise DataUnavailableError(
            f"could not download the data set from {url} ({why}). "
            f"If this machine is offline, fetch the zip from {UCI_DATASET_PAGE} elsewhere and run with "
            f"DATA_PATH=/path/to/{DATA_FILE_NAME} (or the .zip), or pass --data-path."
        ) from exc
    partial.replace(archive)
    try:
        _extract_data_file(archive, cached)
    finally:
        archive.unlink(missing_ok=True)
    digest = file_sha256(cached)
    if digest != expected_sha256:
        cached.unlink()
        raise ChecksumMismatchError(
            f"{DATA_FILE_NAME} downloaded from {url} has SHA-256 {digest}, expected {expected_sha256}. "
            "The download is corrupt or the source changed; it was deleted. Try again, or pass a verified "
            "local copy with DATA_PATH."
        )
    return Dataset(cached, digest, "download")
