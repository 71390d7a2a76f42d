"""A node's burst through a stock Mosquitto to the collector, as a user meets it: the
streams, the replay, and what the collector published. Used by tests/test_flow_control.py and
benchmarks/flow_control.py."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from collector.settings import CollectorOptions
from collector.worker import Worker
from node.replay import ReplayItem, ReplayResult, replay
from tests.collector_runner import MODELS, start_worker, stop_worker
from tests.conftest import REPO_ROOT, broker_config
from tinyml_core.broker import LocalMosquitto
from tinyml_core.messages import AudioClip, ClimateReading, Forecast, KeywordResult, decode_message
from tinyml_core.mqtt import MqttClient
from tinyml_core.recordings import read_wav
from tinyml_core.topics import audio_topic, climate_topic

START = 1_729_299_600.0  # on a step boundary: a reading closes its step at once
STEP_S = 600.0
WINDOW = 6
EVENT_SPACING_S = 2.0


def reading_items(node_id: str, count: int) -> list[ReplayItem]:
    """``count`` readings 10 minutes apart, numbered from 0."""
    items = []
    for seq in range(count):
        reading = ClimateReading(node_id, START + STEP_S * seq, seq, 20.0 + (seq % 50) / 10,
                                 50.0 + (seq % 30) / 10)
        items.append(ReplayItem(reading.time, climate_topic(node_id), reading.encode(),
                                seq=seq))
    return items


def event_items(node_id: str, count: int) -> list[ReplayItem]:
    """``count`` sound events, the bundled sample clips in turn, ``EVENT_SPACING_S`` apart."""
    clips = [read_wav(path) for path in sorted((REPO_ROOT / "samples" / "speech").glob("*/*.wav"))]
    items = []
    for seq in range(count):
        rate, samples = clips[seq % len(clips)]
        clip = AudioClip.from_samples(node_id, START + EVENT_SPACING_S * seq, seq, rate, samples)
        items.append(ReplayItem(clip.time, audio_topic(node_id), clip.encode(), seq=seq))
    return items


def expected_forecast_times(readings: int) -> set[float]:
    return {START + STEP_S * seq for seq in range(WINDOW - 1, readings)}


@dataclass
class Published:
    """What the collector handed to its MQTT client (an answer the broker then lost in a kill
    is still an answer: predictions themselves are not confirmed)."""

    forecasts: list[tuple[float, str]] = field(default_factory=list)  # (input time, model)
    keywords: list[tuple[float, str]] = field(default_factory=list)  # (input time, label)

    def events_answered(self) -> Counter[int]:
        """How many results each sound event got (by the event its input time falls in)."""
        return Counter(int((t - START) // EVENT_SPACING_S) for t, _ in self.keywords)

    def answered_twice(self) -> list[tuple[float, str]]:
        """Results published more than once (the same window, word and time)."""
        return [key for key, n in Counter(self.keywords).items() if n > 1] + \
            [key for key, n in Counter(self.forecasts).items() if n > 1]


def watch(worker: Worker) -> Published:
    published = Published()
    publish = worker.client.publish

    def recording_publish(topic: str, payload: bytes, **options: Any) -> Any:
        if topic.startswith("predictions/"):
            message = decode_message(topic, payload)
            if isinstance(message, Forecast):
                published.forecasts.append((message.input_time, message.model))
            elif isinstance(message, KeywordResult):
                published.keywords.append((message.input_time, message.label))
        return publish(topic, payload, **options)

    worker.client.publish = recording_publish  # type: ignore[method-assign]
    return published


@contextmanager
def default_collector(broker: LocalMosquitto, collector_id: str = "collector-flow"
                      ) -> Iterator[tuple[Worker, Published]]:
    """The collector at its defaults (both forecasters, kws_b, the per-node rate limit), in a
    thread, with what it publishes recorded."""
    defaults = CollectorOptions()
    worker, thread = start_worker(broker, collector_id, forecasts=defaults.forecast_models,
                                  keyword_model=defaults.keyword_model,
                                  rate_limit_per_s=defaults.rate_limit_per_s)
    try:
        yield worker, watch(worker)
    finally:
        stop_worker(worker, thread)


def replay_as_node(broker: LocalMosquitto, node_id: str, items: list[ReplayItem],
                   **options: Any) -> ReplayResult:
    """What ``python -m node replay --speed 0`` does, at the node's default settings."""
    client = MqttClient(broker_config(broker), f"{node_id}-replay",
                        publish_availability=False).connect()
    try:
        return replay(client, items, 0, **options)
    finally:
        client.close()


class ReplayThread(threading.Thread):
    def __init__(self, broker: LocalMosquitto, node_id: str, items: list[ReplayItem]) -> None:
        super().__init__(daemon=True)
        self.args_ = (broker, node_id, items)
        self.result: ReplayResult | None = None

    def run(self) -> None:
        self.result = replay_as_node(*self.args_)


__all__ = ["MODELS", "Published", "ReplayThread", "default_collector", "event_items",
           "expected_forecast_times", "reading_items", "replay_as_node", "watch"]
