"""The dashboard's history: bounds, order, repeats, what counts as a node."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dashboard.store import History
from tinyml_core.messages import (
    Availability,
    ClimateReading,
    ErrorRecord,
    Forecast,
    ForecastStep,
    KeywordResult,
)
from tinyml_core.topics import PredictionKind, climate_topic, errors_topic, prediction_topic

T0 = 1_729_299_600.0  # a step boundary


def reading(node: str, time_s: float, temperature: float = 20.0,
            seq: int = 0) -> tuple[str, bytes]:
    return climate_topic(node), ClimateReading(node, time_s, seq, temperature, 50.0).encode()


def forecast(node: str, input_time: float, model: str = "forecast_a") -> tuple[str, bytes]:
    message = Forecast(node, model, "1+abc", input_time, 0.2,
                       (ForecastStep(input_time + 600, 20.5, 51.0),))
    return prediction_topic(node, PredictionKind.FORECAST), message.encode()


def keyword(node: str, input_time: float, label: str = "yes") -> tuple[str, bytes]:
    labels = ("yes", "no")
    message = KeywordResult(node, "kws_b", "1+abc", input_time, 1.0, 0.1, label,
                            {name: 0.9 if name == label else 0.1 for name in labels})
    return prediction_topic(node, PredictionKind.KEYWORD), message.encode()


def test_readings_are_averaged_per_step_in_time_order_late_ones_included() -> None:
    history = History()
    for minute, temperature in ((1, 20.0), (5, 22.0), (12, 30.0), (3, 24.0)):  # 3 is late
        assert history.add(*reading("pi-1", T0 + 60 * minute, temperature)) is not None
    node = history.node("pi-1")
    assert node is not None
    assert node["steps"] == [[T0 + 600, 22.0, 50.0], [T0 + 1200, 30.0, 50.0]]
    assert node["reading"] == {"time": T0 + 720, "temperature": 30.0, "humidity": 50.0}


def test_the_history_is_bounded_in_time_count_and_nodes() -> None:
    history = History(hours=1, keywords=3, errors=2, max_nodes=2)
    for step in range(20):
        history.add(*reading("pi-1", T0 + 600 * step))
        history.add(*forecast("pi-1", T0 + 600 * step))
        history.add(*keyword("pi-1", T0 + step))
    for index in range(5):
        record = ErrorRecord("pi-1", T0 + index, "sensors/pi-1/climate", f"bad {index}", 3, "x")
        history.add(errors_topic("pi-1"), record.encode())
    node = history.node("pi-1")
    assert node is not None
    assert len(node["steps"]) == 7 and node["steps"][-1][0] == T0 + 600 * 19  # 1 h + its step
    assert len(node["forecasts"]) == 7
    assert [k["time"] for k in node["keywords"]] == [T0 + 17, T0 + 18, T0 + 19]
    assert [e["reason"] for e in node["errors"]] == ["bad 3", "bad 4"]
    for other in ("pi-2", "pi-3"):
        history.add(*reading(other, T0))
    assert [n["node_id"] for n in history.overview()["nodes"]] == ["pi-2", "pi-3"]


def test_a_message_heard_twice_is_kept_once() -> None:
    history = History()
    for message in (reading("pi-1", T0), forecast("pi-1", T0), keyword("pi-1", T0)):
        assert history.add(*message) is not None
        assert history.add(*message) is None  # QoS 1 repeat, or retained on resubscribe
    node = history.node("pi-1")
    assert node is not None
    assert len(node["steps"]) == 1 and node["steps"][0][1] == 20.0
    assert len(node["forecasts"]) == 1 and len(node["keywords"]) == 1


def test_an_unknown_sound_is_logged_with_the_word_that_came_closest() -> None:
    history = History()
    unknown = KeywordResult("pi-1", "kws_e", "1+abc", T0, 1.0, 0.1, "unknown",
                            {"go": 0.62, "no": 0.08, "unknown": 0.25, "silence": 0.05})
    history.add(prediction_topic("pi-1", PredictionKind.KEYWORD), unknown.encode())
    history.add(*keyword("pi-1", T0 + 5, "yes"))
    node = history.node("pi-1")
    assert node is not None
    assert [(k["label"], k["closest"], k["probability"]) for k in node["keywords"]] == [
        ("unknown", "go", 0.62), ("yes", None, 0.9)]


def test_nodes_and_other_clients_and_what_does_not_decode() -> None:
    history = History()
    history.add("status/collector-1", Availability.ONLINE.encode())
    history.add("status/pi-1", Availability.ONLINE.encode())
    history.add(*reading("pi-1", T0))
    history.add("status/pi-1", Availability.OFFLINE.encode())
    assert history.add("sensors/pi-1/climate", b"garbage") is None
    assert history.add("status/pi-1", Availability.OFFLINE.encode()) is None  # no change
    overview = history.overview()
    assert [(n["node_id"], n["status"]) for n in overview["nodes"]] == [("pi-1", "offline")]
    assert overview["clients"] == {"collector-1": "online"}
    assert overview["undecodable"] == 1
    assert history.node("nobody") is None


def test_memory_per_node_does_not_grow_with_the_reading_rate() -> None:
    history = History(hours=1)
    for index in range(6 * 60 * 3):  # three hours of a reading every 10 s
        history.add(*reading("pi-1", T0 + 10 * index + 5, seq=index))
    node = history._nodes["pi-1"]
    assert len(node.steps.items()) == 7  # an hour of 10-minute steps (and the one it ends in)
    assert len(node.reading_times) <= 3 * 60  # two or three steps of readings, not three hours


def filled_history() -> History:
    history = History(hours=2, keywords=3, errors=3)
    for node in ("pi-a", "pi-b"):
        for minute in range(0, 150, 5):  # past the two hours kept: the oldest steps drop
            history.add(*reading(node, T0 + 60 * minute, 20 + minute / 100), now=T0)
        history.add(*forecast(node, T0 + 3600), now=T0)
        for second in range(5):
            history.add(*keyword(node, T0 + second), now=T0)
        history.add(errors_topic(node), ErrorRecord(node, T0, "sensors/x", "bad", 3, "x").encode())
    return history


def test_a_restored_history_shows_what_the_saved_one_showed() -> None:
    saved = filled_history()
    document = json.loads(json.dumps(saved.export()))  # as the file holds it
    restored = History(hours=2, keywords=3, errors=3)
    assert restored.restore(document) == (2, [])
    for node in ("pi-a", "pi-b"):
        assert restored.node(node) == saved.node(node)
    assert restored.overview()["nodes"] == saved.overview()["nodes"]
    # It goes on as the saved one would: a repeat is still a repeat, a new step is added.
    assert restored.add(*reading("pi-a", T0 + 60 * 145, 21.45), now=T0) is None
    assert restored.add(*reading("pi-a", T0 + 60 * 150), now=T0) is not None


def test_a_saved_history_is_cut_to_the_restoring_ones_bounds() -> None:
    document = json.loads(json.dumps(filled_history().export()))
    smaller = History(hours=1, keywords=2, errors=3, max_nodes=1)
    assert smaller.restore(document) == (1, [])
    [only] = smaller.overview()["nodes"]
    assert only["node_id"] == "pi-b"  # the most recently heard
    shown = smaller.node("pi-b")
    assert shown is not None and len(shown["keywords"]) == 2
    assert len(shown["steps"]) <= 7 and shown["steps"][-1][0] == T0 + 600 * 15


@pytest.mark.parametrize("broken, reason", [
    ({"step_s": 300.0, "nodes": []}, "300.0 s steps"),
    ({"step_s": 600.0, "nodes": [{"node_id": "bad/id"}]}, "malformed node"),
    ({"step_s": 600.0, "nodes": [{"node_id": "pi-a", "steps": [[1, "x", 2, 3]]}]},
     "malformed node"),
])
def test_a_malformed_saved_history_is_refused_with_the_reason(broken: dict[str, Any],
                                                              reason: str) -> None:
    history = History()
    restored, refused = history.restore(broken)
    assert restored == 0 and reason in refused[0] and len(history) == 0
