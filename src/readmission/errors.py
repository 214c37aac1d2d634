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


_REFUSED = re.compile(r"error code 401\b|\bUNAUTHENTICATED\b")
_FORBIDDEN = re.compile(r"error code 403\b|\bPERMISSION_DENIED\b")


TRAINER = ("trainer", "MLFLOW_TRAINER_PASSWORD in mlflow/secrets.env")


def access_advice(error: BaseException, username: str | None, role: tuple[str, str] = TRAINER) -> str | None:
    """What to do when MLflow refused a call for want of credentials (HTTP 401) or of a permission (403);
    None for any other failure. ``username``: MLFLOW_TRACKING_USERNAME as the caller set it; ``role``: the
    MLflow user the caller should be and where its password is (README, "Security")."""
    text = f"{getattr(error, 'error_code', '')} {error}"
    user, password = role
    if _REFUSED.search(text) and not username:
        return (
            f"MLflow requires a user (401) and none was given: set MLFLOW_TRACKING_USERNAME={user} and "
            f"MLFLOW_TRACKING_PASSWORD (its password is {password}; README, Security)"
        )
    if _REFUSED.search(text):
        return (
            f"MLflow refused the credentials of user {username} (401): check MLFLOW_TRACKING_USERNAME and "
            f"MLFLOW_TRACKING_PASSWORD (the {user} user's password is {password}; README, Security)"
        )
    if _FORBIDDEN.search(text) and username == user:
        return (
            f"MLflow user {user} may not do this (403): its grants do not cover it (deletes need the admin), or the "
            "model or experiment was deleted or renamed, or the grants are missing (an admin re-runs the "
            "mlflow-users Job; README, Security)"
        )
    if _FORBIDDEN.search(text):
        return (
            f"MLflow user {username or '(none: MLFLOW_TRACKING_USERNAME is unset)'} may not do this (403): it "
            f"needs the {user} user in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (README, Security)"
        )
    return None
