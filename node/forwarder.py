"""Moves spooled messages to the broker and forgets each one only once a collector has
confirmed it (node/confirmations.py; before any collector ever confirmed, once the broker
acknowledged it).

Messages leave in spool order, at most ``window`` unacknowledged by the broker at a time, at
most the tracker's window unconfirmed by the collector, and at most ``rate_per_s`` per second
(keep it under the collector's per-node rate limit), so a backlog after an outage drains
steadily instead of flooding the broker's queue or the collector's limit. paho re-sends what
is in flight after a reconnect; then what the broker had acknowledged but no collector
confirmed is sent again, before anything new, as is what stays unconfirmed for
``resend_after_s``. After a restart of the node the spool still holds everything unconfirmed,
and it is sent again (QoS 1 is "at least once": the collector recognises what it took before).
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
RESEND_CHECK_S = 1.0  # how often unconfirmed messages are looked at for a re-send


@dataclass
class ForwarderStats:
    sent: int = 0
    acknowledged: int = 0
    sent_again: int = 0  # unconfirmed messages sent again (after a reconnect or a timeout)


@dataclass(frozen=True)
class _Sent:
    spool_id: int
    node_id: str
    kind: str
    seq: int | None
    connection: int


class Forwarder:
    def __init__(self, spool: Spool, client: MqttClient, rate_per_s: float,
                 window: int = DEFAULT_WINDOW,
                 clock: Callable[[], float] = time.monotonic,
                 confirmations: ConfirmationTracker | None = None,
                 owns_numbering: bool = True) -> None:
        self.spool = spool
        self.client = client
        self.window: PublishWindow[_Sent] = PublishWindow(client, window)
        self.pace = TokenBucket(rate_per_s, burst=window, clock=clock)
        self.confirmations = confirmations
        self.owns_numbering = owns_numbering  # False: a replay, whose numbers are recorded
        self.stats = ForwarderStats()
        self._clock = clock
        self._last_sent_id = 0
        self._connection = 0  # the client's connection the unconfirmed were last queued for
        self._resend_checked = clock()
        self._send_again: deque[int] = deque()
        self._queued: set[int] = set()  # in _send_again
        self._said_unconfirmed = False
        self.refuse_confirmations = threading.Event()  # set by another thread: the broker said no

    def step(self) -> int:
        """Forget what was confirmed, send what the windows and the rate allow; returns how
        many were sent."""
        if self.refuse_confirmations.is_set() and self.confirmations is not None:
            self.disable_confirmations()
        self._take_acknowledgements()
        tracker = self.confirmations
        if tracker is not None:
            self._take_confirmations(tracker)
            if tracker.should_give_up():
                log.warning("no collector confirmed anything within %.0f s: sending on without "
                            "waiting for confirmations (a full broker queue may drop messages "
                            "unnoticed; is a collector running, and may it publish "
                            "confirmed/#?)", tracker.give_up_after_s)
                self.spool.confirmed(tracker.give_up())
            self._queue_unconfirmed(tracker)
        if not self._send_again and self.spool.last_id <= self._last_sent_id:
            return 0  # nothing new (spares the idle loop a query)
        room = min(self.window.room(), self.pace.available())
        if room <= 0:
            return 0
        sent = self._send_unconfirmed_again(room) if tracker is not None else 0
        if tracker is not None:
            room = min(room, sent + tracker.room(len(self.window)))
            if not tracker.active and not self._said_unconfirmed:
                self._said_unconfirmed = True
                log.info("no collector has confirmed a message yet: each is forgotten once the "
                         "broker has it, until one does")
        connection = self.client.connection
        for message in self.spool.after(self._last_sent_id, room - sent):
            self.window.publish(_Sent(message.id, message.node_id, message.kind, message.seq,
                                      connection), message.topic, message.payload)
            self._last_sent_id = message.id
            sent += 1
        self.pace.spend(sent)
        self.stats.sent += sent
        return sent

    def _queue_unconfirmed(self, tracker: ConfirmationTracker) -> None:
        """After a reconnect (the broker may have lost them) and every RESEND_CHECK_S (its queue
        may have dropped them): queue what is unconfirmed for sending again."""
        now = self._clock()
        reconnected = self.client.is_connected and self.client.connection != self._connection
        if not reconnected and now - self._resend_checked < RESEND_CHECK_S:
            return
        self._resend_checked = now
        if self.client.is_connected:
            self._connection = self.client.connection
        again = [spool_id for spool_id in tracker.to_send_again(self._connection)
                 if spool_id not in self._queued]
        self._send_again.extend(again)
        self._queued.update(again)

    def _send_unconfirmed_again(self, room: int) -> int:
        """Send up to ``room`` of the queued messages that are still unconfirmed. Those a
        confirmation covered since they were queued are skipped, not counted: the room they
        would leave goes to new messages, and a few steps of that let new readings overtake a
        lost one by more than the collector's windows can still repair."""
        tracker = self.confirmations
        assert tracker is not None
        ids: list[int] = []
        while self._send_again and len(ids) < room:
            spool_id = self._send_again.popleft()
            self._queued.discard(spool_id)
            if tracker.keeps(spool_id):
                ids.append(spool_id)
        if not ids:
            return 0
        messages = self.spool.unconfirmed(ids)
        tracker.forget(ids)  # back when acknowledged, with this connection
        connection = self.client.connection
        for message in messages:
            self.window.publish(_Sent(message.id, message.node_id, message.kind, message.seq,
                                      connection), message.topic, message.payload)
        self.stats.sent_again += len(messages)
        return len(messages)

    def _take_acknowledgements(self) -> None:
        done = self.window.acknowledged()
        if not done:
            return
        self.stats.acknowledged += len(done)
        tracker = self.confirmations
        if tracker is None or not tracker.active:
            self.spool.remove([sent.spool_id for sent in done])
            return
        # Moved to the unconfirmed table (again: a re-sent one is there already).
        self.spool.acknowledged([sent.spool_id for sent in done], keep=True)
        covered = [sent.spool_id for sent in done if sent.seq is None
                   or not tracker.acknowledged(sent.spool_id, sent.node_id, sent.kind,
                                               sent.seq, sent.connection)]
        self.spool.confirmed(covered)

    def _take_confirmations(self, tracker: ConfirmationTracker) -> None:
        while (message := self.client.receive(timeout=0)) is not None:
            try:
                confirmation = Confirmation.decode(message.payload)
            except PayloadError as error:
                log.warning("ignored a confirmation on %s: %s", message.topic, error)
                continue
            kind = confirmation.kind
            if confirmation.spool is not None and confirmation.spool != self.spool.spool_id:
                # Another numbering's (this node's id before its spool was made, the retained
                # confirmation of an earlier replay, or another node given the same id): its
                # numbers are not ours, but a collector confirms this node: keep what is sent
                # until it confirms ours.
                log.debug("ignored a confirmation of spool %s (ours: %s)", confirmation.spool,
                          self.spool.spool_id)
                self._collector_heard(tracker)
                continue
            if (confirmation.spool is None and self.owns_numbering
                    and confirmation.seq >= self.spool.peek_seq(kind)):
                # A collector from before spool ids: it cannot tell numberings apart.
                # Numbers this node never gave out: the collector knew it before its spool was
                # deleted. Carry on above them, so that numbers stay unique.
                log.warning("collector %s confirmed %s seq %d, above this node's numbering; "
                            "numbering continues from %d", confirmation.collector_id, kind,
                            confirmation.seq, confirmation.seq + 1)
                self.spool.skip_seq_to(confirmation.seq + 1, kind)
                continue
            self._collector_heard(tracker)
            self.spool.confirmed(tracker.confirmation(confirmation.node_id, kind,
                                                      confirmation.taken))

    def _collector_heard(self, tracker: ConfirmationTracker) -> None:
        """A collector confirms this node: from now on (and after restarts), messages are kept
        until confirmed."""
        if not tracker.active and self.owns_numbering:
            self.spool.increment(CONFIRMATIONS_HEARD)
        tracker.active = True

    def disable_confirmations(self) -> None:
        """No collector can confirm (e.g. the broker refused the subscription): forget messages
        once the broker has them, as without confirmations."""
        if self.confirmations is not None:
            self.spool.confirmed([m.id for m in self.spool.unconfirmed()])
            self.confirmations = None
            self._send_again.clear()
            self._queued.clear()

    @property
    def in_flight(self) -> int:
        return len(self.window)

    @property
    def settled(self) -> bool:
        """Nothing waits to be sent, acknowledged or confirmed."""
        tracker = self.confirmations
        return (not self.window and len(self.spool) == 0
                and (tracker is None or not tracker.active or len(tracker) == 0))

    def drain(self, timeout: float) -> bool:
        """Keep forwarding until nothing waits for the broker (True) or ``timeout`` passes
        (False). Unconfirmed messages stay in the spool for the next start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.step()
            if not self.window and len(self.spool) == 0:
                return True
            time.sleep(0.01)
        return False
