"""A token bucket: at most ``rate_per_s`` on average, bursts of up to ``burst``.

The node paces a backlog with one (so a reconnect after an outage drains steadily); the
collector keeps one per node (so one node flooding cannot starve the others).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs a rate > 0 and a burst >= 1, not "
                             f"{rate_per_s:g}/s and {burst:g}")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._refilled = clock()

    def available(self) -> int:
        """Whole tokens there are now."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate_per_s)
        self._refilled = now
        return int(self._tokens)

    def spend(self, count: int) -> None:
        """Take ``count`` tokens (after :meth:`available` said they are there)."""
        self._tokens -= count

    def take(self) -> bool:
        """Take one token if there is one."""
        if self.available() >= 1:
            self._tokens -= 1
            return True
        return False
