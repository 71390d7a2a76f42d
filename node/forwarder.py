"""Moves spooled messages to the broker and forgets each one only once it was acknowledged.

Messages leave in spool order, at most ``window`` unacknowledged at a time and at most
``rate_per_s`` per second, so a backlog after an outage drains steadily instead of flooding
the broker. paho re-sends what is in flight after a reconnect; after a restart of the node
the spool still holds everything unacknowledged and it is sent again (QoS 1 is "at least
once": the last few messages before a crash may arrive twice; the collector ignores a reading
whose step it has already seen).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tinyml_core.mqtt import MqttClient, PublishWindow
from tinyml_core.ratelimit import TokenBucket

from .spool import Spool

DEFAULT_WINDOW = 20


@dataclass
class ForwarderStats:
    sent: int = 0
    acknowledged: int = 0


class Forwarder:
    def __init__(self, spool: Spool, client: MqttClient, rate_per_s: float,
                 window: int = DEFAULT_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spool = spool
        self.client = client
        self.window: PublishWindow[int] = PublishWindow(client, window)  # keys: spool ids
        self.stats = ForwarderStats()
        self.pace = TokenBucket(rate_per_s, burst=window, clock=clock)
        self._last_sent_id = 0

    def step(self) -> int:
        """Forget acknowledged messages, send what the window and rate allow; returns sent."""
        done = self.window.acknowledged()
        if done:
            self.spool.remove(done)
            self.stats.acknowledged += len(done)
        if self.spool.last_id <= self._last_sent_id:
            return 0  # nothing new (spares the idle loop a query)
        room = min(self.window.room(), self.pace.available())
        if room <= 0:
            return 0
        batch = self.spool.after(self._last_sent_id, room)
        for message in batch:
            self.window.publish(message.id, message.topic, message.payload)
            self._last_sent_id = message.id
        self.pace.spend(len(batch))
        self.stats.sent += len(batch)
        return len(batch)

    @property
    def in_flight(self) -> int:
        return len(self.window)

    def drain(self, timeout: float) -> bool:
        """Keep forwarding until the spool is empty (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.step()
            if not self.window and len(self.spool) == 0:
                return True
            time.sleep(0.01)
        return False
