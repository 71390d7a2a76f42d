"""Which readings the collector has confirmed, and which to send again after a reconnect.

QoS 1 is a promise per hop: Mosquitto acknowledges a PUBLISH before it writes it to disk, so a
broker killed in between loses it, after the node has let it go. The collector that owns the node
publishes ``confirmed/<node_id>``: the highest reading ``seq`` it has taken. A reading the broker
acknowledged stays in the spool (its unconfirmed table) until a confirmation covers it, and after
a reconnect the unconfirmed ones are sent again (the collector fills the steps they were missing
from, or counts them as repeats).

The highest seq does not prove that every lower one arrived: after a broker crash the collector
takes the readings sent after it, above the lost ones. So a confirmation only covers readings
published on the connection it arrived on (the same broker lifetime, where delivery is complete
and in order) and acknowledged before it arrived (in the order the MQTT client's network thread
saw them, however late the forwarder looks); older ones wait to be sent again.

Until a node has heard its first confirmation (ever: the spool remembers), nothing is kept: a
node without any collector behaves as if confirmations were off, and says so.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from .spool import SpooledMessage


@dataclass
class _Kept:
    seq: int
    connection: int  # MqttClient.connection it was published on (-1: before this process)
    acknowledged: int  # where its PUBACK came among the client's arrivals (InboundMessage.event)


class ConfirmationTracker:
    def __init__(self, restored: Iterable[SpooledMessage] = (), active: bool = False) -> None:
        # Left in the spool by an earlier run: sent again on the first connection.
        self._kept = {m.id: _Kept(m.seq or 0, -1, -1) for m in restored}
        self.active = active or bool(self._kept)  # a collector has confirmed something, ever
        self.highest: int | None = None  # highest seq any confirmation named
        self.heard_at: float | None = None  # time.time() of the last confirmation
        self.confirmed = 0

    def __len__(self) -> int:
        return len(self._kept)

    def acknowledged(self, spool_id: int, seq: int, connection: int, event: int) -> None:
        self._kept[spool_id] = _Kept(seq, connection, event)

    def confirmation(self, seq: int, connection: int, event: int) -> list[int]:
        """A confirmation arrived (``event``: InboundMessage.event): the spool ids it covers
        (see the module doc)."""
        self.active = True
        self.highest = seq if self.highest is None else max(self.highest, seq)
        self.heard_at = time.time()
        covered = [spool_id for spool_id, kept in self._kept.items()
                   if kept.seq <= seq and kept.connection == connection
                   and kept.acknowledged < event]
        for spool_id in covered:
            del self._kept[spool_id]
        self.confirmed += len(covered)
        return covered

    def to_send_again(self, connection: int) -> list[int]:
        """Spool ids published before ``connection`` and not confirmed, oldest first."""
        return sorted(spool_id for spool_id, kept in self._kept.items()
                      if kept.connection != connection)

    def forget(self, spool_ids: Iterable[int]) -> None:
        """Rows the spool dropped (its caps) or that are gone."""
        for spool_id in spool_ids:
            self._kept.pop(spool_id, None)

    def line(self) -> str:
        if not self.active:
            return "no collector has ever confirmed a reading: none are kept once sent"
        if self.highest is None:
            return f"no confirmation since the start, {len(self)} readings kept until one comes"
        ago = time.time() - (self.heard_at or 0.0)
        return (f"confirmed up to seq {self.highest} ({ago:.0f} s ago), {len(self)} readings "
                "kept until confirmed")
