"""Request and prediction-log ids: 32 lowercase hex characters that sort by creation time.

Layout of UUIDv7 (RFC 9562, section 5.7) without its version and variant bits: the Unix time in milliseconds
(48 bits, 12 hex digits), then 80 random bits (20 hex digits). Time order keeps the log's ``log_id`` and
``request_id`` index inserts at the right edge of their B-trees instead of at random pages (InnoDB, PostgreSQL
B-tree), and the random part comes from a generator of this module's own (``random.Random``, seeded from the
OS at import and again in a forked child; nothing that seeds the global ``random`` generator, as hypothesis
does before every example, can make it repeat) instead of one ``getrandom`` system call per id. Two ids made
in the same millisecond collide with probability 2**-80. These ids are labels, not secrets: the generator's
state can be inferred from a few hundred of them, so never use them to authorise anything.
"""

from __future__ import annotations

import os
import random
import time

ID_LENGTH = 32

_generator = random.Random()  # noqa: S311 (ids are labels, not secrets: see above)
os.register_at_fork(after_in_child=_generator.seed)


def new_id() -> str:
    """A fresh id: 32 lowercase hex characters, ordered by creation time (millisecond resolution)."""
    return f"{time.time_ns() // 1_000_000:012x}{_generator.getrandbits(80):020x}"
