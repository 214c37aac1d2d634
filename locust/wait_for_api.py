"""Wait until the API is ready (a champion loaded): the init container of the Locust pods and the Job.

python wait_for_api.py http://inference-api:8000 [timeout seconds, default 1800]
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request


def main(url: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health/ready", timeout=5):  # noqa: S310 - the configured API
                print(f"wait_for_api: {url} is ready", flush=True)
                return 0
        except urllib.error.HTTPError as exc:
            state = f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
        except OSError as exc:
            state = f"unreachable ({exc})"
        if state != last:
            print(f"wait_for_api: {url} not ready yet: {state}", flush=True)
            last = state
        time.sleep(3)
    print(f"wait_for_api: {url} was not ready within {timeout:.0f} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: wait_for_api.py API_URL [TIMEOUT_SECONDS]")
    sys.exit(main(sys.argv[1].rstrip("/"), float(sys.argv[2]) if len(sys.argv) > 2 else 1800))
