"""What a per-request timeout (PREDICT_TIMEOUT_SECONDS) costs on the gathered path, three ways in one run: a
bare ``await`` of an already-scheduled future (no timeout), ``asyncio.wait_for`` around it (the design
before), and what ``inference_api.batcher`` does now (a deque append per request, scanned by one watchdog):

    python bench/timeout_cost.py --rounds 7

Each round awaits 20,000 futures resolved by ``call_soon`` (the shape of the batcher's answer) both ways,
alternating, and prints microseconds per await; the ratio of the extra cost to a request's time at 64
clients comes from the throughput given by ``--rps`` (the latest ``bench/api.py`` figure).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import deque

N = 20_000


async def _awaits(how: str) -> float:
    loop = asyncio.get_running_loop()
    watched: deque[tuple[float, asyncio.Future[int]]] = deque()
    started = time.perf_counter()
    for _ in range(N):
        future: asyncio.Future[int] = loop.create_future()
        loop.call_soon(future.set_result, 1)
        if how == "wait_for":
            await asyncio.wait_for(future, 10.0)
        else:
            if how == "watchdog":
                watched.append((loop.time() + 10.0, future))
            await future
        while len(watched) > 1_000:  # the watchdog's scan, every 0.25 s in the service
            watched.popleft()
    return (time.perf_counter() - started) / N * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rps", type=float, default=5544.7, help="requests/s of the API at 64 clients")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"bare": [], "wait_for": [], "watchdog": []}
    for _ in range(args.rounds):
        for how, found in times.items():
            found.append(asyncio.run(_awaits(how)))
    bare = statistics.median(times["bare"])
    per_request = 1e6 / args.rps
    print(f"per await, median of {args.rounds} rounds; a request at 64 clients takes {per_request:.0f} us of the loop")
    for how, found in times.items():
        extra = statistics.median(found) - bare
        print(f"  {how:9s} {statistics.median(found):6.2f} us   extra {extra:5.2f} us = {extra / per_request:5.1%}")


if __name__ == "__main__":
    main()
