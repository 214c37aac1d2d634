"""Registers the page tests' fixtures, defined in uisupport.py."""

from uisupport import (  # noqa: F401
    api_url,
    closed_url,
    not_ready_api_url,
    recording_api,
    registry_uri,
    unexplained_api_url,
)
