"""The node daemon: sensors → messages → spool → broker.

Threads: one per source (the climate loop sleeps between reads; the microphone reads without
pause), both writing to the spool; the calling thread runs the :class:`Forwarder` and a stats
line per ``stats_interval_s``. The broker may be down at start or at any time: readings keep
going to the spool and are sent, in order, when it is back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from tinyml_core.errors import MqttConnectError, MqttError, SubscriptionRefused, TinyMLError
from tinyml_core.messages import AudioClip, ClimateReading, NodeDiagnostics, sensor_message_topic
from tinyml_core.mqtt import MqttClient
from tinyml_core.topics import confirmed_filter, diagnostics_topic

from .confirmations import ConfirmationTracker
from .dht11 import Dht11Sensor
from .forwarder import CONFIRMATIONS_HEARD, Forwarder
from .hardware import SensorReadError
from .microphone import Microphone
from .settings import NodeSettings
from .spool import AUDIO, CLIMATE, Spool

log = logging.getLogger("node")

CONNECT_ATTEMPT_S = 30.0  # one connect() call; the node keeps trying for as long as it runs


class Node:
    def __init__(self, settings: NodeSettings, *, climate: Dht11Sensor | None = None,
                 microphone: Microphone | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.node_id = settings.node.id
        self.spool = Spool(settings.node.spool_path, int(settings.node.spool_max_mb * 1e6),
                           settings.node.max_unconfirmed)
        self.client = MqttClient(settings.broker, self.node_id, track_acknowledgements=True)
        tracker = None
        if settings.node.confirm:
            tracker = ConfirmationTracker(self.spool.unconfirmed(),
                                          active=self.spool.counter(CONFIRMATIONS_HEARD) > 0,
                                          window=settings.node.confirm_window,
                                          resend_after_s=settings.node.resend_after_s)
        else:  # left by a run with confirmations on
            self.spool.confirmed([m.id for m in self.spool.unconfirmed()])
        self.forwarder = Forwarder(self.spool, self.client, settings.node.flush_rate_per_s,
                                   confirmations=tracker)
        self.climate = climate
        self.microphone = microphone
        self.stop_requested = threading.Event()
        self.clock = clock
        self._sources: list[threading.Thread] = []
        self._connector: threading.Thread | None = None

    # --- sources ----------------------------------------------------------------------------
    def record_reading(self, temperature: float, humidity: float,
                       time_s: float | None = None) -> None:
        time_s = self.clock() if time_s is None else time_s
        self.spool.put_numbered(CLIMATE, lambda seq: _wire(ClimateReading(
            self.node_id, time_s, seq, temperature, humidity, self.spool.spool_id)))

    def record_clip(self, start_time: float, sample_rate: int, samples: np.ndarray) -> None:
        self.spool.put_numbered(AUDIO, lambda seq: _wire(AudioClip.from_samples(
            self.node_id, start_time, seq, sample_rate, samples, self.spool.spool_id)))

    def _climate_loop(self, sensor: Dht11Sensor) -> None:
        period = self.settings.climate.period_s
        next_read = time.monotonic()
        while not self.stop_requested.is_set():
            try:
                temperature, humidity = sensor.read()
                self.record_reading(temperature, humidity)
            except SensorReadError as error:
                log.warning("%s", error)
            except TinyMLError as error:  # the spool could not be written
                log.error("reading not stored: %s", error)
            next_read += period
            while next_read <= time.monotonic():  # a slow read skips the periods it overran
                next_read += period
            self.stop_requested.wait(next_read - time.monotonic())

    def _audio_loop(self, microphone: Microphone) -> None:
        while not self.stop_requested.is_set():
            try:
                clip = microphone.clips.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.record_clip(clip.start_time, clip.sample_rate, clip.samples)
            except TinyMLError as error:
                log.error("clip not stored: %s", error)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        log.info("spool %s: numbering %s, begun %s", self.spool.path, self.spool.spool_id,
                 time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.spool.created)))
        if self.climate is not None:
            self._spawn("climate", self._climate_loop, self.climate)
        if self.microphone is not None:
            self.microphone.start()
            self._spawn("audio-spool", self._audio_loop, self.microphone)
        self._connector = threading.Thread(target=self._connect_until_up, name="connect",
                                           daemon=True)
        self._connector.start()

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._sources.append(thread)

    def _connect_until_up(self) -> None:
        """First connection, however long the broker takes; paho reconnects after that."""
        delay = self.settings.broker.reconnect_min_s
        while not self.stop_requested.is_set():
            try:
                self.client.connect(timeout=CONNECT_ATTEMPT_S)
                self._subscribe_to_confirmations()
                return
            except MqttConnectError as error:
                log.warning("%s; spooling meanwhile, next attempt in %.0f s", error, delay)
                if self.stop_requested.wait(delay):
                    return
                delay = min(delay * 2, self.settings.broker.reconnect_max_s)

    def _subscribe_to_confirmations(self) -> None:
        if self.forwarder.confirmations is None:
            return
        topic = confirmed_filter(self.node_id)
        try:
            self.client.subscribe(topic)  # sent again after every reconnect
        except SubscriptionRefused as error:
            log.warning("%s; messages are forgotten once the broker has them (the broker's ACL "
                        "needs 'pattern read confirmed/%%u/+', see config/mosquitto/acl)", error)
            self.forwarder.refuse_confirmations.set()  # applied in the forwarder's thread
        except MqttError as error:  # closing, or the connection dropped: tried again later
            if not self.stop_requested.is_set():
                log.info("%s", error)

    def run(self, duration_s: float | None = None, stats_interval_s: float = 60.0) -> None:
        """Forward spooled messages until stop() or ``duration_s``; publish the node's
        diagnostics after every connection and every ``diagnostics_interval_s``."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        next_stats = time.monotonic() + stats_interval_s
        every = self.settings.node.diagnostics_interval_s
        next_diagnostics, connection = time.monotonic(), 0
        while not self.stop_requested.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if self.forwarder.step() == 0:
                self.stop_requested.wait(0.02)
            if now >= next_stats:
                log.info("%s", self.stats_line())
                next_stats += stats_interval_s
            if every and self.client.is_connected and (
                    now >= next_diagnostics or self.client.connection != connection):
                connection, next_diagnostics = self.client.connection, now + every
                self.publish_diagnostics()

    def diagnostics(self) -> NodeDiagnostics:
        spool = self.spool.stats()
        tracker = self.forwarder.confirmations
        return NodeDiagnostics(
            self.node_id, self.clock(), spool.messages,
            len(tracker) if tracker is not None else 0,
            spool.dropped_audio + spool.dropped_climate + spool.dropped_unconfirmed,
            self.climate.stats.missed_periods if self.climate is not None else 0,
            self.microphone.events if self.microphone is not None else 0,
            self.microphone.dropped if self.microphone is not None else 0,
            self.forwarder.stats.sent, self.forwarder.stats.sent_again,
            self.spool.spool_id, self.spool.created)

    def publish_diagnostics(self) -> None:
        """Retained on ``diagnostics/<node_id>`` (Home Assistant's diagnostic entities)."""
        try:
            self.client.publish(diagnostics_topic(self.node_id), self.diagnostics().encode(),
                                retain=True)
        except MqttError as error:  # the connection dropped meanwhile: the next one sends it
            log.debug("diagnostics not published: %s", error)

    def stats_line(self) -> str:
        stats = self.forwarder.stats
        parts = [f"sent {stats.sent} ({stats.sent_again} again after a reconnect), "
                 f"acknowledged {stats.acknowledged}; spool {self.spool.stats().line()}"]
        tracker = self.forwarder.confirmations
        parts.append(tracker.line() if tracker is not None else "confirmations off")
        if self.climate is not None:
            parts.append(f"DHT11 {self.climate.stats.line()}")
        if self.microphone is not None:
            parts.append(f"microphone {self.microphone.events} sound events, "
                         f"{self.microphone.dropped} dropped")
        return "; ".join(parts)

    def stop(self) -> None:
        self.stop_requested.set()

    def close(self, drain_s: float = 5.0) -> None:
        """Stop the sources, give the forwarder ``drain_s`` to empty the spool, disconnect."""
        self.stop_requested.set()
        if self.microphone is not None:
            self.microphone.stop()
        for thread in self._sources:
            thread.join(timeout=5)
        if self.climate is not None:
            self.climate.close()
        if self.client.is_connected and drain_s > 0:
            self.forwarder.drain(drain_s)
        log.info("stopping: %s", self.stats_line())
        self.client.close()  # also ends a first connection attempt still under way
        if self._connector is not None:
            self._connector.join(timeout=5)
        self.spool.close()


def _wire(message: ClimateReading | AudioClip) -> tuple[str, bytes]:
    return sensor_message_topic(message), message.encode()
