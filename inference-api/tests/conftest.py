"""Registers the API tests' fixtures, defined in apisupport.py."""

from apisupport import mysql_log_url, private_mariadb, registry, unreachable_mysql_url  # noqa: F401
