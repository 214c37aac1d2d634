"""Errors a user can act on. Each message says what is wrong and what to do."""


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
