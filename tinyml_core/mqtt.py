"""The one place that talks to paho-mqtt.

:class:`MqttClient` wraps a paho 2.x client (callback API version 2) behind a small
blocking interface: ``connect`` (with retry and backoff), ``subscribe`` (waits for the
SUBACK), ``publish`` (QoS 1 by default), ``receive`` (from a bounded queue) and ``close``.
paho's network thread only hands messages to that queue, and all work happens in the
caller's thread; or, for a consumer whose throughput matters, a ``handler`` is called in the
network thread itself (handing each message to another thread costs more CPU than the
handling: the two threads take turns at the GIL). Availability follows Home Assistant's
conventions: a retained ``offline`` Last Will on ``status/<client_id>``, a retained
``online`` after every (re)connect once the broker holds its subscriptions again (with
``online_after_subscribing``, only once the caller said it is ready), and ``offline`` on a
clean shutdown. A configured topic
prefix is added and removed here and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .config import BrokerConfig
from .errors import MqttConnectError, MqttError, SubscriptionRefused
from .messages import Availability
from .topics import status_topic

log = logging.getLogger("tinyml.mqtt")


def _not_the_shutdown_race(record: logging.LogRecord) -> bool:
    # paho's loop thread logs "Client is not connected" at ERROR when it runs once more between
    # our DISCONNECT and loop_stop(). Connection losses are logged by _on_disconnect instead.
    return not record.getMessage().startswith("Client is not connected")


_paho_log = logging.getLogger("tinyml.mqtt.paho")
_paho_log.addFilter(_not_the_shutdown_race)

DEFAULT_QOS = 1
K = TypeVar("K")
_SESSION_NEVER_EXPIRES = 0xFFFFFFFF


@dataclass(frozen=True)
class InboundMessage:
    """A message as it arrived: topic without the deployment prefix, raw payload bytes."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_at: float  # time.time() when paho handed it over
    mid: int
    connection: int = 0  # MqttClient.connection it arrived on
    event: int = 0  # its place among the client's arrivals (with track_acknowledgements=True)


class PublishHandle:
    """What :meth:`MqttClient.publish` returns: wait for the broker's acknowledgement.

    Never raises: a QoS 1 message published while the connection was down is kept by paho and
    sent after the reconnect, and "acknowledged" means its PUBACK, whenever that comes.
    """

    def __init__(self, info: paho.MQTTMessageInfo, qos: int, connection: int,
                 ack_events: dict[int, int] | None = None) -> None:
        if qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            # paho keeps and re-sends this message, but its is_published() and
            # wait_for_publish() raise on every call for it, even after the PUBACK
            # (shared/NOTES.md). Its rc says "not sent yet", not "failed".
            info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self._info = info
        self.qos = qos
        self.connection = connection  # MqttClient.connection when it was published
        self._ack_events = ack_events
        self._ack_event: int | None = None

    @property
    def mid(self) -> int:
        return int(self._info.mid)

    @property
    def lost(self) -> bool:
        """True when paho gave the message up (QoS 0 without a connection): it will never be
        acknowledged."""
        return self._info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS

    def is_acknowledged(self) -> bool:
        """True once the broker has acknowledged (QoS 1) or the message left the socket (QoS 0)."""
        try:
            return bool(self._info.is_published())
        except (RuntimeError, ValueError):  # QoS 0 lost with the connection
            return False

    def acknowledged_event(self) -> int | None:
        """Where the acknowledgement stands among the client's arrivals (compare with
        :attr:`InboundMessage.event`): exact order, however late this thread looks. None before
        the acknowledgement, or without ``track_acknowledgements``."""
        if self._ack_event is None and self._ack_events is not None and self.is_acknowledged():
            self._ack_event = self._ack_events.pop(self.mid, None)
        return self._ack_event

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the acknowledgement; False when it did not come."""
        deadline = time.monotonic() + timeout
        while not self.is_acknowledged():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.lost:
                return False
            # wait_for_publish raises while disconnected; poll instead so a reconnect can finish it.
            time.sleep(min(0.005, remaining))
        return True


class PublishWindow(Generic[K]):
    """Publishes in order with at most ``size`` messages unacknowledged; each message carries a
    key of the caller's (a spool row, a position in a stream) that comes back once acknowledged.

    Order across a reconnect: paho re-sends what was unacknowledged only after it has called
    ``on_connect``, so a message published in between would overtake those. Nothing new goes
    out until everything carried over a reconnect is acknowledged (one round trip).
    """

    def __init__(self, client: MqttClient, size: int) -> None:
        self.client = client
        self.size = size
        self._in_flight: deque[tuple[K, PublishHandle]] = deque()

    def __len__(self) -> int:
        return len(self._in_flight)

    def room(self) -> int:
        """How many messages may be published now (0 while disconnected)."""
        if not self.client.is_connected:
            return 0
        connection = self.client.connection
        if any(handle.connection != connection for _, handle in self._in_flight):
            return 0  # carried over a reconnect: wait until paho has re-sent them
        return max(0, self.size - len(self._in_flight))

    def publish(self, key: K, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._in_flight.append((key, self.client.publish(topic, payload, retain=retain)))

    def acknowledged(self) -> list[K]:
        """Keys of the messages acknowledged since the last call, in publish order within the
        call (each message is looked at once; one whose PUBACK lands during the look, after a
        later message was looked at, comes in the next call)."""
        return [key for key, _ in self.acknowledged_handles()]

    def acknowledged_handles(self) -> list[tuple[K, PublishHandle]]:
        """Like :meth:`acknowledged`, with each message's handle."""
        done: list[tuple[K, PublishHandle]] = []
        waiting: deque[tuple[K, PublishHandle]] = deque()
        for key, handle in self._in_flight:  # one look per handle: acks land meanwhile
            if handle.is_acknowledged():
                done.append((key, handle))
            else:
                waiting.append((key, handle))
        if done:
            self._in_flight = waiting
        return done

    def wait_all(self, timeout: float, stop: Callable[[], bool] = lambda: False) -> list[K]:
        """Wait up to ``timeout`` seconds for every acknowledgement; returns the keys acknowledged
        meanwhile (``stop`` is polled, so a signal ends the wait)."""
        deadline = time.monotonic() + timeout
        done = self.acknowledged()
        while self._in_flight and not stop() and time.monotonic() < deadline:
            time.sleep(0.005)
            done += self.acknowledged()
        return done


@dataclass
class ClientStats:
    received: int = 0
    dropped: int = 0  # arrived while the inbound queue was full
    connects: int = 0


class MqttClient:
    """A paho-mqtt 2.x client with retry, availability and a bounded inbound queue.

    ``persistent_session=True`` asks the broker to keep subscriptions and queue QoS 1
    messages while this client is away (needs a fixed ``client_id``).
    ``manual_ack=True`` defers each QoS 1 PUBACK until :meth:`ack` is called, so a message
    is only taken off the broker once it has been handled.
    ``handler``, when given, receives every message in paho's network thread instead of the
    queue; it must not block for long (keepalive) and should catch its own errors; one that
    escapes is logged and the message stays unacknowledged.
    ``max_inflight=0`` lifts paho's own window of unacknowledged publishes; paho rescans all
    pending messages on each PUBACK, which costs ~100 µs per message at a window of 100.
    ``track_acknowledgements=True`` lets :meth:`PublishHandle.acknowledged_event` say where an
    acknowledgement came among the inbound messages.
    ``on_acknowledged``, when given, is called in the network thread with the mid of every
    PUBACK, just before the message's handle says it is acknowledged (paho's order): it must
    not block either.
    """

    def __init__(
        self,
        config: BrokerConfig,
        client_id: str,
        *,
        persistent_session: bool = False,
        publish_availability: bool = True,
        manual_ack: bool = False,
        queue_size: int = 10_000,
        max_inflight: int = 100,
        handler: Callable[[InboundMessage], None] | None = None,
        track_acknowledgements: bool = False,
        on_acknowledged: Callable[[int], None] | None = None,
        online_after_subscribing: bool = False,
    ) -> None:
        self.config = config
        # `online` means a message sent to us now would be taken: said once the broker holds
        # our subscriptions; a consumer (the collector) also waits for its first ones
        # (announce_online()).
        self._may_announce = not online_after_subscribing
        self.client_id = client_id
        self.stats = ClientStats()
        self._persistent = persistent_session
        self._status_topic = status_topic(client_id) if publish_availability else None
        self._inbound: queue.Queue[InboundMessage] = queue.Queue(maxsize=queue_size)
        self._handler = handler
        # Arrivals (PUBACKs and messages) counted in the network thread, so that a caller can
        # tell which came first (the node's confirmations). Keys are mids: at most 65535.
        self._events = 0
        self._ack_events: dict[int, int] | None = {} if track_acknowledgements else None
        self._on_acknowledged = on_acknowledged
        self._subscriptions: dict[str, int] = {}
        self._pending_subacks: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._connack_seen = threading.Event()
        # After a reconnect: the SUBSCRIBEs sent again, not yet acknowledged. Until the broker
        # has them the client does not count as connected: a message published meanwhile by
        # another client would find no subscription where the broker lost the session.
        self._restoring: set[int] = set()
        self._refusal: str | None = None
        self._closing = threading.Event()
        self._loop_running = False

        self._v5 = config.protocol == "5"
        protocol = MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311
        self._paho = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if self._v5 else not persistent_session,
            manual_ack=manual_ack,
            reconnect_on_failure=True,
        )
        self._paho.enable_logger(_paho_log)
        self._paho.max_inflight_messages_set(max_inflight)  # must precede connect
        self._paho.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)  # type: ignore[arg-type]
        if config.username:
            self._paho.username_pw_set(config.username, config.password or None)
        if config.tls.enabled:
            self._configure_tls()
        if self._status_topic is not None:
            self._paho.will_set(
                self._full_topic(self._status_topic),
                Availability.OFFLINE.encode(),
                qos=DEFAULT_QOS,
                retain=True,
            )
        self._paho.on_connect = self._on_connect
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_message = self._on_message
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_socket_open = _no_delay
        if track_acknowledgements or on_acknowledged is not None:
            self._paho.on_publish = self._on_publish

    # --- lifecycle ------------------------------------------------------------------------------
    def _configure_tls(self) -> None:
        tls = self.config.tls
        for label, name in (("CA", tls.ca_file), ("certificate", tls.cert_file),
                            ("key", tls.key_file)):
            if name and not Path(name).is_file():
                raise MqttError(f"TLS {label} file {name!r} does not exist")
        if bool(tls.cert_file) != bool(tls.key_file):
            raise MqttError("TLS client certificate and key must be given together")
        try:
            self._paho.tls_set(
                ca_certs=tls.ca_file,
                certfile=tls.cert_file or None,
                keyfile=tls.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise MqttError(f"TLS files could not be loaded: {exc}") from exc

    def connect(self, timeout: float | None = None) -> Self:
        """Connect, retrying with exponential backoff until ``timeout`` (default from config).

        Returns once the broker has accepted the connection; raises MqttConnectError when it
        refused (bad credentials, ...) or could not be reached in time. Later losses of the
        connection are retried in the background for as long as the client lives.
        """
        timeout = self.config.connect_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        delay = self.config.reconnect_min_s
        address = self.config.address
        properties = None
        clean_start: bool | Literal[3] = paho.MQTT_CLEAN_START_FIRST_ONLY  # unused by MQTT 3.1.1
        if self._v5:
            clean_start = not self._persistent
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = _SESSION_NEVER_EXPIRES if self._persistent else 0
        while True:
            try:
                self._paho.connect(
                    self.config.host,
                    self.config.port,
                    keepalive=self.config.keepalive_s,
                    clean_start=clean_start,
                    properties=properties,
                )
                break
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                reason = _describe_socket_error(exc)
                if isinstance(exc, ssl.SSLError):  # retrying will not mend a certificate
                    raise MqttConnectError(
                        f"TLS handshake with {address} failed: {reason}"
                    ) from exc
                if time.monotonic() + delay > deadline or self._closing.is_set():
                    raise MqttConnectError(
                        f"broker {address} unreachable for {timeout:g} s: {reason}"
                    ) from exc
                log.warning("broker %s unreachable (%s); retrying in %.1f s",
                            address, reason, delay)
                if self._closing.wait(delay):
                    raise MqttConnectError("closed while connecting") from exc
                delay = min(delay * 2, self.config.reconnect_max_s)

        self._paho.loop_start()
        self._loop_running = True
        remaining = max(0.0, deadline - time.monotonic())
        if not self._connack_seen.wait(max(remaining, 1.0)) or self._refusal is not None:
            reason = self._refusal or "no answer to CONNECT"
            self._stop_loop()
            raise MqttConnectError(f"broker {address} refused the connection: {reason}")
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Publish ``offline`` (when connected), disconnect and stop the network thread."""
        self._closing.set()
        if not self._loop_running:
            return
        if self._status_topic is not None and self._connected.is_set():
            handle = self.publish(self._status_topic, Availability.OFFLINE.encode(), retain=True)
            if not handle.wait(timeout):
                log.warning("could not confirm 'offline' on %s before closing", self._status_topic)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._paho.disconnect()
        self._paho.loop_stop()
        self._loop_running = False
        self._connected.clear()

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def events(self) -> int:
        """How many arrivals (PUBACKs and messages) the network thread has counted so far."""
        return self._events

    @property
    def connection(self) -> int:
        """Counts successful connections: changes with every reconnect."""
        return self.stats.connects

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # --- traffic --------------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, qos: int = DEFAULT_QOS,
                retain: bool = False) -> PublishHandle:
        """Queue a message for the broker; paho sends it now or after the next reconnect."""
        connection = self.connection
        info = self._paho.publish(self._full_topic(topic), payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        return PublishHandle(info, qos, connection, self._ack_events)

    def subscribe(self, topic_filter: str, *, qos: int = DEFAULT_QOS,
                  timeout: float = 10.0) -> None:
        """Subscribe and wait for the broker's SUBACK; raises MqttError when refused.

        The subscription is remembered and sent again after every reconnect.
        """
        full_filter = self._full_filter(topic_filter)
        with self._lock:
            self._subscriptions[full_filter] = qos
            result, mid = self._paho.subscribe(full_filter, qos=qos)
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                raise MqttError(
                    f"subscribe to {topic_filter!r} failed: {paho.error_string(result)}"
                )
            done: tuple[threading.Event, list[Any]] = (threading.Event(), [])
            self._pending_subacks[mid] = done
        deadline = time.monotonic() + timeout
        while not done[0].wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if self._closing.is_set():
                raise MqttError(f"closed while subscribing to {topic_filter!r}")
            if time.monotonic() >= deadline:
                raise MqttError(f"no SUBACK for {topic_filter!r} within {timeout:g} s (it is "
                                "sent again after the next reconnect)")
        granted = done[1]
        if any(getattr(code, "is_failure", False) for code in granted):
            with self._lock:
                self._subscriptions.pop(full_filter, None)
            raise SubscriptionRefused(
                f"broker refused the subscription to {topic_filter!r}: {granted[0]}")

    def receive(self, timeout: float | None = None) -> InboundMessage | None:
        """The next inbound message, or None after ``timeout`` seconds."""
        try:
            return self._inbound.get(timeout=timeout)
        except queue.Empty:
            return None

    def ack(self, message: InboundMessage) -> None:
        """Acknowledge a handled QoS 1 message (only has an effect with ``manual_ack=True``)."""
        if message.qos > 0:
            self._paho.ack(message.mid, message.qos)

    # --- topic prefix ---------------------------------------------------------------------------
    def _full_topic(self, topic: str) -> str:
        return self.config.topic_prefix + topic

    def _full_filter(self, topic_filter: str) -> str:
        prefix = self.config.topic_prefix
        if topic_filter.startswith("$share/"):
            _, group, rest = topic_filter.split("/", 2)
            return f"$share/{group}/{prefix}{rest}"
        return prefix + topic_filter

    # --- paho callbacks (network thread: hand over, never block) --------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
            log.error("broker %s refused the connection: %s", self.config.address, reason)
            self._connack_seen.set()
            return
        self._refusal = None
        self.stats.connects += 1
        log.info("connected to %s as %s%s", self.config.address, self.client_id,
                 " (session resumed)" if flags.session_present else "")
        if self._persistent and self.stats.connects > 1 and not flags.session_present:
            # The broker restarted without its saved state (crash, no persistence): what it
            # held for us, and what arrived before we subscribed again, is gone.
            log.warning("the broker at %s no longer had this client's session; messages "
                        "queued for it while it was away may have been lost (is Mosquitto's "
                        "persistence on? see docs/security.md, 'Crashes')", self.config.address)
        with self._lock:
            self._restoring = set()
            for topic_filter, qos in self._subscriptions.items():
                result, mid = client.subscribe(topic_filter, qos=qos)
                if result == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                    self._restoring.add(mid)
            restored = not self._restoring
        if restored:  # else when the last SUBACK arrives (_on_subscribe)
            self._restored()
        self._connack_seen.set()

    def _restored(self) -> None:
        """Connected, every subscription acknowledged (again)."""
        self._connected.set()
        if self._may_announce:
            self._say_online()

    def _say_online(self) -> None:
        if self._status_topic is not None:
            self._paho.publish(self._full_topic(self._status_topic),
                               Availability.ONLINE.encode(), qos=DEFAULT_QOS, retain=True)

    def announce_online(self) -> None:
        """With ``online_after_subscribing``: the caller has subscribed to what it takes, so
        say ``online`` now, and after every reconnect once the subscriptions are back."""
        self._may_announce = True
        if self._connected.is_set():
            self._say_online()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self._connected.clear()
        if self._closing.is_set():
            log.info("disconnected from %s", self.config.address)
        else:
            log.warning("lost the connection to %s (%s); reconnecting", self.config.address, reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        topic = message.topic
        prefix = self.config.topic_prefix
        if prefix and topic.startswith(prefix):
            topic = topic[len(prefix):]
        inbound = InboundMessage(topic, bytes(message.payload), message.qos, bool(message.retain),
                                 time.time(), message.mid, self.stats.connects, self._events)
        self._events += 1
        if self._handler is not None:
            self.stats.received += 1
            try:
                self._handler(inbound)
            except Exception:  # paho would stop its network thread on an escaping exception
                log.exception("handler failed on %s; message left unacknowledged", topic)
            return
        try:
            self._inbound.put_nowait(inbound)
            self.stats.received += 1
        except queue.Full:
            self.stats.dropped += 1
            log.warning("inbound queue full (%d): dropped a message on %s (%d dropped so far)",
                        self._inbound.maxsize, topic, self.stats.dropped)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        if self._ack_events is not None:
            self._ack_events[mid] = self._events
            self._events += 1
        if self._on_acknowledged is not None:
            try:
                self._on_acknowledged(mid)
            except Exception:  # paho would stop its network thread
                log.exception("acknowledgement handler failed on mid %d", mid)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        with self._lock:
            pending = self._pending_subacks.pop(mid, None)
            restored = mid in self._restoring
            self._restoring.discard(mid)
            restored = restored and not self._restoring
        if restored:
            self._restored()
        if pending is not None:
            pending[1].extend(reason_codes)
            pending[0].set()


def _no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Small messages go out at once. With Nagle's algorithm (paho leaves it on) a small write
    waits for the ACK of the previous one, and the broker delays its ACKs by up to 40 ms: a
    collector answering a reading while it also publishes a confirmation waited ~15 ms (p50)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _describe_socket_error(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)
