"""Moves spooled messages to the broker and forgets each one only once it was acknowledged, and
each reading only once a collector has confirmed it too (node/confirmations.py).

Messages leave in spool order, at most ``window`` unacknowledged at a time and at most
``rate_per_s`` per second, so a backlog after an outage drains steadily instead of flooding
the broker. paho re-sends what is in flight after a reconnect; then the readings the broker had
acknowledged but no collector confirmed are sent again, before anything new. After a restart of
the node the spool still holds everything unacknowledged and unconfirmed, and it is sent again
(QoS 1 is "at least once": the collector counts a reading whose step it already has as a repeat).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from tinyml_core.errors import PayloadError
from tinyml_core.messages import Confirmation
from tinyml_core.mqtt import MqttClient, PublishWindow
from tinyml_core.ratelimit import TokenBucket

from .confirmations import ConfirmationTracker
from .spool import Spool

log = logging.getLogger("node.forwarder")

DEFAULT_WINDOW = 20
CONFIRMATIONS_HEARD = "confirmations_heard"  # spool counter: has a collector ever confirmed?


@dataclass
class ForwarderStats:
    sent: int = 0
    acknowledged: int = 0
    sent_again: int = 0  # unconfirmed readings sent again after a reconnect


@dataclass(frozen=True)
class _Sent:
    spool_id: int
    seq: int | None
    connection: int
    again: bool = False  # from the unconfirmed table


class Forwarder:
    def __init__(self, spool: Spool, client: MqttClient, rate_per_s: float,
                 window: int = DEFAULT_WINDOW,
                 clock: Callable[[], float] = time.monotonic,
                 confirmations: ConfirmationTracker | None = None) -> None:
        self.spool = spool
        self.client = client
        self.window: PublishWindow[_Sent] = PublishWindow(client, window)
        self.pace = TokenBucket(rate_per_s, burst=window, clock=clock)
        self.confirmations = confirmations
        self.stats = ForwarderStats()
        self._last_sent_id = 0
        self._connection = 0  # the client's connection the unconfirmed were last queued for
        self._send_again: deque[int] = deque()
        self._queued: set[int] = set()  # in _send_again
        self._look_again = False  # an acknowledgement came for a message of an older connection
        self.refuse_confirmations = threading.Event()  # set by another thread: the broker said no

    def step(self) -> int:
        """Forget acknowledged and confirmed messages, send what the window and rate allow;
        returns how many were sent."""
        if self.refuse_confirmations.is_set() and self.confirmations is not None:
            self.disable_confirmations()
        self._take_acknowledgements()
        tracker = self.confirmations
        if tracker is not None:
            self._take_confirmations(tracker)
            if self.client.is_connected and (self.client.connection != self._connection
                                             or self._look_again):
                # Published on an earlier connection (also those paho re-sent after the reconnect
                # and the broker acknowledged only then): no confirmation can cover them.
                self._connection, self._look_again = self.client.connection, False
                again = [spool_id for spool_id in tracker.to_send_again(self._connection)
                         if spool_id not in self._queued]
                self._send_again.extend(again)
                self._queued.update(again)
        if not self._send_again and self.spool.last_id <= self._last_sent_id:
            return 0  # nothing new (spares the idle loop a query)
        room = min(self.window.room(), self.pace.available())
        if room <= 0:
            return 0
        sent = self._send_unconfirmed_again(room, tracker) if tracker is not None else 0
        connection = self.client.connection
        for message in self.spool.after(self._last_sent_id, room - sent):
            self.window.publish(_Sent(message.id, message.seq, connection), message.topic,
                                message.payload)
            self._last_sent_id = message.id
            sent += 1
        self.pace.spend(sent)
        self.stats.sent += sent
        return sent

    def _send_unconfirmed_again(self, room: int, tracker: ConfirmationTracker) -> int:
        ids = [self._send_again.popleft() for _ in range(min(room, len(self._send_again)))]
        if not ids:
            return 0
        self._queued.difference_update(ids)
        messages = self.spool.unconfirmed(ids)
        tracker.forget(ids)  # back when acknowledged, with this connection; gone if dropped
        connection = self.client.connection
        for message in messages:
            self.window.publish(_Sent(message.id, message.seq, connection, again=True),
                                message.topic, message.payload)
        self.stats.sent_again += len(messages)
        return len(messages)

    def _take_acknowledgements(self) -> None:
        handles = self.window.acknowledged_handles()
        if not handles:
            return
        done = [sent for sent, _ in handles]
        self.stats.acknowledged += len(done)
        tracker = self.confirmations
        first_time = [sent.spool_id for sent in done if not sent.again]
        if tracker is None or not tracker.active:
            self.spool.remove(first_time)
            return
        self._look_again |= any(sent.connection != self._connection for sent in done)
        # Where each PUBACK came among the arrivals; without the client's tracking, now (later
        # than the truth: a confirmation that came meanwhile does not count, the next one does).
        now = self.client.events
        kept = {m.id for m in self.spool.acknowledged(first_time, keep_readings=True)}
        for sent, handle in handles:
            if sent.again or sent.spool_id in kept:
                event = handle.acknowledged_event()
                tracker.acknowledged(sent.spool_id, sent.seq or 0, sent.connection,
                                     now if event is None else event)

    def _take_confirmations(self, tracker: ConfirmationTracker) -> None:
        while (message := self.client.receive(timeout=0)) is not None:
            try:
                confirmation = Confirmation.decode(message.payload)
            except PayloadError as error:
                log.warning("ignored a confirmation on %s: %s", message.topic, error)
                continue
            if confirmation.seq >= self.spool.peek_seq():
                # Numbers this node never gave out: the collector knew it before its spool was
                # deleted. Carry on above them, so that numbers stay unique.
                log.warning("collector %s confirmed seq %d, above this node's numbering; "
                            "numbering continues from %d", confirmation.collector_id,
                            confirmation.seq, confirmation.seq + 1)
                self.spool.skip_seq_to(confirmation.seq + 1)
                continue
            if not tracker.active:
                self.spool.increment(CONFIRMATIONS_HEARD)  # from now on, readings are kept
            self.spool.confirmed(tracker.confirmation(
                confirmation.seq, message.connection, message.event))

    def disable_confirmations(self) -> None:
        """No collector can confirm (e.g. the broker refused the subscription): forget readings
        once the broker has them, as without confirmations."""
        if self.confirmations is not None:
            self.spool.confirmed([m.id for m in self.spool.unconfirmed()])
            self.confirmations = None
            self._send_again.clear()
            self._queued.clear()

    @property
    def in_flight(self) -> int:
        return len(self.window)

    def drain(self, timeout: float) -> bool:
        """Keep forwarding until nothing waits for the broker (True) or ``timeout`` passes
        (False). Unconfirmed readings stay in the spool for the next start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.step()
            if not self.window and len(self.spool) == 0:
                return True
            time.sleep(0.01)
        return False
