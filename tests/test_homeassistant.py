"""Home Assistant discovery: every template rendered as Home Assistant renders MQTT templates
(Jinja2's sandbox with ``value_json`` and ``this``, the entity's current state) over real
messages of the protocol, every config's keys checked against its component's schema, and the
configs on a real Mosquitto: retained, sent again on Home Assistant's birth message, removed by
``python -m collector ha-remove``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from collector.homeassistant import discovery_messages, object_id, removal_messages
from collector.inference import Inference
from tests.collector_runner import MODELS, start_worker, stop_worker
from tests.conftest import REPO_ROOT
from tests.waiting import wait_for
from tinyml_core.broker import LocalMosquitto
from tinyml_core.messages import (
    ClimateReading,
    ErrorRecord,
    Forecast,
    ForecastStep,
    KeywordResult,
    NodeDiagnostics,
)
from tinyml_core.mqtt import MqttClient
from tinyml_core.topics import climate_topic

WORDS = ("stop", "up", "yes", "right", "left", "no", "down", "go")
FORECASTERS = ("forecast_a", "forecast_b")
T0 = 1_732_406_400.0

# The keys each MQTT component accepts in Home Assistant 2024.3 (its documentation: sensor,
# event, device trigger), besides the entity keys every component shares.
ENTITY_KEYS = {"name", "unique_id", "object_id", "device", "availability", "availability_mode",
               "payload_available", "payload_not_available", "icon", "entity_category",
               "json_attributes_topic", "json_attributes_template", "state_topic",
               "value_template", "qos", "enabled_by_default", "encoding"}
SCHEMA = {
    "sensor": ENTITY_KEYS | {"unit_of_measurement", "device_class", "state_class",
                             "suggested_display_precision", "expire_after", "force_update",
                             "last_reset_value_template"},
    "event": ENTITY_KEYS | {"event_types", "device_class"},
    "device_automation": {"automation_type", "topic", "type", "subtype", "payload",
                          "value_template", "device", "qos"},
}
DEVICE_KEYS = {"identifiers", "name", "manufacturer", "model", "sw_version", "via_device"}


def timestamp_custom(value: float, format_: str, local: bool = True) -> str:
    """Home Assistant's filter of that name (UTC when ``local`` is false)."""
    return datetime.fromtimestamp(value, UTC).strftime(format_)


ENVIRONMENT = ImmutableSandboxedEnvironment()
ENVIRONMENT.filters["timestamp_custom"] = timestamp_custom


class Entity:
    """One entity as Home Assistant keeps it: a state and attributes, changed by messages."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.state: str = "unknown"
        self.attributes: dict[str, Any] = {}

    def receive(self, payload: bytes) -> str:
        """What the template rendered; an empty rendering changes nothing, as in Home
        Assistant (a numeric sensor and an event ignore it)."""
        this = SimpleNamespace(state=self.state, attributes=self.attributes)
        value_json = json.loads(payload)
        rendered = ENVIRONMENT.from_string(self.config["value_template"]).render(
            value_json=value_json, this=this)
        if not rendered.strip():
            return rendered
        self.state = rendered
        if "json_attributes_template" in self.config:
            self.attributes = json.loads(ENVIRONMENT.from_string(
                self.config["json_attributes_template"]).render(value_json=value_json, this=this))
        return rendered


def configs(node_id: str = "pi-1") -> dict[str, dict[str, Any]]:
    return {topic: json.loads(payload) for topic, payload in
            discovery_messages(node_id, "collector-1", FORECASTERS, WORDS)}


def entity(key: str, node_id: str = "pi-1", component: str = "sensor") -> Entity:
    topic = f"homeassistant/{component}/{object_id(node_id)}_{key}/config"
    return Entity(configs(node_id)[topic])


def test_every_config_has_only_keys_its_component_knows_and_valid_ids() -> None:
    found = configs()
    components = sorted({topic.split("/")[1] for topic in found})
    assert components == ["device_automation", "event", "sensor"]
    for topic, config in found.items():
        component = topic.split("/")[1]
        assert set(config) <= SCHEMA[component], (topic, set(config) - SCHEMA[component])
        assert set(config["device"]) <= DEVICE_KEYS
        assert config["device"]["identifiers"] == ["tinyml_pi-1"]
        for template in (config.get("value_template"), config.get("json_attributes_template")):
            if template:
                ENVIRONMENT.parse(template)  # valid Jinja2
    diagnostic = [c["name"] for c in found.values() if c.get("entity_category") == "diagnostic"]
    assert diagnostic == ["Last seen", "Counting since", "Spool backlog", "Unconfirmed messages",
                          "Failed sensor reads", "Messages dropped on the node",
                          "Messages lost or rejected", "Forecast models", "Keyword model"]


@pytest.mark.parametrize("node_id", ["pi.kitchen", "a" * 64, "Pi-1_x", "9.9"])
def test_node_ids_home_assistant_would_refuse_still_give_valid_distinct_ids(node_id: str) -> None:
    import re

    valid = re.compile(r"[a-zA-Z0-9_-]+")
    for topic, config in configs(node_id).items():
        parts = topic.split("/")
        assert all(valid.fullmatch(part) for part in parts[2:-1]), topic
        if "unique_id" in config:
            assert valid.fullmatch(config["unique_id"]) and config["unique_id"] in topic
    assert object_id("pi.kitchen") != object_id("pi_kitchen")


def test_the_reading_sensors_show_the_last_reading() -> None:
    temperature, humidity = entity("temperature"), entity("humidity")
    for index, (t, h) in enumerate(((21.0, 45.0), (21.5, 46.0), (-3.0, 98.0))):
        message = ClimateReading("pi-1", T0 + 600 * index, index, t, h).encode()
        assert float(temperature.receive(message)) == t
        assert float(humidity.receive(message)) == h


def forecast(model: str, steps: int, first: float) -> bytes:
    return Forecast("pi-1", model, "1+abcdef12", T0, 0.2, tuple(
        ForecastStep(T0 + 600 * (i + 1), first + i, 40.0 + i) for i in range(steps))).encode()


def test_forecast_sensors_show_the_next_step_and_carry_every_step_for_a_chart() -> None:
    short, long = entity("forecast_a_temperature"), entity("forecast_b_temperature")
    a, b = forecast("forecast_a", 3, 20.0), forecast("forecast_b", 9, 30.0)
    assert short.receive(a) == "20.0" and long.receive(a) == ""  # not its model: ignored
    assert long.receive(b) == "30.0" and short.receive(b) == "" and short.state == "20.0"
    assert short.attributes["values"] == [20.0, 21.0, 22.0]
    assert short.attributes["times"] == [T0 + 600, T0 + 1200, T0 + 1800]
    assert long.attributes["values"] == [30.0 + i for i in range(9)]
    assert short.attributes["model"] == "forecast_a"
    humidity = entity("forecast_b_humidity")
    humidity.receive(b)
    assert humidity.attributes["values"] == [40.0 + i for i in range(9)]


def keyword(label: str, at: float) -> bytes:
    probabilities = {word: 0.01 for word in WORDS} | {"unknown": 0.01, "silence": 0.01}
    probabilities[label] = 0.9
    return KeywordResult("pi-1", "kws_b", "1+12345678", at, 5.0, 0.4, label,
                         probabilities).encode()


def test_every_word_said_fires_one_event_and_unknown_none() -> None:
    event = entity("keyword", component="event")
    assert event.config["event_types"] == list(WORDS)
    fired = []
    for index, label in enumerate(["stop", "unknown", "stop", "go", "unknown"]):
        payload = event.receive(keyword(label, T0 + index))
        if payload:  # Home Assistant ignores an empty payload; anything else is an event
            fired.append(json.loads(payload))
    assert [f["event_type"] for f in fired] == ["stop", "stop", "go"]  # twice is twice
    assert all(f["event_type"] in event.config["event_types"] for f in fired)
    assert fired[0]["input_time"] == T0 and fired[0]["probability"] == pytest.approx(0.9)


def test_a_device_trigger_per_word_matches_only_its_word() -> None:
    triggers = {c["subtype"]: c for t, c in configs().items() if "device_automation" in t}
    assert sorted(triggers) == sorted(WORDS)
    for word, trigger in triggers.items():
        assert trigger["topic"] == "predictions/pi-1/keyword"
        rendered = ENVIRONMENT.from_string(trigger["value_template"]).render(
            value_json=json.loads(keyword(word, T0)))
        assert rendered == trigger["payload"] == word
        other = ENVIRONMENT.from_string(trigger["value_template"]).render(
            value_json=json.loads(keyword("unknown", T0)))
        assert other != trigger["payload"]


def test_diagnostic_entities_read_the_nodes_diagnostics_and_count_error_records() -> None:
    message = NodeDiagnostics("pi-1", T0, 12, 3, 2, 5, 40, 1, 400, 7).encode()
    assert entity("last_seen").receive(message) == "2024-11-24T00:00:00+00:00"
    assert entity("spool_backlog").receive(message) == "12"
    assert entity("unconfirmed").receive(message) == "3"
    assert entity("failed_reads").receive(message) == "5"
    assert entity("dropped").receive(message) == "3"
    assert entity("counting_since").receive(message) == ""  # an older node: no spool id
    counting = entity("counting_since")
    renumbered = NodeDiagnostics("pi-1", T0, 0, 0, 0, 0, 0, 0, 0, 0, "5f3a9c2e", T0 - 60).encode()
    assert counting.receive(renumbered) == "2024-11-23T23:59:00+00:00"
    assert counting.attributes == {"spool": "5f3a9c2e"}
    errors = entity("errors")
    for index in range(3):
        record = ErrorRecord("pi-1", T0 + index, "sensors/pi-1/climate", f"reason {index}", 5,
                             "junk", None).encode()
        errors.receive(record)
    assert errors.state == "3" and errors.attributes == {"last_reason": "reason 2"}
    models = entity("keyword_model")
    assert models.receive(keyword("yes", T0)) == "kws_b 1+12345678"


# --- on a real Mosquitto ------------------------------------------------------------------------
def retained(connect: Callable[..., MqttClient], name: str, wait: float = 1.0
             ) -> dict[str, bytes]:
    """Every retained message under homeassistant/ now."""
    client = connect(name)
    client.subscribe("homeassistant/#")
    found = {}
    while (inbound := client.receive(timeout=wait)) is not None:
        if inbound.retain:
            found[inbound.topic] = inbound.payload
    client.close()
    return found


def test_discovery_on_a_broker_is_retained_resent_on_birth_and_removed_on_retirement(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient]) -> None:
    worker, thread = start_worker(mosquitto, "collector-ha", forecasts=("forecast_a",),
                                  keyword_model="kws_b", ha_discovery=True)
    try:
        node = connect("pi-ha")
        reading = ClimateReading("pi-ha", T0, 0, 21.5, 40.0).encode()
        node.publish(climate_topic("pi-ha"), reading).wait(5)
        node.publish("sensors/pi-bad/climate", b"garbage").wait(5)
        deadline = time.monotonic() + 5
        while worker.counters.received < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        expected = dict(discovery_messages("pi-ha", "collector-ha", ("forecast_a",),
                                           worker.inference.discovery_names()[1]))
        found: dict[str, bytes] = {}

        def all_retained() -> bool:
            # The worker publishes its discovery after taking the reading; one published
            # while this subscriber is connected arrives live (retain 0), so ask again until
            # the broker holds all of it.
            nonlocal found
            found = retained(connect, "ha-1")
            return found == expected

        wait_for(all_retained, timeout=20)
        assert found == expected  # nothing for the node that sent garbage
        temperature = Entity(json.loads(
            found["homeassistant/sensor/tinyml_pi-ha_temperature/config"]))
        assert temperature.config["state_topic"] == "sensors/pi-ha/climate"
        assert temperature.receive(reading) == "21.5"
        event = json.loads(found["homeassistant/event/tinyml_pi-ha_keyword/config"])
        assert event["event_types"] == list(WORDS)
        # Home Assistant restarts: everything is sent again, live.
        home_assistant = connect("home-assistant")
        home_assistant.subscribe("homeassistant/sensor/+/config")
        while home_assistant.receive(timeout=0.5) is not None:
            pass  # the retained ones
        home_assistant.publish("homeassistant/status", b"online").wait(5)
        again = home_assistant.receive(timeout=3)
        assert again is not None and not again.retain
    finally:
        stop_worker(worker, thread)
    done = subprocess.run(
        [sys.executable, "-m", "collector", "ha-remove", "pi-ha", "--broker", mosquitto.address,
         "--models", str(MODELS)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "removed 1 node(s) from Home Assistant" in done.stdout
    assert retained(connect, "ha-2", wait=0.5) == {}  # empty retained configs: all gone


def test_removal_covers_every_config() -> None:
    names = Inference(MODELS, FORECASTERS, "kws_b").discovery_names()
    made = {topic for topic, _ in discovery_messages("pi-1", "c", *names)}
    removed = removal_messages("pi-1", "c", *names)
    assert {topic for topic, _ in removed} == made and all(p == b"" for _, p in removed)
