"""``python -m node replay``: publish a recorded stream as a node would, with its own timing.

A stream is a recording made by ``python -m collector record`` (JSON lines: its sensor
messages are published again byte for byte) or a climate CSV in the Jena format (one reading
per row, at the file's own time step); a folder of ``<word>/*.wav`` adds audio clips after
it. A WAV file of any length can also stand in for the microphone: it goes through the
node's own capture path, which publishes the sound events it finds. Messages keep their
original timestamps, so forecasts line up with the data; ``speed`` scales the gaps between
them (0: as fast as the broker acknowledges).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyml_core.errors import PayloadError
from tinyml_core.messages import (
    AudioClip,
    ClimateReading,
    decode_sensor_message,
    sensor_message_topic,
)
from tinyml_core.mqtt import MqttClient, PublishWindow
from tinyml_core.recordings import (
    RecordingError,
    read_climate_csv,
    read_recording,
    read_wav,
)
from tinyml_core.topics import SENSORS_ROOT

from .microphone import Capture, Microphone, RecordedStream
from .settings import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

log = logging.getLogger("node.replay")

CLIP_SPACING_S = 2.0  # node time between replayed clips
DEFAULT_WINDOW = 100  # unacknowledged messages at a time
ACK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ReplayItem:
    at: float  # position in the stream's own clock (s since the epoch)
    topic: str
    payload: bytes
    label: str = ""  # what it is, for display (e.g. the word a clip says)


@dataclass
class ReplayResult:
    sent: int = 0
    acknowledged: int = 0
    skipped: int = 0  # recorded messages that are not sensor messages (or could not be re-sent)


def items_from_recording(path: Path | str, node_id: str | None = None) -> tuple[list[ReplayItem],
                                                                                int]:
    """The sensor messages of a recording (and how many others were skipped).

    With ``node_id`` every message is re-addressed to that node (decoded and encoded again);
    without it payloads are replayed exactly as recorded, malformed ones included.
    """
    items, skipped = [], 0
    for message in read_recording(path):
        if not message.topic.startswith(f"{SENSORS_ROOT}/"):
            skipped += 1  # predictions, status, errors: the collector makes those again
            continue
        topic, payload = message.topic, message.payload
        if node_id is not None:
            try:
                decoded = decode_sensor_message(topic, payload)
            except PayloadError:
                skipped += 1
                continue
            moved = dataclasses.replace(decoded, node_id=node_id)
            topic, payload = sensor_message_topic(moved), moved.encode()
        items.append(ReplayItem(message.received_at, topic, payload))
    return items, skipped


def items_from_climate_csv(path: Path | str, node_id: str, first_seq: int = 0) -> list[ReplayItem]:
    """One reading per row of a Jena-format CSV, stamped with the row's time."""
    series = read_climate_csv(path)
    items = []
    for offset, (time_s, temperature, humidity) in enumerate(
            zip(series.times, series.temperature, series.humidity, strict=True)):
        try:
            reading = ClimateReading(node_id, float(time_s), first_seq + offset,
                                     float(temperature), float(humidity))
        except PayloadError as error:
            raise RecordingError(f"{path}: row {offset + 1}: {error}") from None
        items.append(ReplayItem(reading.time, sensor_message_topic(reading), reading.encode()))
    return items


def items_from_audio_dir(directory: Path | str, node_id: str, start_time: float,
                         first_seq: int = 0) -> list[ReplayItem]:
    """One clip per ``<word>/*.wav``, ``CLIP_SPACING_S`` apart from ``start_time`` on."""
    paths = sorted(Path(directory).glob("*/*.wav"))
    if not paths:
        raise RecordingError(f"{directory}: no <word>/*.wav files")
    items = []
    for index, path in enumerate(paths):
        rate, samples = read_wav(path)
        try:
            clip = AudioClip.from_samples(node_id, start_time + index * CLIP_SPACING_S,
                                          first_seq + index, rate, samples)
        except PayloadError as error:
            raise RecordingError(f"{path}: {error}") from None
        items.append(ReplayItem(clip.time, sensor_message_topic(clip), clip.encode(),
                                label=path.parent.name))
    return items


def items_from_microphone(path: Path | str, node_id: str, capture: Capture, start_time: float,
                          speed: float = 1.0, first_seq: int = 0) -> Generator[ReplayItem]:
    """The sound events a node's microphone would publish if it heard this WAV file, cut by
    the node's own capture path while the file plays at ``speed`` (0: at once); times are
    ``start_time`` + the offset in the file. The file is read and checked before this
    returns; the events come as the capture thread finds them."""
    rate, samples = read_wav(path)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise RecordingError(f"{path}: recorded at {rate} Hz; a node captures at "
                             f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz (resample it, e.g. "
                             f"`sox in.wav -r 16000 out.wav`)")
    if not len(samples):
        raise RecordingError(f"{path}: holds no audio")
    return _captured_events(samples, rate, node_id, capture, start_time, speed, first_seq)


def _captured_events(samples: np.ndarray, rate: int, node_id: str, capture: Capture,
                     start_time: float, speed: float, first_seq: int) -> Generator[ReplayItem]:
    microphone = Microphone(RecordedStream(samples, rate, speed), rate, capture,
                            clock=lambda: start_time, block_when_full=True).start()
    seq = first_seq
    try:
        while True:
            try:
                event = microphone.clips.get(timeout=0.1)
            except queue.Empty:
                if microphone.finished.is_set() and microphone.clips.empty():
                    break
                continue
            clip = AudioClip.from_samples(node_id, event.start_time, seq, rate, event.samples)
            seq += 1
            yield ReplayItem(clip.time, sensor_message_topic(clip), clip.encode(),
                             label=f"{event.level_dbfs:.0f} dBFS")
    finally:
        microphone.stop()


def load_stream(stream: Path | None, audio_dir: Path | None, node_id: str | None,
                default_node_id: str) -> tuple[list[ReplayItem], int]:
    """Everything to replay, in order: the stream, then the clips (see module doc)."""
    items: list[ReplayItem] = []
    skipped = 0
    if stream is not None:
        if stream.suffix.lower() == ".csv":
            items = items_from_climate_csv(stream, node_id or default_node_id)
        else:
            items, skipped = items_from_recording(stream, node_id)
    if audio_dir is not None:
        start = items[-1].at + CLIP_SPACING_S if items else time.time()
        items += items_from_audio_dir(audio_dir, node_id or default_node_id, start,
                                      first_seq=len(items))
    return items, skipped


def replay(client: MqttClient, items: Iterable[ReplayItem], speed: float,
           window: int = DEFAULT_WINDOW,
           stop: Callable[[], bool] = lambda: False) -> ReplayResult:
    """Publish ``items`` with their gaps divided by ``speed``; wait for the acknowledgements.

    The broker may go away meanwhile: what was sent is re-sent after the reconnect, and the
    replay waits for it (never more than ``window`` ahead of the broker; it gives up after
    ``ACK_TIMEOUT_S`` without any acknowledgement). ``stop`` is polled
    while waiting, so SIGINT ends a slow replay at once."""
    result = ReplayResult()
    pending: PublishWindow[int] = PublishWindow(client, window)
    first_at: float | None = None
    started = time.monotonic()
    for index, item in enumerate(items):
        first_at = item.at if first_at is None else first_at
        due = started + (item.at - first_at) / speed if speed > 0 else 0.0
        while not stop() and time.monotonic() < due:
            time.sleep(max(0.0, min(0.2, due - time.monotonic())))
        progress = time.monotonic()
        while not stop() and pending.room() == 0:  # never ahead of the broker
            done = len(pending.acknowledged())
            if done:
                result.acknowledged += done
                progress = time.monotonic()
            elif time.monotonic() - progress > ACK_TIMEOUT_S:
                log.error("no acknowledgement for %.0f s; giving up", ACK_TIMEOUT_S)
                return result
            time.sleep(0.002)
        if stop():
            break
        pending.publish(index, item.topic, item.payload)
        result.sent += 1
    result.acknowledged += len(pending.wait_all(ACK_TIMEOUT_S, stop))
    if pending:
        log.warning("%d messages not acknowledged within %.0f s; the broker may be down",
                    len(pending), ACK_TIMEOUT_S)
    return result
