"""When to retry a failed list or watch, and what to say about it.

Pure. The delay is exponential backoff with full jitter: attempt n waits a uniformly random time in
[0, min(cap, base * 2**(n-1))). A DaemonSet of thousands of agents that lost the API server at the same moment
then spreads its retries over the whole window instead of arriving in step, and a long outage settles at one
try per `cap` seconds on average per watch. The random fraction is an argument, so the schedule is a function
that tests can check for every attempt.

`FailureStreak` turns a run of failures into two log lines: one when the first watch fails while none was
failing, one when every watch works again, with the number of failed attempts in between.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

# client-go's reflector starts at 800 ms and caps at 30 s; a node agent is less urgent than a controller.
BASE_SECONDS = 0.8
CAP_SECONDS = 60.0


@dataclass(frozen=True)
class Backoff:
    base: float = BASE_SECONDS
    cap: float = CAP_SECONDS

    def __post_init__(self):
        if not (0 < self.base <= self.cap):
            raise ValueError(f"backoff needs 0 < base <= cap, not base={self.base} cap={self.cap}")

    def ceiling(self, attempt: int) -> float:
        """The upper end of the wait after the `attempt`-th failure in a row (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, not {attempt}")
        # 2**(attempt-1) overflows a float near attempt 1025; past the cap the exponent no longer matters.
        doublings = min(attempt - 1, 64)
        return min(self.cap, self.base * 2.0 ** doublings)

    def delay(self, attempt: int, fraction: float) -> float:
        """Seconds to wait after the `attempt`-th failure in a row; `fraction` is uniform in [0, 1)."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must lie in [0, 1), not {fraction}")
        return fraction * self.ceiling(attempt)


class FailureStreak:
    """Failures of several watches against one API server, reported once per streak (thread-safe).

    `failed(key, error)` returns the line to log when this failure starts a streak, else None;
    `succeeded(key)` returns the line to log when it ends one, else None."""

    def __init__(self, what: str = "API server"):
        self.what = what
        self._failing: set = set()
        self._attempts = 0
        self._lock = threading.Lock()

    @property
    def attempts(self) -> int:
        with self._lock:
            return self._attempts

    def failed(self, key, error: object) -> str | None:
        with self._lock:
            starts = not self._failing
            self._failing.add(key)
            self._attempts += 1
        if starts:
            return f"{self.what}: {error}; retrying with backoff (one line when it works again)"
        return None

    def succeeded(self, key) -> str | None:
        with self._lock:
            if key not in self._failing:
                return None
            self._failing.discard(key)
            if self._failing:
                return None
            attempts, self._attempts = self._attempts, 0
        return f"{self.what}: working again after {attempts} failed attempt{'s' if attempts != 1 else ''}"
