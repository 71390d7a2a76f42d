"""A token bucket per node: one node flooding its topics (a bug, or stolen credentials) must
not starve the others. Its excess messages are acknowledged and dropped before they are even
decoded, counted, and reported in one error record per interval."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from tinyml_core.ratelimit import TokenBucket


@dataclass
class _Budget:
    bucket: TokenBucket
    unreported: int = 0
    reported_at: float = -math.inf


@dataclass(frozen=True)
class Admission:
    admitted: bool
    report: int = 0  # > 0: publish an error record saying this many were dropped


ADMITTED = Admission(True)


@dataclass
class NodeRateLimit:
    rate_per_s: float
    burst: int
    report_every_s: float = 10.0
    max_nodes: int = 10_000
    clock: Callable[[], float] = time.monotonic
    dropped: int = 0
    _budgets: OrderedDict[str, _Budget] = field(default_factory=OrderedDict)

    def admit(self, node_id: str) -> Admission:
        budget = self._budgets.get(node_id)
        if budget is None:
            if len(self._budgets) >= self.max_nodes:
                self._budgets.popitem(last=False)  # least recently heard: it starts full again
            budget = self._budgets[node_id] = _Budget(
                TokenBucket(self.rate_per_s, self.burst, self.clock))
        self._budgets.move_to_end(node_id)
        if budget.bucket.take():
            return ADMITTED
        self.dropped += 1
        budget.unreported += 1
        now = self.clock()
        if now - budget.reported_at < self.report_every_s:
            return Admission(False)
        report, budget.unreported, budget.reported_at = budget.unreported, 0, now
        return Admission(False, report)

    def reason(self, dropped: int) -> str:
        return (f"over the rate limit of {self.rate_per_s:g} messages/s (burst {self.burst}): "
                f"{dropped} dropped since the last report")
