"""Registers the API tests' fixtures, defined in apisupport.py."""

from apisupport import (  # noqa: F401
    either_log_url,
    mysql_log_url,
    private_mariadb,
    registry,
    unreachable_mysql_url,
)
