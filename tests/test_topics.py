"""Topic names are built and parsed in one module; these pin them to docs/protocol.md."""

from __future__ import annotations

import pytest

from tinyml_core.errors import PayloadError
from tinyml_core.topics import (
    PredictionKind,
    SensorKind,
    SensorTopic,
    audio_topic,
    climate_topic,
    errors_topic,
    matches,
    prediction_topic,
    reporting_node_id,
    sensor_filter,
    shared_filter,
    status_topic,
)


def test_topic_names() -> None:
    assert climate_topic("pi-1") == "sensors/pi-1/climate"
    assert audio_topic("pi-1") == "sensors/pi-1/audio"
    assert prediction_topic("pi-1", PredictionKind.FORECAST) == "predictions/pi-1/forecast"
    assert prediction_topic("pi-1", PredictionKind.KEYWORD) == "predictions/pi-1/keyword"
    assert status_topic("collector-1") == "status/collector-1"
    assert errors_topic("pi-1") == "errors/pi-1"
    assert sensor_filter(SensorKind.AUDIO) == "sensors/+/audio"
    assert sensor_filter() == "sensors/#"
    assert shared_filter("workers", "sensors/+/climate") == "$share/workers/sensors/+/climate"


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "pi 1", "-pi", "x" * 65, "pi\x00"])
def test_ids_that_would_break_a_topic_are_refused(bad: str) -> None:
    with pytest.raises(PayloadError, match="not a valid node id"):
        climate_topic(bad)


def test_sensor_topic_parse_round_trip() -> None:
    parsed = SensorTopic.parse("sensors/kitchen.pi_2/audio")
    assert parsed == SensorTopic("kitchen.pi_2", SensorKind.AUDIO)
    assert str(parsed) == "sensors/kitchen.pi_2/audio"


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sensors/+/climate", "sensors/pi-1/climate", True),
        ("sensors/+/climate", "sensors/pi-1/audio", False),
        ("sensors/#", "sensors/pi-1/audio", True),
        ("sensors/#", "sensors", True),
        ("sensors/+", "sensors/pi-1/audio", False),
        ("$share/g/sensors/+/audio", "sensors/pi-1/audio", True),
        ("#", "$SYS/broker/uptime", False),
        ("predictions/#", "sensors/pi-1/audio", False),
    ],
)
def test_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("topic", "node"),
    [("sensors/pi-1/climate", "pi-1"), ("sensors/pi 1/climate", "unknown"),
     ("sensors", "unknown"), ("sensors/pi-1/x/y", "pi-1")],
)
def test_reporting_node_id(topic: str, node: str) -> None:
    assert reporting_node_id(topic) == node
