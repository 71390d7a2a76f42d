"""Home Assistant MQTT discovery: each node shows up as a device with three sensors.

Forecast temperature and humidity (the first forecast step) and the last keyword said, read
from the collector's prediction topics; available while both the collector and the node
say ``online`` on their status topics. Configs are retained and sent again whenever Home
Assistant announces itself on ``homeassistant/status`` (its users' most common complaint
is discovery that is not re-sent after a restart).
"""

from __future__ import annotations

import json

from tinyml_core.messages import UNKNOWN_LABEL
from tinyml_core.topics import PredictionKind, prediction_topic, status_topic

DISCOVERY_PREFIX = "homeassistant"
BIRTH_TOPIC = f"{DISCOVERY_PREFIX}/status"


def keep_word(on_word: str, otherwise: str) -> str:
    """A template: ``on_word`` for a result that is a word, ``otherwise`` for unknown."""
    return f"{{{{ {on_word} if value_json.label != '{UNKNOWN_LABEL}' else {otherwise} }}}}"


def discovery_messages(node_id: str, collector_id: str) -> list[tuple[str, bytes]]:
    """(topic, retained payload) of every discovery config for ``node_id``."""
    device = {"identifiers": [f"tinyml_{node_id}"], "name": f"TinyML node {node_id}",
              "manufacturer": "tinyml-mqtt", "model": "Raspberry Pi sensor node"}
    availability = [{"topic": status_topic(collector_id)}, {"topic": status_topic(node_id)}]
    forecast = prediction_topic(node_id, PredictionKind.FORECAST)
    sensors = {
        "forecast_temperature": {
            "name": "Forecast temperature", "state_topic": forecast,
            "value_template": "{{ value_json.steps[0].temperature | round(1) }}",
            "unit_of_measurement": "°C", "device_class": "temperature",
            "state_class": "measurement"},
        "forecast_humidity": {
            "name": "Forecast humidity", "state_topic": forecast,
            "value_template": "{{ value_json.steps[0].humidity | round(1) }}",
            "unit_of_measurement": "%", "device_class": "humidity",
            "state_class": "measurement"},
        # The collector answers every sound event, most of them "unknown" (no word): the
        # sensor keeps the last WORD (``this`` is the entity's own state), so automations
        # see a change only when a keyword was said.
        "keyword": {
            "name": "Last keyword", "icon": "mdi:microphone-message",
            "state_topic": prediction_topic(node_id, PredictionKind.KEYWORD),
            "value_template": keep_word("value_json.label", "this.state"),
            "json_attributes_topic": prediction_topic(node_id, PredictionKind.KEYWORD),
            "json_attributes_template": keep_word(
                "{'probability': value_json.probability, 'input_time': value_json.input_time}"
                " | tojson", "{'probability': this.attributes.get('probability'), "
                "'input_time': this.attributes.get('input_time')} | tojson")},
    }
    messages = []
    for key, config in sensors.items():
        unique_id = f"tinyml_{node_id}_{key}"
        payload = config | {"unique_id": unique_id, "object_id": unique_id, "device": device,
                            "availability": availability, "availability_mode": "all",
                            "payload_available": "online", "payload_not_available": "offline"}
        messages.append((f"{DISCOVERY_PREFIX}/sensor/{unique_id}/config",
                         json.dumps(payload, ensure_ascii=False).encode()))
    return messages
