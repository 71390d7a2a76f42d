"""Which sent messages a collector has confirmed, which to send again, and how many may be
out at once.

The broker's PUBACK says only that the broker took a message: Mosquitto acknowledges before it
writes to disk (a crash loses it), and drops what overflows a subscriber's queue
(``max_queued_messages``, 1000 on a stock broker) without telling the publisher. So the
collector publishes, per node and sensor kind, exactly which sequence numbers it has taken
(``confirmed/<node_id>/<kind>``: ranges, not just the highest, since a lost message leaves a
hole below it). The node keeps every message until a confirmation covers it; it sends no more
than ``window`` unconfirmed at a time (so no queue between it and the collector ever holds more
of its messages than that), and sends again what a reconnect may have lost, a hole below what
a confirmation covers (messages of a kind arrive in order), and what stays unconfirmed
``resend_after_s`` after its PUBACK.

Until a node has heard its first confirmation (ever: the spool remembers), nothing is kept: a
node without any collector behaves as it did before confirmations, and says so. A replay,
which has no memory, expects one for ``give_up_after_s`` and then falls back the same way.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tinyml_core.messages import CONFIRM_WINDOW
from tinyml_core.seqranges import SeqRanges

from .spool import SpooledMessage

log = logging.getLogger("node.confirmations")

DEFAULT_WINDOW = CONFIRM_WINDOW  # unconfirmed at most (a stock broker queues 1000 per client)
RESEND_AFTER_S = 10.0  # unconfirmed this long after its PUBACK: sent again
HOLE_GRACE_S = 1.0  # a hole below confirmed numbers is sent again once this old


@dataclass
class _Kept:
    node_id: str
    kind: str
    seq: int
    connection: int  # MqttClient.connection it was acknowledged on (-1: before this process)
    acknowledged_at: float  # clock() of its PUBACK


class ConfirmationTracker:
    def __init__(self, restored: Iterable[SpooledMessage] = (), active: bool = False,
                 window: int = DEFAULT_WINDOW, resend_after_s: float = RESEND_AFTER_S,
                 give_up_after_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Left in the spool by an earlier run: sent again on the first connection.
        self._kept = {m.id: _Kept(m.node_id, m.kind, m.seq or 0, -1, clock()) for m in restored}
        self.active = active or bool(self._kept)  # a collector has confirmed something, ever
        self.window = window
        self.resend_after_s = resend_after_s
        self.give_up_after_s = give_up_after_s
        self._started = clock()
        self._confirmed: dict[tuple[str, str], SeqRanges] = {}  # (node, kind): what was heard
        self.highest: dict[str, int] = {}  # kind -> highest seq any confirmation named
        self.heard_at: float | None = None  # time.time() of the last confirmation
        self.confirmed = 0
        self.gave_up = False

    def __len__(self) -> int:
        return len(self._kept)

    def keeps(self, spool_id: int) -> bool:
        """Whether this message still waits for a confirmation."""
        return spool_id in self._kept

    def acknowledged(self, spool_id: int, node_id: str, kind: str, seq: int,
                     connection: int) -> bool:
        """The broker took it; False when a confirmation already covered it (forget it)."""
        heard = self._confirmed.get((node_id, kind))
        if heard is not None and seq in heard:
            self.confirmed += 1
            return False
        self._kept[spool_id] = _Kept(node_id, kind, seq, connection, self._clock())
        return True

    def confirmation(self, node_id: str, kind: str, taken: Iterable[tuple[int, int]]
                     ) -> list[int]:
        """A confirmation arrived: the spool ids it covers."""
        self.active = True
        heard = self._confirmed.setdefault((node_id, kind), SeqRanges())
        heard.update(taken)
        if heard.highest is not None:
            self.highest[kind] = max(self.highest.get(kind, -1), heard.highest)
        self.heard_at = time.time()
        covered = [spool_id for spool_id, kept in self._kept.items()
                   if kept.kind == kind and kept.node_id == node_id and kept.seq in heard]
        for spool_id in covered:
            del self._kept[spool_id]
        self.confirmed += len(covered)
        # A hole below what was taken: messages of a kind arrive in order, so one sent before a
        # taken one and still missing was lost (a full queue, a restarted collector); send it
        # again now rather than after resend_after_s. (Not one sent again just now: its
        # confirmation may still be on the way.)
        settled = self._clock() - HOLE_GRACE_S
        for kept in self._kept.values():
            if (kept.kind == kind and kept.node_id == node_id and heard.highest is not None
                    and kept.seq < heard.highest and kept.acknowledged_at < settled):
                kept.acknowledged_at = -math.inf
        return covered

    def room(self, in_flight: int) -> int:
        """How many new messages may be sent now (``in_flight``: sent, not yet acknowledged
        by the broker)."""
        if not self.active:
            return self.window  # no collector confirms: nothing to wait for
        return max(0, self.window - len(self._kept) - in_flight)

    def to_send_again(self, connection: int) -> list[int]:
        """Spool ids acknowledged on an earlier connection, or ``resend_after_s`` ago and not
        confirmed since, oldest first."""
        late = self._clock() - self.resend_after_s
        return sorted(spool_id for spool_id, kept in self._kept.items()
                      if kept.connection != connection or kept.acknowledged_at < late)

    def should_give_up(self) -> bool:
        """No confirmation at all ``give_up_after_s`` after the start while messages wait for
        one: no collector confirms (none runs, or the ACL hides the topic)."""
        return (self.give_up_after_s is not None and not self.gave_up and self.heard_at is None
                and bool(self._kept)
                and self._clock() - self._started > self.give_up_after_s)

    def give_up(self) -> list[int]:
        """Stop waiting for confirmations: the spool ids kept (forget them)."""
        self.gave_up, self.active = True, False
        ids = list(self._kept)
        self._kept.clear()
        return ids

    def forget(self, spool_ids: Iterable[int]) -> None:
        """Rows the spool dropped (its caps) or that are gone."""
        for spool_id in spool_ids:
            self._kept.pop(spool_id, None)

    def line(self) -> str:
        if not self.active:
            return "no collector has ever confirmed a message: none are kept once sent"
        if self.heard_at is None:
            return f"no confirmation since the start, {len(self)} messages kept until one comes"
        ago = time.time() - self.heard_at
        highest = ", ".join(f"{kind} {seq}" for kind, seq in sorted(self.highest.items()))
        return (f"confirmed up to seq {highest} ({ago:.0f} s ago), {len(self)} messages kept "
                "until confirmed")
