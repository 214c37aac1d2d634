"""What the benchmarks' command lines share: help that keeps the module docstring's layout and shows defaults."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each option's default."""


def parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser for a bench script whose module docstring is ``description``."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
