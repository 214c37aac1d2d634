"""What the per-request model-call timeout (PREDICT_TIMEOUT_SECONDS, ``asyncio.wait_for`` in
``inference_api.batcher``) costs, beside a bare ``await`` of the same already-scheduled future, in one run:

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

N = 20_000


async def _awaits(bounded: bool) -> float:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    for _ in range(N):
        future: asyncio.Future[int] = loop.create_future()
        loop.call_soon(future.set_result, 1)
        if bounded:
            await asyncio.wait_for(future, 10.0)
        else:
            await future
    return (time.perf_counter() - started) / N * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rps", type=float, default=5544.7, help="requests/s of the API at 64 clients")
    args = parser.parse_args()
    bare, bounded = [], []
    for _ in range(args.rounds):
        bare.append(asyncio.run(_awaits(False)))
        bounded.append(asyncio.run(_awaits(True)))
    extra = statistics.median(bounded) - statistics.median(bare)
    per_request = 1e6 / args.rps
    print(f"bare await:            {statistics.median(bare):6.2f} us (median of {args.rounds} rounds)")
    print(f"await asyncio.wait_for: {statistics.median(bounded):6.2f} us")
    print(f"extra per request:     {extra:6.2f} us = {extra / per_request:.1%} of {per_request:.0f} us per request")


if __name__ == "__main__":
    main()
