"""Flow control end to end, against Mosquitto as Debian and Home Assistant's add-on ship it
(``max_queued_messages`` 1000 per client, 20 in flight) and the collector at its defaults.

Before flow control a ``--speed 0`` replay of 5000 readings printed "acknowledged 5000" while
the stock broker's queue for the collector dropped two thirds of them, and the collector's own
per-node rate limit dropped what a bigger queue kept. Now the node never has more than its
window sent and unconfirmed, paces under the rate limit, and sends again what stays
unconfirmed; the collector answers a re-sent sound event once. benchmarks/flow_control.py runs
the same bursts ten times over, at full size.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.collector_runner import start_collector, wait_online
from tests.conftest import broker_config
from tests.flow import (
    START,
    STEP_S,
    ReplayThread,
    default_collector,
    event_items,
    expected_forecast_times,
    reading_items,
    replay_as_node,
)
from tests.test_faults import Observer
from tests.waiting import wait_for
from tinyml_core.broker import LocalMosquitto
from tinyml_core.mqtt import MqttClient

READINGS = 5000
EVENTS = 2500


@pytest.fixture
def stock_broker(mosquitto_factory: Callable[..., LocalMosquitto]) -> LocalMosquitto:
    return mosquitto_factory(stock=True)


def test_the_stock_broker_is_really_stock(stock_broker: LocalMosquitto) -> None:
    config = stock_broker.config_path.read_text()
    assert "max_queued_messages" not in config and "max_inflight" not in config


def test_5000_readings_at_speed_0_through_a_stock_broker_are_forecast_whole(
        stock_broker: LocalMosquitto) -> None:
    with default_collector(stock_broker) as (worker, published):
        result = replay_as_node(stock_broker, "pi-burst", reading_items("pi-burst", READINGS))
        assert result.complete and result.confirmed == READINGS, result.line()
        expected = expected_forecast_times(READINGS)
        assert wait_for(lambda: {t for t, m in published.forecasts
                                 if m == "forecast_a"} >= expected, timeout=30)
        limit = worker.inference.rate_limit
        assert limit is not None and limit.dropped == 0  # paced under it
        assert worker.inference.confirmations.gaps == {}  # nothing lost on the way
    for model in ("forecast_a", "forecast_b"):
        made = [t for t, m in published.forecasts if m == model]
        assert sorted(made) == sorted(expected)  # every full window, once


def test_2500_sound_events_at_speed_0_through_a_stock_broker_get_one_answer_each(
        stock_broker: LocalMosquitto) -> None:
    with default_collector(stock_broker) as (worker, published):
        result = replay_as_node(stock_broker, "pi-talk", event_items("pi-talk", EVENTS))
        assert result.complete and result.confirmed == EVENTS, result.line()
        assert wait_for(lambda: len(published.events_answered()) == EVENTS, timeout=30)
        assert worker.inference.rate_limit is not None
        assert worker.inference.rate_limit.dropped == 0
    assert set(published.events_answered()) == set(range(EVENTS))
    assert published.answered_twice() == []


def both_kinds(node_id: str, readings: int) -> list:  # type: ignore[type-arg]
    """Readings with a sound event after every fifth, as a node with both sensors sends."""
    events = iter(event_items(node_id, readings // 5))
    items = []
    for index, reading in enumerate(reading_items(node_id, readings)):
        items.append(reading)
        if index % 5 == 4:
            items.append(next(events))
    return items


def test_a_stock_broker_killed_mid_burst_loses_nothing_and_nothing_is_answered_twice(
        stock_broker: LocalMosquitto) -> None:
    readings = 2000
    with default_collector(stock_broker) as (worker, published):
        node = ReplayThread(stock_broker, "pi-kill", both_kinds("pi-kill", readings))
        node.start()
        assert wait_for(lambda: worker.counters.received > 800, timeout=30)
        stock_broker.kill()  # SIGKILL: what it acknowledged since its last save is gone
        time.sleep(0.5)
        stock_broker.start()
        node.join(timeout=120)
        assert node.result is not None and node.result.complete, node.result
        expected = expected_forecast_times(readings)
        assert wait_for(lambda: {t for t, m in published.forecasts
                                 if m == "forecast_a"} >= expected, timeout=30)
    assert sorted(t for t, m in published.forecasts if m == "forecast_a") == sorted(expected)
    assert set(published.events_answered()) == set(range(readings // 5))
    assert published.answered_twice() == []


def test_a_collector_killed_mid_burst_and_restarted_loses_nothing_and_answers_once(
        stock_broker: LocalMosquitto, tmp_path: Path) -> None:
    # The collector as users run it, in its own process, with its state file (and beside it
    # the journal of what it took): SIGKILL, then a new process on the same state.
    log = tmp_path / "collector.log"
    collector = start_collector(stock_broker, log)
    observer = Observer(stock_broker, "predictions/#")
    readings = 2000
    try:
        wait_online(stock_broker)
        node = ReplayThread(stock_broker, "pi-crash", both_kinds("pi-crash", readings))
        node.start()
        assert observer.wait_until(lambda: len(observer.forecasts) > 600, timeout=30)
        collector.send_signal(signal.SIGKILL)
        collector.wait(timeout=5)
        time.sleep(1.0)  # the node holds its window meanwhile
        # The old process's answers may still be on their way to the observer after the
        # kill (10 ms under load); the new one answers nothing before it starts.
        restarted = time.monotonic()
        collector = start_collector(stock_broker, log)
        node.join(timeout=120)
        assert node.result is not None and node.result.complete, node.result
        expected = expected_forecast_times(readings)
        assert observer.wait_until(
            lambda: {t for t, m, _ in observer.forecasts if m == "forecast_a"} >= expected,
            timeout=30), sorted(round((t - START) / STEP_S) for t in expected - {
                t for t, m, _ in observer.forecasts if m == "forecast_a"})[:20]
        time.sleep(0.5)  # late repeats
    finally:
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=15)
        observer.close()
    assert collector.returncode == 0, log.read_text()[-2000:]
    events = {round((t - START) // 2.0) for t in observer.keywords}
    assert events == set(range(readings // 5))
    # One answer per event, but for what docs/security.md does not guarantee: an answer the
    # broker took before the kill and had not acknowledged yet is made again after the
    # restart (at least once). So an event answered twice was answered once before the kill
    # and once after it, with the same label. (QoS 1 may deliver one publication twice to the
    # observer only across a broker restart, and the broker is not restarted here.)
    heard: dict[float, list[tuple[float, str]]] = {}
    for input_time, label, arrival in zip(observer.keywords, observer.keyword_labels,
                                          observer.keyword_arrivals, strict=True):
        heard.setdefault(input_time, []).append((arrival, label))
    for input_time, answers in heard.items():
        if len(answers) > 1:
            (first, label), (second, again), *more = sorted(answers)
            assert not more and first < restarted < second and label == again, (
                input_time, answers)


def test_a_node_without_a_collector_falls_back_and_says_so(
        stock_broker: LocalMosquitto, caplog: pytest.LogCaptureFixture) -> None:
    listener = MqttClient(broker_config(stock_broker), "listener", persistent_session=True,
                          publish_availability=False).connect()
    listener.subscribe("sensors/#")
    try:
        result = replay_as_node(stock_broker, "pi-alone", reading_items("pi-alone", 300),
                                give_up_after_s=1.0)
    finally:
        listener.close()
    assert result.complete and result.confirmed is None
    assert result.line() == "sent 300, acknowledged 300, no collector confirmed"
    assert caplog.text.count("no collector confirmed anything within 1 s") == 1
