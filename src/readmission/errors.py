"""Errors a user can act on. Each message says what is wrong and what to do."""

from __future__ import annotations

import re


class ReadmissionError(Exception):
    """Base class of the platform's expected failures (the CLI prints them without a traceback)."""


class DataUnavailableError(ReadmissionError):
    """The data set could neither be found locally nor downloaded."""


class ChecksumMismatchError(ReadmissionError):
    """A downloaded or cached file is not the file it claims to be."""


class SourceFormatError(ReadmissionError):
    """A source file does not have the layout of the UCI data set."""


class LedgerConflictError(ReadmissionError):
    """The RAW database was loaded from different data or with a different batch size."""


class EmptyStoreError(ReadmissionError):
    """A step needs data that an earlier step has not produced yet."""


_CAUSE = re.compile(r"\(Caused by (\w+)\((.*)\)\)\s*$")
_REQUEST = re.compile(r"^(API request to \S+) failed with exception .*$")


def short_reason(error: BaseException, limit: int = 300) -> str:
    """One line of at most ``limit`` characters that says why ``error`` happened.

    For an HTTP client error wrapped by MLflow and urllib3 (``API request to URL failed with exception
    HTTPConnectionPool(...): Max retries exceeded ... (Caused by NewConnectionError("...: [Errno 111]
    Connection refused"))``) it keeps the URL and the innermost cause, without object addresses; otherwise
    the first line, cut with an ellipsis (at a word boundary when one is in its second half).
    """
    text = str(error).strip()
    if not text:
        return type(error).__name__
    first = text.splitlines()[0]
    cause = _CAUSE.search(first)
    if cause:
        detail = re.sub(r"^.*?\):\s*|^<[^>]*>:\s*", "", cause.group(2).strip("'\""), count=1)
        detail = re.sub(r"<[^<>]* object at 0x[0-9a-f]+>,?\s*", "", detail).strip(" '\",")
        request = _REQUEST.match(first)
        first = f"{request.group(1)} failed: {detail}" if request else f"{cause.group(1)}: {detail}"
    if len(first) <= limit:
        return first
    cut = first[: limit - 1]
    at_space = cut.rsplit(" ", 1)[0]
    return (at_space if len(at_space) > limit // 2 else cut) + "…"
