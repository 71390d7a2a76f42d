"""The collector's MQTT loop: subscribe, hand each message to Inference, publish, acknowledge.

A message is recorded as taken (journal, confirmation to its node, the windows a state file
saves) and acknowledged to the broker only once the broker acknowledged every answer it got,
in the order the messages came. A worker killed at any moment has therefore lost nothing: what
it did not record, the broker delivers again (a persistent session) or the node sends again,
and it is answered again; at most the answers in flight at the kill are published twice (QoS
1 is at least once). Messages are handled in the MQTT client's network thread (no hand-over between
threads: that alone took a third of the CPU per reading); the calling thread waits for a stop
and writes one log line per ``stats_interval_s``: messages in, predictions out, errors and
latency percentiles.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from tinyml_core.errors import MqttError, PayloadError
from tinyml_core.keywords import smoothing_in_force, threshold_in_force
from tinyml_core.messages import Confirmation, EnrollmentTake, ErrorRecord, decode_enrollment
from tinyml_core.mqtt import InboundMessage, MqttClient, PublishHandle
from tinyml_core.statefile import ChangeSaver, state_path
from tinyml_core.topics import (
    SensorKind,
    confirmed_topic,
    enroll_filter,
    errors_topic,
    matches,
    reporting_node_id,
    sensor_filter,
    shared_filter,
)

from .enrollment.broker import Enroller, TakesInbox
from .homeassistant import BIRTH_TOPIC, discovery_messages, trigger_removal_messages
from .inference import Inference
from .settings import CollectorSettings, enrollment_path
from .state import load_state, state_document

log = logging.getLogger("collector")

LATENCY_SAMPLES = 10_000
CONFIRM_EVERY_S = 0.1  # how often handle() looks for due confirmations
CONFIRM_IDLE_S = 0.2  # without messages, the worker's own loop does
MAX_ANNOUNCED = 10_000
ENROLLMENT_CHECK_S = 2.0  # how often the enrollment file is looked at for changes
SETTLE_WAIT_S = 5.0  # how long a clean stop waits for the broker to acknowledge answers


class Unsettled(NamedTuple):
    """A message handled whose answers the broker has not all acknowledged yet."""

    message: InboundMessage
    answers: list[PublishHandle]
    records: int  # what it added to Inference's uncommitted records (0 or 1)


@dataclass
class Counters:
    received: int = 0
    predictions: int = 0
    errors: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def line(self, rate_limited: int = 0, repeated_keywords: int = 0) -> str:
        if self.latencies_ms:
            p50, p99 = np.percentile(np.array(self.latencies_ms), [50, 99])
            latency = f"handling p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        else:
            latency = "no latency yet"
        limited = f", {rate_limited} dropped over a node's rate limit" if rate_limited else ""
        repeated = (f", keywords heard twice in overlapping sound events (reported once): "
                    f"{repeated_keywords}") if repeated_keywords else ""
        return (f"{self.received} messages in, {self.predictions} predictions out, "
                f"{self.errors} errors{limited}{repeated}; {latency}")


class Worker:
    def __init__(self, settings: CollectorSettings, inference: Inference) -> None:
        options = settings.collector
        self.settings = settings
        self.inference = inference
        # Every answer is bounded by the broker's window of unacknowledged deliveries to us,
        # so paho's own publish window (costly per PUBACK) is not needed.
        self.client = MqttClient(settings.broker, options.id, persistent_session=True,
                                 manual_ack=True, max_inflight=0, handler=self.handle,
                                 on_acknowledged=self._acknowledged,
                                 online_after_subscribing=True)
        self.counters = Counters()
        self.stop_requested = threading.Event()
        self.announced: set[str] = set()  # nodes whose Home Assistant discovery was sent
        # Held while a message changes the windows or is recorded, and while the windows are
        # copied for saving. Never held while waiting for the broker: PUBACKs are read in the
        # network thread, which takes it too.
        self._windows_lock = threading.Lock()
        self._unsettled: deque[Unsettled] = deque()
        path = state_path(options.state_path, options.id)
        self.saver = None if path is None or not inference.forecasters else ChangeSaver(
            path, "windows", lambda: inference.readings, self._windows_document)
        self._confirmed_at = 0.0  # time.monotonic() of the last look for due confirmations
        # Takes sent over the broker (`node enroll`), adapted in the enroller's thread.
        enrolled_file = enrollment_path(options)
        self.enroller = None if inference.spotter is None or enrolled_file is None else \
            Enroller(enrolled_file, options.models_dir, inference.spotter.name, options.id,
                     lambda topic, payload: self.client.publish(topic, payload))
        self.inbox = None if self.enroller is None else TakesInbox()
        self._saved_through = 0  # the journal index of the last reading in the state written

    def filters(self) -> list[str]:
        """Clips are shared in the group; readings never are: a window needs all of a node's
        readings, so workers split them by node (``partition``) instead."""
        group = self.settings.collector.share_group
        filters = [sensor_filter(SensorKind.CLIMATE)] if self.inference.forecasters else []
        if self.inference.spotter is not None:
            audio = sensor_filter(SensorKind.AUDIO)
            filters.append(shared_filter(group, audio) if group else audio)
        if self.enroller is not None:  # never shared: every worker keeps its own layers
            filters.append(enroll_filter())
        return filters

    def start(self) -> None:
        if (self.settings.collector.share_group and self.inference.forecasters
                and self.inference.partition[1] == 1):
            log.warning("--share splits clips only; without --partition K/N every worker of "
                        "the group forecasts every node")
        log.info("%s", self.models_line())
        if self.saver is not None:
            # Before connecting: a resumed session delivers what waited for us at once.
            load_state(self.saver.path, self.settings.collector.id, self.inference)
        if self.enroller is not None:
            self.enroller.start()
        self.client.connect()
        for topic_filter in self.filters():
            self.client.subscribe(topic_filter)
            log.info("subscribed to %s", topic_filter)
        if self.settings.collector.ha_discovery:
            self.client.subscribe(BIRTH_TOPIC)
        # Only now: a node or benchmark that waits for `online` may send at once.
        self.client.announce_online()

    def models_line(self) -> str:
        """Which models answer, and the keyword threshold in force (and whose it is)."""
        forecasters = ", ".join(f.name for f in self.inference.forecasters) or "none"
        spotter = self.inference.spotter
        if spotter is None:
            return f"forecasters: {forecasters}; keyword model: none"
        scan = self.inference.scan

        def whose(setting: object) -> str:
            return "the model's own" if setting is None else "set in the config"

        count = smoothing_in_force(scan, spotter)
        windows = "no smoothing" if count == 1 else f"smoothed over {count} windows"
        if whose(scan.smoothing) != whose(scan.threshold):  # else said once, for both
            windows += f" ({whose(scan.smoothing)})"
        threshold = f"{threshold_in_force(scan, spotter):g}"
        clip_threshold = threshold_in_force(scan, spotter, clip=True)
        if f"{clip_threshold:g}" != threshold:
            threshold += f" for sound events, {clip_threshold:g} for single clips"
        others = "".join(f"; {node} on {name}"
                         for node, name in sorted(self.inference.node_keyword_models.items()))
        return (f"forecasters: {forecasters}; keyword model: {spotter.name}, threshold "
                f"{threshold} ({whose(scan.threshold)}), {windows}{others}")

    def run(self, duration_s: float | None = None) -> None:
        """Log stats until stop() (e.g. from tinyml_core.cli.stop_on_signals) or ``duration_s``."""
        interval = self.settings.collector.stats_interval_s
        next_stats = time.monotonic() + interval
        save_every = self.settings.collector.state_save_s
        next_save = time.monotonic() + save_every
        deadline = None if duration_s is None else time.monotonic() + duration_s
        next_enrollment_check = time.monotonic() + ENROLLMENT_CHECK_S
        while not self.stop_requested.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if now >= next_stats:
                log.info("%s", self.stats_line())
                next_stats += interval
            if now - self._confirmed_at >= CONFIRM_IDLE_S:  # no traffic: handle() is not called
                with self._windows_lock:
                    self._settle()
                self.publish_confirmations()
            if self.saver is not None and save_every and now >= next_save:
                self.save_windows()
                next_save = now + save_every
            if now >= next_enrollment_check:  # `collector enroll` changed it: no restart
                with self._windows_lock:  # between two messages
                    self.inference.refresh_enrollments()
                if self.settings.collector.ha_discovery:
                    self.announce_changed_words()
                next_enrollment_check = now + ENROLLMENT_CHECK_S
            wake = next_stats if deadline is None else min(next_stats, deadline)
            self.stop_requested.wait(min(0.1, max(0.0, wake - now)))

    def publish_confirmations(self, everything: bool = False) -> None:
        """Tell each node which of its messages were taken (retained, per node and kind at most
        every CONFIRM_INTERVAL_S; docs/protocol.md). Called from handle(), in the network
        thread, while messages flow, and from run() when none do. (The ~15 ms these
        publications once added to every answer was Nagle's algorithm, mended in
        tinyml_core.mqtt, not the thread.)"""
        self._confirmed_at = time.monotonic()
        collector_id = self.settings.collector.id
        now = time.time()
        book = self.inference.confirmations
        due = book.due(everything)
        if due:
            book.sync()  # what is confirmed survives a power cut
        for one in due:
            confirmation = Confirmation(one.node_id, collector_id, one.kind,
                                        one.taken.highest or 0, tuple(one.taken), now, one.spool)
            try:
                self.client.publish(confirmed_topic(one.node_id, one.kind),
                                    confirmation.encode(), retain=True)
            except MqttError as error:  # e.g. paho's queue full under a flood: try again later
                log.warning("confirmation for %s not sent: %s", one.node_id, error)
                book.again(one)

    def handle(self, message: InboundMessage) -> None:
        """Answer one message (called in the MQTT client's network thread)."""
        if self.stop_requested.is_set():
            return  # unacknowledged: the broker delivers it again to the next session
        if message.topic == BIRTH_TOPIC:
            if message.payload == b"online":  # Home Assistant (re)started: announce again
                for node_id in sorted(self.announced):
                    self.announce(node_id)
            self._answered(message, [])
            return
        if self.enroller is not None and matches(enroll_filter(), message.topic):
            self._answered(message, self._enrollment(message))
            return
        started = time.perf_counter()
        self.counters.received += 1
        if time.monotonic() - self._confirmed_at >= CONFIRM_EVERY_S:
            self.publish_confirmations()
        with self._windows_lock:
            before = self.inference.uncommitted
            try:
                answers = self.inference.handle(message.topic, message.payload)
            except Exception:  # a model or library bug must not stop the worker
                log.exception("unexpected failure on %s; message dropped", message.topic)
                answers = []
            handles = []
            for answer in answers:
                if answer.is_error:
                    self.counters.errors += 1
                else:
                    self.counters.predictions += 1
                try:
                    handles.append(self.client.publish(answer.topic, answer.payload,
                                                       retain=answer.retain))
                except MqttError as error:  # paho refused it outright: nothing to wait for
                    log.error("answer on %s not published: %s", answer.topic, error)
            self._unsettled.append(
                Unsettled(message, handles, self.inference.uncommitted - before))
            self._settle()
        if (self.settings.collector.ha_discovery and not any(a.is_error for a in answers)
                and len(self.announced) < MAX_ANNOUNCED):
            node_id = reporting_node_id(message.topic)
            if node_id not in self.announced:
                self.announced.add(node_id)
                self.announce(node_id)
        self.counters.latencies_ms.append((time.perf_counter() - started) * 1000)

    def _answered(self, message: InboundMessage, answers: list[PublishHandle]) -> None:
        """A message that records nothing: acknowledged in its turn."""
        with self._windows_lock:
            self._unsettled.append(Unsettled(message, answers, 0))
            self._settle()

    def _enrollment(self, message: InboundMessage) -> list[PublishHandle]:
        """One take of an enrollment; the enroller gets the whole once it is complete. A take
        that is malformed, or names another node than the one whose topic it came on (the ACL
        lets a node write only its own), gets an error record."""
        assert self.enroller is not None and self.inbox is not None
        node_id = reporting_node_id(message.topic)
        try:
            take = decode_enrollment(message.topic, message.payload)
            if not isinstance(take, EnrollmentTake):
                raise PayloadError("enroll/<node_id> carries takes")
            takes = self.inbox.add(take)
        except PayloadError as error:
            self.counters.errors += 1
            self.inference.rejections.rejected(message.topic, len(message.payload), error)
            record = ErrorRecord.for_rejected(node_id, time.time(), message.topic,
                                              message.payload, error)
            return [self.client.publish(errors_topic(node_id), record.encode())]
        if takes is not None:
            log.info("enrollment of %s on %s complete (%d takes): adapting", takes.person,
                     node_id, takes.count + len(takes.speech))
            self.enroller.submit(node_id, take.session, takes)
        return []

    def _acknowledged(self, mid: int) -> None:
        """A PUBACK (network thread): settle what it completes. paho marks the handle
        acknowledged only after this call, so the mid itself counts as acknowledged here."""
        if self._unsettled:
            with self._windows_lock:
                self._settle(mid)

    def _settle(self, acknowledged_mid: int | None = None) -> None:
        """Record and acknowledge, oldest first, the messages whose answers the broker has all
        acknowledged (called with ``_windows_lock`` held)."""
        unsettled, connection = self._unsettled, self.client.connection
        while unsettled:
            message, answers, records = unsettled[0]
            # An unacknowledged handle's mid is unique among paho's messages in flight.
            if not all(handle.mid == acknowledged_mid or handle.is_acknowledged()
                       for handle in answers):
                return
            unsettled.popleft()
            self.inference.commit(records)
            # A message of an earlier connection is delivered again by the resumed session
            # (acknowledging its old mid here could take another message off the broker).
            if message.connection == connection:
                self.client.ack(message)

    def announce(self, node_id: str) -> None:
        for topic, payload in discovery_messages(node_id, self.settings.collector.id,
                                                 *self.inference.discovery_names(node_id)):
            self.client.publish(topic, payload, retain=True)
        log.info("Home Assistant discovery sent for %s", node_id)

    def announce_changed_words(self) -> None:
        """Nodes that learned or forgot a word of their own: Home Assistant's event entity
        and triggers follow (a forgotten word's trigger is removed)."""
        for node_id, forgotten in sorted(self.inference.take_changed_words().items()):
            if node_id not in self.announced:
                continue  # announced with its words when it next reports
            for topic, payload in trigger_removal_messages(node_id, forgotten):
                self.client.publish(topic, payload, retain=True)
            self.announce(node_id)

    def stop(self) -> None:
        self.stop_requested.set()

    def stats_line(self) -> str:
        limit = self.inference.rate_limit
        line = self.counters.line(limit.dropped if limit is not None else 0,
                                  self.inference.repeated_keywords)
        sequence = self.inference.confirmations.line()
        return f"{line}; {sequence}" if sequence else line

    def close(self) -> None:
        """Wait for the broker's acknowledgements of the answers out (so that a clean stop
        answers nothing twice), save the windows (no message is handled any more by then),
        confirm what they hold, disconnect."""
        self.stop_requested.set()
        deadline = time.monotonic() + SETTLE_WAIT_S
        while self._unsettled and self.client.is_connected and time.monotonic() < deadline:
            with self._windows_lock:
                self._settle()
            time.sleep(0.005)
        if self._unsettled:
            log.warning("stopping with %d messages whose answers the broker has not "
                        "acknowledged: they are answered again after the restart",
                        len(self._unsettled))
        log.info("stopping: %s", self.stats_line())
        if self.saver is not None:
            self.save_windows(final=True)
        if self.enroller is not None:
            self.enroller.close()
        if self.client.is_connected:
            self.publish_confirmations(everything=True)
        self.client.close()
        self.inference.confirmations.close()

    def save_windows(self, final: bool = False) -> None:
        """Write the state file; then the journal need not keep the readings it holds."""
        assert self.saver is not None
        if self.saver.save(final):
            self.inference.confirmations.state_saved(self._saved_through)

    def _windows_document(self) -> dict[str, Any]:
        """The state file's content, copied while no message changes the windows (the slow
        write happens outside the lock)."""
        with self._windows_lock:
            document = state_document(self.settings.collector.id, self.inference)
            self._saved_through = int(document["journal_through"])
            return document
