"""Shared library of the diabetes-readmission platform: feature contract, data source, RAW and CLEAN stores."""

__version__ = "0.1.0"
