"""The dashboard's history: bounds, order, repeats, what counts as a node."""

from __future__ import annotations

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
