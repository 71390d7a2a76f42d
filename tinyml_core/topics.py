"""Every MQTT topic of the system, built and parsed in one place.

Nothing else in the project writes a topic string by hand: use these functions.
A deployment-wide prefix (e.g. ``home/``) is added by the MQTT adapter only,
so these names are always the bare ones from docs/protocol.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from .errors import PayloadError

# Node and client ids become a single topic level, so they may not contain
# '/', '+', '#' or anything a shell or a file name would trip over.
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class SensorKind(StrEnum):
    """What a node publishes under ``sensors/<node_id>/<kind>``."""

    CLIMATE = "climate"
    AUDIO = "audio"


class PredictionKind(StrEnum):
    """What the collector publishes under ``predictions/<node_id>/<kind>``."""

    FORECAST = "forecast"
    KEYWORD = "keyword"


SENSORS_ROOT = "sensors"
PREDICTIONS_ROOT = "predictions"
STATUS_ROOT = "status"
ERRORS_ROOT = "errors"
CONFIRMED_ROOT = "confirmed"
DIAGNOSTICS_ROOT = "diagnostics"
ENROLL_ROOT = "enroll"  # a node sends a person's takes
ENROLLED_ROOT = "enrolled"  # the collector says what it made of them


def validate_id(value: str, what: str = "node id") -> str:
    """Return ``value`` if it is usable as one topic level, else raise PayloadError."""
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value):
        raise PayloadError(
            f"{value!r} is not a valid {what}: use 1-64 characters from A-Z a-z 0-9 _ . -,"
            " starting with a letter or digit"
        )
    return value


def sensor_topic(node_id: str, kind: SensorKind) -> str:
    return f"{SENSORS_ROOT}/{validate_id(node_id)}/{SensorKind(kind).value}"


def climate_topic(node_id: str) -> str:
    return sensor_topic(node_id, SensorKind.CLIMATE)


def audio_topic(node_id: str) -> str:
    return sensor_topic(node_id, SensorKind.AUDIO)


def prediction_topic(node_id: str, kind: PredictionKind) -> str:
    return f"{PREDICTIONS_ROOT}/{validate_id(node_id)}/{PredictionKind(kind).value}"


def status_topic(client_id: str) -> str:
    return f"{STATUS_ROOT}/{validate_id(client_id, 'client id')}"


def errors_topic(node_id: str) -> str:
    return f"{ERRORS_ROOT}/{validate_id(node_id)}"


def confirmed_topic(node_id: str, kind: SensorKind | str) -> str:
    """Where a collector confirms which of ``node_id``'s messages of ``kind`` it has taken."""
    return f"{CONFIRMED_ROOT}/{validate_id(node_id)}/{SensorKind(kind).value}"


def confirmed_filter(node_id: str) -> str:
    """What a node subscribes to: the confirmations of every kind of its own messages."""
    return f"{CONFIRMED_ROOT}/{validate_id(node_id)}/+"


def diagnostics_topic(node_id: str) -> str:
    """Where a node publishes how it is doing (retained; Home Assistant's diagnostic entities)."""
    return f"{DIAGNOSTICS_ROOT}/{validate_id(node_id)}"


def enroll_topic(node_id: str) -> str:
    """Where a node sends the takes of a person of its household (docs/protocol.md)."""
    return f"{ENROLL_ROOT}/{validate_id(node_id)}"


def enroll_filter() -> str:
    return f"{ENROLL_ROOT}/+"


def enrolled_topic(node_id: str) -> str:
    """Where the collector answers a node's enrollment."""
    return f"{ENROLLED_ROOT}/{validate_id(node_id)}"


def sensor_filter(kind: SensorKind | None = None) -> str:
    """Subscription filter for one sensor kind of every node, or for everything under sensors/."""
    if kind is None:
        return f"{SENSORS_ROOT}/#"
    return f"{SENSORS_ROOT}/+/{SensorKind(kind).value}"


def prediction_filter() -> str:
    return f"{PREDICTIONS_ROOT}/#"


def shared_filter(group: str, topic_filter: str) -> str:
    """An MQTT shared subscription: workers in the same group split the messages."""
    return f"$share/{validate_id(group, 'share group')}/{topic_filter}"


@dataclass(frozen=True)
class SensorTopic:
    """A parsed ``sensors/<node_id>/<kind>`` topic."""

    node_id: str
    kind: SensorKind

    @classmethod
    def parse(cls, topic: str) -> SensorTopic:
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != SENSORS_ROOT:
            raise PayloadError(f"topic {topic!r} is not of the form sensors/<node_id>/<kind>")
        node_id = validate_id(parts[1])
        try:
            kind = SensorKind(parts[2])
        except ValueError:
            known = ", ".join(k.value for k in SensorKind)
            raise PayloadError(f"unknown sensor kind {parts[2]!r} (known: {known})") from None
        return cls(node_id, kind)

    def __str__(self) -> str:
        return sensor_topic(self.node_id, self.kind)


def matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` matches the MQTT ``topic_filter`` (with + and # wildcards).

    A ``$share/<group>/`` prefix is ignored, as the broker does when delivering.
    """
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # wildcards never match broker-internal $SYS-style topics
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


UNKNOWN_NODE = "unknown"


def reporting_node_id(topic: str) -> str:
    """The node an input on ``topic`` is reported against in ``errors/<node_id>``.

    The second level of the topic when it is a valid id, else ``unknown``.
    """
    parts = topic.split("/")
    if len(parts) >= 2 and _ID_PATTERN.fullmatch(parts[1]):
        return parts[1]
    return UNKNOWN_NODE
