"""What the benchmarks' command lines share: help that keeps the module docstring's layout and shows defaults."""

from __future__ import annotations

import argparse
import os


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each option's default."""


def parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser for a bench script whose module docstring is ``description``."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def add_api_store_options(parser: argparse.ArgumentParser) -> None:
    """``--tracking-uri`` (the champion's registry) and ``--mysql-url`` (where the API's prediction logs go)."""
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///var/mlflow/mlflow.db"),
        help="the registry holding the champion (`make run` makes one; env MLFLOW_TRACKING_URI)",
    )
    parser.add_argument(
        "--mysql-url",
        default=os.environ.get("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/"),
        help="a MariaDB/MySQL whose user may create databases, for our prediction log (env BENCH_MYSQL_URL)",
    )
