"""Request and prediction-log ids: 32 lowercase hex characters that sort by creation time.

Layout of UUIDv7 (RFC 9562, section 5.7) without its version and variant bits: the Unix time in milliseconds
(48 bits, 12 hex digits), then 80 random bits (20 hex digits). Time order keeps the log's ``log_id`` and
``request_id`` index inserts at the right edge of their B-trees instead of at random pages (InnoDB, PostgreSQL
B-tree), and the random part comes from the ``random`` module's generator (seeded from the OS, and again in a
forked child) instead of one ``getrandom`` system call per id. Two ids made in the same millisecond collide
with probability 2**-80. These ids are labels, not secrets: never use them to authorise anything.
"""

from __future__ import annotations

import time
from random import getrandbits

ID_LENGTH = 32


def new_id() -> str:
    """A fresh id: 32 lowercase hex characters, ordered by creation time (millisecond resolution)."""
    return f"{time.time_ns() // 1_000_000:012x}{getrandbits(80):020x}"
