"""``python -m collector record``: write what crosses the broker as JSON lines, for replay.

The line format is :func:`tinyml_core.recordings.recording_line`'s; ``python -m node replay
FILE`` publishes it again with its original timing. Lines are flushed as they come: a killed
recorder loses nothing it had written.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import IO

from tinyml_core.config import BrokerConfig
from tinyml_core.mqtt import MqttClient
from tinyml_core.recordings import RecordedMessage, recording_line
from tinyml_core.topics import PREDICTIONS_ROOT, sensor_filter

log = logging.getLogger("collector.record")


def default_filters(with_predictions: bool) -> list[str]:
    return [sensor_filter(), *([f"{PREDICTIONS_ROOT}/#"] if with_predictions else [])]


def record(config: BrokerConfig, out: IO[str], filters: list[str], client_id: str,
           stop: threading.Event, duration_s: float | None = None,
           max_messages: int | None = None) -> int:
    """Write every message under ``filters`` to ``out`` until stopped; returns the count."""
    written = 0
    deadline = None if duration_s is None else time.monotonic() + duration_s
    with MqttClient(config, client_id, publish_availability=True) as client:
        for topic_filter in filters:
            client.subscribe(topic_filter)
        log.info("recording %s", ", ".join(filters))
        while not stop.is_set() and (max_messages is None or written < max_messages):
            if deadline is not None and time.monotonic() >= deadline:
                break
            message = client.receive(timeout=0.2)
            if message is None:
                continue
            out.write(recording_line(RecordedMessage(message.received_at, message.topic,
                                                     message.payload)) + "\n")
            out.flush()
            written += 1
    log.info("recorded %d messages", written)
    return written


def open_output(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", encoding="utf-8")
