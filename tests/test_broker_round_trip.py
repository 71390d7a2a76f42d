"""Every message type, encoded, sent through a real Mosquitto and decoded to the same value."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from tinyml_core.errors import PayloadError
from tinyml_core.messages import (
    AnyMessage,
    AudioClip,
    Availability,
    ClimateReading,
    ErrorRecord,
    Forecast,
    ForecastStep,
    KeywordResult,
    decode_message,
)
from tinyml_core.mqtt import InboundMessage, MqttClient
from tinyml_core.topics import (
    PredictionKind,
    errors_topic,
    prediction_topic,
    sensor_topic,
    status_topic,
)

T0 = 1_732_406_400.0
pytestmark = pytest.mark.broker


def _messages() -> list[tuple[str, AnyMessage]]:
    rng = np.random.default_rng(0)
    clip = AudioClip.from_samples("pi-1", T0, 2, 16000,
                                  rng.integers(-32768, 32767, 16000, dtype=np.int16))
    reading = ClimateReading("pi-1", T0, 1, 21.25, 48.5)
    forecast = Forecast("pi-1", "forecast_b", "1+abc", T0, 0.3,
                        tuple(ForecastStep(T0 + 600 * i, 21 + 0.1 * i, 48 - i)
                              for i in range(1, 10)))
    keyword = KeywordResult("pi-1", "kws_b", "1+abc", T0, 2.5, 0.03, "go",
                            {"go": 0.75, "no": 0.25})
    error = ErrorRecord.for_rejected("pi-1", T0, "sensors/pi-1/climate", b"\x00garbage",
                                     PayloadError("not JSON"))
    return [
        (sensor_topic(reading.node_id, reading.kind), reading),
        (sensor_topic(clip.node_id, clip.kind), clip),
        (prediction_topic("pi-1", PredictionKind.FORECAST), forecast),
        (prediction_topic("pi-1", PredictionKind.KEYWORD), keyword),
        (errors_topic("pi-1"), error),
        (status_topic("pi-1"), Availability.ONLINE),
    ]


def receive_all(client: MqttClient, count: int, timeout: float = 5.0) -> list[InboundMessage]:
    received = []
    for _ in range(count):
        message = client.receive(timeout)
        assert message is not None, f"only {len(received)} of {count} messages arrived"
        received.append(message)
    return received


def test_every_message_type_survives_the_broker(connect: Callable[..., MqttClient]) -> None:
    listener = connect("listener", publish_availability=False)
    listener.subscribe("#")
    sender = connect("sender", publish_availability=False)
    sent = _messages()
    handles = [sender.publish(topic, message.encode()) for topic, message in sent]
    assert all(handle.wait(5) for handle in handles), "broker did not acknowledge every publish"

    received = receive_all(listener, len(sent))
    assert [m.topic for m in received] == [topic for topic, _ in sent]
    for (_topic, original), inbound in zip(sent, received, strict=True):
        assert inbound.qos == 1
        assert decode_message(inbound.topic, inbound.payload) == original


def test_malformed_payload_through_broker_is_rejected_not_raised(
    connect: Callable[..., MqttClient],
) -> None:
    listener = connect("listener", publish_availability=False)
    listener.subscribe("sensors/#")
    sender = connect("sender", publish_availability=False)
    sender.publish("sensors/pi-1/climate", b'{"temperature": "warm"}').wait(5)
    inbound = receive_all(listener, 1)[0]
    with pytest.raises(PayloadError, match="SenML pack"):
        decode_message(inbound.topic, inbound.payload)
