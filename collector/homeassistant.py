"""Home Assistant MQTT discovery: each node shows up as one device, as Zigbee2MQTT's do.

Per node:
- temperature and humidity sensors from the node's own readings (``sensors/<node>/climate``);
- per forecaster, forecast temperature and humidity: the next step as the state, every step
  (times and values) as attributes, so a chart card can draw the forecast;
- an ``event`` entity whose event types are the keyword model's words: each word said fires
  once (the same word twice fires twice), ``unknown`` fires nothing; and a device trigger per
  word, so "'stop' said" is offered in the automation editor;
- diagnostic entities: last seen, counting since (a new date: the node started counting
  again), spool backlog, unconfirmed messages, failed reads, messages
  dropped on the node, messages lost or rejected on the way (the collector's error records),
  and the models in use.
Everything is available while both the collector and the node say ``online``; configs are
retained, sent again when Home Assistant announces itself on ``homeassistant/status``, and
removed (empty retained configs) by ``python -m collector ha-remove NODE``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from tinyml_core.topics import (
    PredictionKind,
    SensorKind,
    diagnostics_topic,
    errors_topic,
    prediction_topic,
    sensor_topic,
    status_topic,
)

DISCOVERY_PREFIX = "homeassistant"
BIRTH_TOPIC = f"{DISCOVERY_PREFIX}/status"
_OBJECT_ID = re.compile(r"[^a-zA-Z0-9_-]")


def object_id(node_id: str) -> str:
    """``node_id`` as a Home Assistant object id (``[a-zA-Z0-9_-]``): other characters become
    ``_``, with a short hash of the id when that happened, so two ids never meet."""
    cleaned = _OBJECT_ID.sub("_", node_id)
    if cleaned != node_id:
        cleaned += "_" + hashlib.sha256(node_id.encode()).hexdigest()[:6]
    return f"tinyml_{cleaned}"


def _reading(name: str) -> str:
    """A template: the value of SenML record ``name`` in a reading."""
    return f"{{% for r in value_json if r.n == '{name}' %}}{{{{ r.v }}}}{{% endfor %}}"


def _of_model(model: str, value: str, otherwise: str) -> str:
    """A template: ``value`` for a forecast of ``model``, else ``otherwise`` (both forecasters
    publish on the one forecast topic)."""
    return (f"{{% if value_json.model == '{model}' %}}{{{{ {value} }}}}"
            f"{{% else %}}{{{{ {otherwise} }}}}{{% endif %}}")


def _forecast_attributes(model: str, quantity: str) -> str:
    steps = (f"value_json.steps | map(attribute='time') | list, 'values': value_json.steps | "
             f"map(attribute='{quantity}') | list")
    return _of_model(model, f"{{'model': value_json.model, 'model_version': "
                            f"value_json.model_version, 'input_time': value_json.input_time, "
                            f"'times': {steps}}} | tojson", "this.attributes | tojson")


def discovery_messages(node_id: str, collector_id: str, forecasters: Sequence[str] = (),
                       keywords: Sequence[str] = ()) -> list[tuple[str, bytes]]:
    """(topic, retained payload) of every discovery config for ``node_id``."""
    base = object_id(node_id)
    device = {"identifiers": [base], "name": f"TinyML node {node_id}",
              "manufacturer": "tinyml-mqtt", "model": "Raspberry Pi sensor node"}
    availability = {"availability": [{"topic": status_topic(collector_id)},
                                     {"topic": status_topic(node_id)}],
                    "availability_mode": "all", "payload_available": "online",
                    "payload_not_available": "offline"}
    climate = sensor_topic(node_id, SensorKind.CLIMATE)
    forecast = prediction_topic(node_id, PredictionKind.FORECAST)
    keyword = prediction_topic(node_id, PredictionKind.KEYWORD)
    diagnostics = diagnostics_topic(node_id)
    sensors: dict[str, dict[str, Any]] = {
        "temperature": {
            "name": "Temperature", "state_topic": climate,
            "value_template": _reading("temperature"), "unit_of_measurement": "°C",
            "device_class": "temperature", "state_class": "measurement",
            "suggested_display_precision": 1},
        "humidity": {
            "name": "Humidity", "state_topic": climate, "value_template": _reading("humidity"),
            "unit_of_measurement": "%", "device_class": "humidity",
            "state_class": "measurement", "suggested_display_precision": 0},
    }
    for model in forecasters:
        for quantity, unit, device_class in (("temperature", "°C", "temperature"),
                                             ("humidity", "%", "humidity")):
            sensors[f"{model}_{quantity}"] = {
                "name": f"Forecast {quantity} ({model})", "state_topic": forecast,
                # Empty for the other model's forecasts: Home Assistant ignores it.
                "value_template": _of_model(
                    model, f"value_json.steps[0].{quantity} | round(1)", "''"),
                "json_attributes_topic": forecast,
                "json_attributes_template": _forecast_attributes(model, quantity),
                "unit_of_measurement": unit, "device_class": device_class,
                "state_class": "measurement", "suggested_display_precision": 1}
    diagnostic = {"entity_category": "diagnostic"}
    sensors |= {
        "last_seen": diagnostic | {
            "name": "Last seen", "state_topic": diagnostics, "device_class": "timestamp",
            "value_template": "{{ value_json.time | timestamp_custom("
                              "'%Y-%m-%dT%H:%M:%S+00:00', false) }}"},
        # When the node's numbering began (its spool was made): a new date is a node that
        # started counting again (a new SD card, a deleted spool). Empty for older nodes.
        "counting_since": diagnostic | {
            "name": "Counting since", "state_topic": diagnostics, "device_class": "timestamp",
            "value_template": "{% if value_json.spool_created is defined %}{{ "
                              "value_json.spool_created | timestamp_custom("
                              "'%Y-%m-%dT%H:%M:%S+00:00', false) }}{% endif %}",
            "json_attributes_topic": diagnostics,
            "json_attributes_template": "{{ {'spool': value_json.spool} | tojson "
                                        "if value_json.spool is defined else '{}' }}",
            "icon": "mdi:counter"},
        "spool_backlog": diagnostic | {
            "name": "Spool backlog", "state_topic": diagnostics, "state_class": "measurement",
            "value_template": "{{ value_json.spool_waiting }}", "icon": "mdi:tray-full"},
        "unconfirmed": diagnostic | {
            "name": "Unconfirmed messages", "state_topic": diagnostics,
            "state_class": "measurement", "value_template": "{{ value_json.unconfirmed }}",
            "icon": "mdi:email-alert-outline"},
        "failed_reads": diagnostic | {
            "name": "Failed sensor reads", "state_topic": diagnostics,
            "state_class": "total_increasing", "value_template": "{{ value_json.failed_reads }}",
            "icon": "mdi:thermometer-alert"},
        "dropped": diagnostic | {
            "name": "Messages dropped on the node", "state_topic": diagnostics,
            "state_class": "total_increasing",
            "value_template": "{{ value_json.spool_dropped + value_json.sound_events_dropped }}",
            "icon": "mdi:delete-alert"},
        # Every error record the collector publishes for the node counts one (rate-limited,
        # lost in sequence, rejected); since Home Assistant started.
        "errors": diagnostic | {
            "name": "Messages lost or rejected", "state_topic": errors_topic(node_id),
            "state_class": "total_increasing",
            "value_template": "{{ (this.state | int(0)) + 1 }}",
            "json_attributes_topic": errors_topic(node_id),
            "json_attributes_template": "{{ {'last_reason': value_json.reason} | tojson }}",
            "icon": "mdi:alert-circle-outline"},
        "forecast_model": diagnostic | {
            "name": "Forecast models", "state_topic": forecast, "icon": "mdi:chip",
            "value_template": "{{ value_json.model }} {{ value_json.model_version }}"},
        "keyword_model": diagnostic | {
            "name": "Keyword model", "state_topic": keyword, "icon": "mdi:chip",
            "value_template": "{{ value_json.model }} {{ value_json.model_version }}"},
    }
    messages = []
    for key, config in sensors.items():
        unique_id = f"{base}_{key}"
        payload = config | {"unique_id": unique_id, "object_id": unique_id, "device": device}
        messages.append((f"{DISCOVERY_PREFIX}/sensor/{unique_id}/config",
                         _json(payload | availability)))
    if keywords:
        words = ", ".join(f"'{word}'" for word in keywords)
        unique_id = f"{base}_keyword"
        # Empty for anything but a word: Home Assistant ignores an empty event payload.
        event = {"name": "Keyword", "state_topic": keyword, "event_types": list(keywords),
                 "value_template": f"{{% if value_json.label in [{words}] %}}{{{{ "
                                   "{'event_type': value_json.label, 'probability': "
                                   "value_json.probability, 'input_time': value_json.input_time}"
                                   " | tojson }}{% endif %}",
                 "icon": "mdi:microphone-message", "unique_id": unique_id,
                 "object_id": unique_id, "device": device}
        messages.append((f"{DISCOVERY_PREFIX}/event/{unique_id}/config",
                         _json(event | availability)))
        for word in keywords:
            trigger = {"automation_type": "trigger", "topic": keyword, "type": "action",
                       "subtype": word, "payload": word,
                       "value_template": "{{ value_json.label }}", "device": device}
            messages.append((_trigger_topic(base, word), _json(trigger)))
    return messages


def _trigger_topic(base: str, word: str) -> str:
    return f"{DISCOVERY_PREFIX}/device_automation/{base}/keyword_{_OBJECT_ID.sub('_', word)}/config"


def trigger_removal_messages(node_id: str, words: Sequence[str]) -> list[tuple[str, bytes]]:
    """Empty retained configs for the device triggers of words the node no longer answers."""
    return [(_trigger_topic(object_id(node_id), word), b"") for word in words]


def removal_messages(node_id: str, collector_id: str, forecasters: Sequence[str] = (),
                     keywords: Sequence[str] = ()) -> list[tuple[str, bytes]]:
    """Empty retained configs: Home Assistant removes the node's entities and triggers."""
    return [(topic, b"") for topic, _ in
            discovery_messages(node_id, collector_id, forecasters, keywords)]


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()
