"""Capacity finder: step the users up until the latency or error objective breaks; report the largest step
that held it.

    locust -f locust/locustfile.py,locust/capacity.py --headless --host http://127.0.0.1:8000 \\
        --csv test-output/locust/capacity --html test-output/locust/capacity.html

Each step runs CAPACITY_STEP_SECONDS at a user count (CAPACITY_STEP_USERS more than the step before). At the
end of a step its p95 latency (Locust's window of the step's last seconds) and its error ratio (failures /
requests within the step) are compared with the objective: p95 <= CAPACITY_P95_MS and errors <=
CAPACITY_MAX_ERROR_RATIO. The run stops at the first step that breaks it (or after CAPACITY_MAX_USERS) and
prints one verdict line; the steps are written to CAPACITY_REPORT (JSON). The exit code is 1 when fewer than
CAPACITY_MIN_USERS users held the objective. Works alone or distributed (the shape runs on the master).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from locust import LoadTestShape, events
from locust.env import Environment


def _number(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return float(value) if value else default
    except ValueError:
        raise SystemExit(f"capacity: invalid setting {name}={value!r}: a number is required") from None


@dataclass
class Objective:
    p95_ms: float
    max_error_ratio: float

    def broken_by(self, p95_ms: float, error_ratio: float, requests: int) -> str | None:
        """Why a step with these figures breaks the objective, or None if it holds it."""
        if requests == 0:
            return "no request completed in the step"
        if p95_ms > self.p95_ms:
            return f"p95 {p95_ms:.0f} ms > {self.p95_ms:.0f} ms"
        if error_ratio > self.max_error_ratio:
            return f"errors {error_ratio:.2%} > {self.max_error_ratio:.2%}"
        return None


@dataclass
class Step:
    users: int
    requests: int
    failures: int
    rps: float
    p95_ms: float
    error_ratio: float
    held: bool
    reason: str = ""


def verdict(steps: list[Step], objective: Objective) -> str:
    """The one-line result of a capacity run."""
    held = [s for s in steps if s.held]
    rule = f"objective p95 <= {objective.p95_ms:.0f} ms, errors <= {objective.max_error_ratio:.0%}"
    broke = next((s for s in steps if not s.held), None)
    tail = f"; broke at {broke.users} users ({broke.reason})" if broke else "; never broke up to the last step"
    if not held:
        return f"capacity: holds no step ({rule}){tail}"
    best = held[-1]
    return (
        f"capacity: holds {best.users} users at {best.rps:.1f} req/s, p95 {best.p95_ms:.0f} ms, "
        f"errors {best.error_ratio:.2%} ({rule}){tail}"
    )


class CapacityShape(LoadTestShape):
    """Stepped users; stops at the first step that breaks the objective."""

    def __init__(self) -> None:
        super().__init__()
        self.step_users = int(_number("CAPACITY_STEP_USERS", 10))
        self.step_seconds = _number("CAPACITY_STEP_SECONDS", 30)
        self.max_users = int(_number("CAPACITY_MAX_USERS", 400))
        self.min_users = int(_number("CAPACITY_MIN_USERS", 1))
        self.spawn_rate = _number("CAPACITY_SPAWN_RATE", max(self.step_users, 1))
        self.objective = Objective(_number("CAPACITY_P95_MS", 200), _number("CAPACITY_MAX_ERROR_RATIO", 0.01))
        self.steps: list[Step] = []
        self._step_started = 0.0
        self._at_start = (0, 0)
        self._done = False

    def _users(self) -> int:
        return self.step_users * (len(self.steps) + 1)

    def _close_step(self) -> None:
        total = self.runner.stats.total  # type: ignore[union-attr]
        requests = total.num_requests - self._at_start[0]
        failures = total.num_failures - self._at_start[1]
        seconds = max(time.monotonic() - self._step_started, 1e-9)
        p95 = float(total.get_current_response_time_percentile(0.95) or 0.0)
        ratio = failures / requests if requests else 0.0
        reason = self.objective.broken_by(p95, ratio, requests)
        step = Step(self._users(), requests, failures, requests / seconds, p95, ratio, reason is None, reason or "")
        self.steps.append(step)
        print(
            f"capacity: step {len(self.steps)}: {step.users} users, {step.rps:.1f} req/s, p95 {p95:.0f} ms, "
            f"errors {ratio:.2%} -> {'holds' if step.held else 'breaks: ' + step.reason}",
            flush=True,
        )
        self._done = not step.held or self._users() > self.max_users

    def tick(self) -> tuple[int, float] | None:
        if self._done:
            return None
        now = time.monotonic()
        if self._step_started == 0.0:
            self._begin(now)
        elif now - self._step_started >= self.step_seconds:
            self._close_step()
            if self._done:
                return None
            self._begin(now)
        return self._users(), self.spawn_rate

    def _begin(self, now: float) -> None:
        total = self.runner.stats.total  # type: ignore[union-attr]
        self._step_started = now
        self._at_start = (total.num_requests, total.num_failures)


@events.quitting.add_listener
def _report(environment: Environment, **_: Any) -> None:
    shape = environment.shape_class
    if not isinstance(shape, CapacityShape) or not shape.steps:
        return  # not a capacity run, or a worker (the shape ticks on the master only)
    line = verdict(shape.steps, shape.objective)
    print(line, flush=True)
    report = Path(os.environ.get("CAPACITY_REPORT") or "capacity.json")
    report.parent.mkdir(parents=True, exist_ok=True)
    held_users = max((s.users for s in shape.steps if s.held), default=0)
    report.write_text(
        json.dumps(
            {
                "verdict": line,
                "objective": asdict(shape.objective),
                "held_users": held_users,
                "steps": [asdict(s) for s in shape.steps],
            },
            indent=2,
        )
    )
    if held_users < shape.min_users:
        print(f"capacity: below the required minimum of {shape.min_users} users (CAPACITY_MIN_USERS)", flush=True)
        environment.process_exit_code = 1
