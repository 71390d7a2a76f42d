"""``python -m node replay``: publish a recorded stream as a node would, with its own timing.

A stream is a recording made by ``python -m collector record`` (JSON lines: its sensor
messages are published again as recorded, malformed ones byte for byte) or a climate CSV in the
Jena format (one reading per row, at the file's own time step); a folder of ``<word>/*.wav``
adds audio clips after it. A WAV file of any length can also stand in for the microphone: it
goes through the node's own capture path, which publishes the sound events it finds. Messages
keep their original timestamps (or start at ``--start-time``), so forecasts line up with the
data; ``speed`` scales the gaps between them (0: as fast as the node's own flow control lets
them go: the daemon's forwarder, with its pace and its window of unconfirmed messages, sends
them, from a spool in memory).

A replay is a numbering of its own: every message it sends carries the replay's own spool id
(made anew each run), so a collector takes the same recording replayed twice as a node that
started counting again, not as repeats.
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

from tinyml_core.errors import MqttError, PayloadError, SubscriptionRefused
from tinyml_core.messages import (
    CLIP,
    AudioClip,
    ClimateReading,
    decode_sensor_message,
    sensor_message_topic,
)
from tinyml_core.mqtt import MqttClient
from tinyml_core.recordings import (
    RecordingError,
    read_climate_csv,
    read_recording,
    read_wav,
)
from tinyml_core.topics import SENSORS_ROOT, confirmed_filter, reporting_node_id

from .confirmations import ConfirmationTracker
from .forwarder import Forwarder
from .microphone import Capture, Microphone, RecordedStream
from .settings import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, NodeIdentity
from .spool import Spool

log = logging.getLogger("node.replay")

CLIP_SPACING_S = 2.0  # node time between replayed clips
DEFAULT_WINDOW = 100  # unacknowledged messages at a time
ACK_TIMEOUT_S = 30.0
DEFAULT_RATE_PER_S = NodeIdentity().flush_rate_per_s  # as the node daemon drains a backlog
DEFAULT_CONFIRM_WINDOW = NodeIdentity().confirm_window
GIVE_UP_AFTER_S = 10.0  # no confirmation at all by then: no collector confirms


@dataclass(frozen=True)
class ReplayItem:
    at: float  # position in the stream's own clock (s since the epoch)
    topic: str
    payload: bytes
    label: str = ""  # what it is, for display (e.g. the word a clip says)
    seq: int | None = None  # its sequence number (None: not a valid sensor message)


@dataclass
class ReplayResult:
    sent: int = 0
    acknowledged: int = 0  # by the broker
    confirmed: int | None = None  # by a collector (None: none confirmed anything)
    sent_again: int = 0  # unconfirmed after a reconnect or a timeout, so sent again
    skipped: int = 0  # recorded messages that are not sensor messages (or could not be re-sent)

    @property
    def complete(self) -> bool:
        """Everything was acknowledged, and confirmed where a collector confirms."""
        return self.acknowledged == self.sent and self.confirmed in (None, self.sent)

    def line(self) -> str:
        confirmed = ("no collector confirmed" if self.confirmed is None
                     else f"confirmed by the collector {self.confirmed}")
        again = f" ({self.sent_again} sent again)" if self.sent_again else ""
        return f"sent {self.sent}, acknowledged {self.acknowledged}, {confirmed}{again}"


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
        try:
            decoded: ClimateReading | AudioClip | None = decode_sensor_message(topic, payload)
        except PayloadError:
            decoded = None
        if node_id is not None:
            if decoded is None:
                skipped += 1
                continue
            decoded = dataclasses.replace(decoded, node_id=node_id)
            topic, payload = sensor_message_topic(decoded), decoded.encode()
        items.append(ReplayItem(message.received_at, topic, payload,
                                seq=None if decoded is None else decoded.seq))
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
        items.append(ReplayItem(reading.time, sensor_message_topic(reading), reading.encode(),
                                seq=reading.seq))
    return items


def items_from_audio_dir(directory: Path | str, node_id: str, start_time: float,
                         first_seq: int = 0) -> list[ReplayItem]:
    """One clip per ``<word>/*.wav``, ``CLIP_SPACING_S`` apart from ``start_time`` on, each
    sent as one utterance (``capture`` "clip"), not as a microphone's sound event."""
    paths = sorted(Path(directory).glob("*/*.wav"))
    if not paths:
        raise RecordingError(f"{directory}: no <word>/*.wav files")
    items = []
    for index, path in enumerate(paths):
        rate, samples = read_wav(path)
        try:
            clip = AudioClip.from_samples(node_id, start_time + index * CLIP_SPACING_S,
                                          first_seq + index, rate, samples, capture=CLIP)
        except PayloadError as error:
            raise RecordingError(f"{path}: {error}") from None
        items.append(ReplayItem(clip.time, sensor_message_topic(clip), clip.encode(),
                                label=path.parent.name, seq=clip.seq))
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
                             label=f"{event.level_dbfs:.0f} dBFS", seq=clip.seq)
    finally:
        microphone.stop()


def load_stream(stream: Path | None, audio_dir: Path | None, node_id: str | None,
                default_node_id: str, start_time: float | None = None
                ) -> tuple[list[ReplayItem], int]:
    """Everything to replay, in order: the stream, then the clips (see module doc); with
    ``start_time`` the stream's first message is moved to it and the rest by as much."""
    items: list[ReplayItem] = []
    skipped = 0
    if stream is not None:
        if stream.suffix.lower() == ".csv":
            items = items_from_climate_csv(stream, node_id or default_node_id)
        else:
            items, skipped = items_from_recording(stream, node_id)
        if start_time is not None and items:
            items = shifted(items, start_time - items[0].at)
    if audio_dir is not None:
        start = items[-1].at + CLIP_SPACING_S if items else (
            time.time() if start_time is None else start_time)
        items += items_from_audio_dir(audio_dir, node_id or default_node_id, start,
                                      first_seq=len(items))
    return items, skipped


def shifted(items: Iterable[ReplayItem], offset_s: float) -> list[ReplayItem]:
    """The items ``offset_s`` later (a malformed message, which has no time to move, as is)."""
    out = []
    for item in items:
        try:
            message = decode_sensor_message(item.topic, item.payload)
        except PayloadError:
            out.append(dataclasses.replace(item, at=item.at + offset_s))
            continue
        try:
            moved = dataclasses.replace(message, time=message.time + offset_s)
        except PayloadError as error:  # moved out of 2000-2100
            raise RecordingError(f"--start-time moves a message out of range: {error}") from None
        out.append(dataclasses.replace(item, at=item.at + offset_s, payload=moved.encode()))
    return out


def _stamped(item: ReplayItem, spool_id: str) -> bytes:
    """The item's payload carrying the replay's own spool id (a malformed one as it is)."""
    try:
        message = decode_sensor_message(item.topic, item.payload)
    except PayloadError:
        return item.payload
    return dataclasses.replace(message, spool=spool_id).encode()


def replay(client: MqttClient, items: Iterable[ReplayItem], speed: float,
           window: int = DEFAULT_WINDOW,
           stop: Callable[[], bool] = lambda: False,
           rate_per_s: float = DEFAULT_RATE_PER_S,
           confirm: bool = True,
           confirm_window: int = DEFAULT_CONFIRM_WINDOW,
           give_up_after_s: float = GIVE_UP_AFTER_S) -> ReplayResult:
    """Publish ``items`` with their gaps divided by ``speed``, through the node's own
    forwarder: never faster than ``rate_per_s``, never more than ``window`` ahead of the
    broker, and (``confirm``) never more than ``confirm_window`` ahead of the collector's
    confirmations, sending again what stays unconfirmed (node/confirmations.py). With no
    confirmation within ``give_up_after_s`` it goes on as if none were asked for, and says so.

    The broker may go away meanwhile: what was sent is sent again after the reconnect, and the
    replay waits for it (it gives up after ``ACK_TIMEOUT_S`` without any progress). ``stop`` is
    polled while waiting, so SIGINT ends a slow replay at once."""
    result = ReplayResult()
    spool = Spool(":memory:", max_bytes=2**62, max_unconfirmed=2**62)
    tracker = ConfirmationTracker(active=True, window=confirm_window,
                                  give_up_after_s=give_up_after_s) if confirm else None
    forwarder = Forwarder(spool, client, rate_per_s, window, confirmations=tracker,
                          owns_numbering=False)
    subscribed: set[str] = set()
    first_at: float | None = None
    started = time.monotonic()
    progress = _Progress(forwarder)
    try:
        for item in items:
            first_at = item.at if first_at is None else first_at
            due = started + (item.at - first_at) / speed if speed > 0 else 0.0
            # Wait for the item's time, and hold while the forwarder is a window behind (so a
            # long replay at speed 0 keeps only that much in memory).
            while not stop() and (time.monotonic() < due or len(spool) >= window):
                if forwarder.step() == 0:
                    time.sleep(max(0.0, min(0.005, due - time.monotonic())) or 0.002)
                if progress.stalled():
                    log.error("no progress for %.0f s; giving up", ACK_TIMEOUT_S)
                    return progress.result(result, spool)
            if stop():
                break
            node_id = reporting_node_id(item.topic)
            if forwarder.confirmations is not None and node_id not in subscribed:
                subscribed.add(node_id)
                _subscribe_to_confirmations(client, forwarder, node_id)
            spool.put(item.topic.rsplit("/", 1)[-1], item.topic, _stamped(item, spool.spool_id),
                      item.seq)
            result.sent += 1
            forwarder.step()
        while not stop() and not forwarder.settled:  # the rest, acknowledged and confirmed
            if forwarder.step() == 0:
                time.sleep(0.002)
            if progress.stalled():
                break
        return progress.result(result, spool)
    finally:
        spool.close()


class _Progress:
    """Whether a replay still gets anywhere (acknowledgements or confirmations)."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self._mark = (-1, -1)
        self._since = time.monotonic()

    def _state(self) -> tuple[int, int]:
        tracker = self.forwarder.confirmations
        return (self.forwarder.stats.acknowledged, 0 if tracker is None else tracker.confirmed)

    def stalled(self) -> bool:
        state = self._state()
        if state != self._mark or self.forwarder.settled:
            self._mark, self._since = state, time.monotonic()
            return False
        return time.monotonic() - self._since > ACK_TIMEOUT_S

    def result(self, result: ReplayResult, spool: Spool) -> ReplayResult:
        forwarder, tracker = self.forwarder, self.forwarder.confirmations
        waiting = len(spool) + forwarder.in_flight
        result.acknowledged = result.sent - waiting
        result.sent_again = forwarder.stats.sent_again
        if tracker is not None and tracker.active:
            result.confirmed = result.acknowledged - len(tracker)
        if waiting:
            log.warning("%d messages not acknowledged; the broker may be down", waiting)
        if tracker is not None and tracker.active and len(tracker):
            log.warning("%d messages acknowledged by the broker but never confirmed by a "
                        "collector", len(tracker))
        return result


def _subscribe_to_confirmations(client: MqttClient, forwarder: Forwarder, node_id: str) -> None:
    try:
        client.subscribe(confirmed_filter(node_id))
    except SubscriptionRefused as error:
        log.warning("%s; sending without waiting for confirmations (the broker's ACL needs "
                    "'pattern read confirmed/%%u/+', see config/mosquitto/acl)", error)
        forwarder.disable_confirmations()
    except MqttError as error:
        log.warning("confirmations of %s not subscribed (%s); sending without waiting for "
                    "them", node_id, error)
        forwarder.disable_confirmations()
