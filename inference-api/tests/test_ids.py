"""Request and log-row ids (``inference_api.ids``): 32 lowercase hex characters, ordered by creation time,
unique, and not repeated by a forked child."""

from __future__ import annotations

import os
import random
import re
import time

from inference_api.ids import ID_LENGTH, new_id

HEX = re.compile(r"^[0-9a-f]{32}$")


def test_ids_are_32_hex_characters_and_unique() -> None:
    ids = [new_id() for _ in range(100_000)]
    assert ID_LENGTH == 32
    assert all(HEX.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_ids_sort_by_creation_time_at_millisecond_resolution() -> None:
    start = time.time_ns() // 1_000_000
    earlier = [new_id() for _ in range(50)]
    time.sleep(0.002)
    later = [new_id() for _ in range(50)]
    end = time.time_ns() // 1_000_000
    assert max(earlier) < min(later)
    stamps = [int(i[:12], 16) for i in earlier + later]  # the first 12 hex digits: Unix time in milliseconds
    assert start <= min(stamps) and max(stamps) <= end


def test_a_forked_child_makes_ids_of_its_own() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    parent = new_id()
    assert HEX.match(child)
    assert child[12:] != parent[12:]  # the random parts differ: the generator was seeded again in the child


def test_seeding_the_global_generator_does_not_repeat_ids() -> None:
    """Hypothesis seeds ``random`` before every example, in the process that runs the test servers."""
    random.seed(0)
    first = new_id()
    random.seed(0)
    assert new_id()[12:] != first[12:]
