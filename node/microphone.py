"""Sound events from a microphone, through PyAudio.

A reader thread pulls the input stream without pause, so no sample is lost however long
publishing takes, and :class:`SoundEvents` cuts it into events: from a short pre-roll before
the level (RMS in dBFS, per read block) rises above the gate until it has stayed below for
the hangover, at least ``min_seconds`` and at most ``max_seconds`` long. A word is never cut
in two: a sound longer than ``max_seconds`` continues in a next event that repeats the last
``min_seconds`` of the previous one. Optionally a quiet clip goes out every N seconds too.
Event times come from the sample count since the stream opened, so they do not drift with
scheduling. PyAudio is imported only when a microphone is configured.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .hardware import SensorError, import_driver
from .loan import POLL_S, MicrophoneLoan

log = logging.getLogger("node.microphone")

BLOCK_SECONDS = 0.1  # read granularity and level resolution: short enough to stop promptly
FULL_SCALE = 32768.0


class InputStream(Protocol):
    """The part of ``pyaudio.Stream`` used here; ``read`` raises EOFError at the end of a
    recording (a live stream never ends)."""

    def read(self, num_frames: int, exception_on_overflow: bool = True) -> bytes: ...

    def stop_stream(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Clip:
    start_time: float  # s since the epoch of the first sample
    sample_rate: int
    samples: np.ndarray  # int16, mono
    level_dbfs: float


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level relative to full scale; -inf for digital silence."""
    if samples.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(np.square(samples.astype(np.float64)))))
    return 20 * math.log10(rms / FULL_SCALE) if rms > 0 else -math.inf


@dataclass(frozen=True)
class Capture:
    """How a stream becomes events (config/node.toml, [audio])."""

    gate_dbfs: float = -50.0
    pre_roll_s: float = 0.3
    hangover_s: float = 0.3
    min_seconds: float = 1.0
    max_seconds: float = 3.0
    every_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.min_seconds <= self.max_seconds / 2:
            raise ValueError(f"an event of at most {self.max_seconds:g} s must be able to hold "
                             f"two of at least {self.min_seconds:g} s (max_seconds >= 2 x "
                             "min_seconds), so a long sound is cut with a full overlap")
        if self.pre_roll_s < 0 or self.hangover_s < 0 or self.every_s < 0:
            raise ValueError("pre_roll_s, hangover_s and every_s cannot be negative")


class SoundEvents:
    """Cuts consecutive blocks of one stream into :class:`Clip` events (see module doc)."""

    def __init__(self, capture: Capture, sample_rate: int, start_time: float) -> None:
        self.capture, self.sample_rate, self.start_time = capture, sample_rate, start_time
        self._pre_roll = round(capture.pre_roll_s * sample_rate)
        self._hangover = round(capture.hangover_s * sample_rate)
        self._min = round(capture.min_seconds * sample_rate)
        self._max = round(capture.max_seconds * sample_rate)
        self._every = round(capture.every_s * sample_rate)
        # Quiet audio kept for the pre-roll (and for a periodic clip).
        self._keep = max(self._pre_roll, self._min if self._every else 0)
        self._recent: deque[np.ndarray] = deque()
        self._recent_samples = 0
        self._event: list[np.ndarray] | None = None
        self._event_start = self._event_samples = self._quiet = 0
        self._position = 0  # samples fed so far
        self._last_end = -self._every  # where the last published clip ended
        self.events = 0  # events (and periodic clips) cut

    def feed(self, block: np.ndarray) -> list[Clip]:
        """The events that ended with this block (usually none)."""
        block = np.asarray(block, dtype=np.int16)
        loud = level_dbfs(block) > self.capture.gate_dbfs
        start, self._position = self._position, self._position + len(block)
        if self._event is None:
            if not loud:
                self._remember(block)
                return self._periodic()
            pre_roll = self._tail(self._pre_roll)
            self._begin(start - len(pre_roll), [pre_roll, block])
        else:
            self._event.append(block)
            self._event_samples += len(block)
            self._quiet = 0 if loud else self._quiet + len(block)
        cuts = []
        while self._event is not None and self._event_samples >= self._max:
            cuts.append(self._cut_at_max())  # more than one only for blocks of seconds
        if cuts:
            return cuts
        fell_back = self._quiet > 0 and self._quiet >= self._hangover  # and stayed below
        if self._event is not None and fell_back and self._event_samples >= self._min:
            return [self._end_event()]
        return []

    def flush(self) -> list[Clip]:
        """The event in progress when the stream ends (a recording's last word)."""
        if self._event is None or not self._event_samples:
            return []
        return [self._end_event()]

    def _begin(self, start: int, blocks: list[np.ndarray]) -> None:
        self._event = [b for b in blocks if len(b)]
        self._event_start = start
        self._event_samples = sum(len(b) for b in self._event)
        self._quiet = 0
        self._recent.clear()
        self._recent_samples = 0

    def _clip(self, start: int, samples: np.ndarray) -> Clip:
        self.events += 1
        self._last_end = start + len(samples)
        return Clip(self.start_time + start / self.sample_rate, self.sample_rate, samples,
                    level_dbfs(samples))

    def _end_event(self) -> Clip:
        assert self._event is not None
        samples = np.concatenate(self._event)
        clip = self._clip(self._event_start, samples)
        self._event = None
        self._remember(samples[-self._keep:] if self._keep else samples[:0])
        return clip

    def _cut_at_max(self) -> Clip:
        """Publish ``max_seconds``; a sound still going on continues in a next event that
        repeats the last ``min_seconds``, so a word across the cut is whole in one of them."""
        assert self._event is not None
        joined = np.concatenate(self._event)
        clip = self._clip(self._event_start, joined[:self._max])
        quiet = self._quiet
        self._event = None
        if quiet < self._hangover:  # still going on
            overlap = self._max - self._min
            self._begin(self._event_start + overlap, [joined[overlap:]])
            self._quiet = quiet
        else:
            self._remember(joined[self._max:])
        return clip

    def _remember(self, block: np.ndarray) -> None:
        if not self._keep or not len(block):
            return
        self._recent.append(block)
        self._recent_samples += len(block)
        while self._recent_samples - len(self._recent[0]) >= self._keep:
            self._recent_samples -= len(self._recent.popleft())

    def _tail(self, count: int) -> np.ndarray:
        if not count or not self._recent:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._recent)[-count:]

    def _periodic(self) -> list[Clip]:
        if not self._every or self._position - self._last_end < self._every:
            return []
        if self._recent_samples < self._min:
            return []
        return [self._clip(self._position - self._min, self._tail(self._min))]


def open_pyaudio_stream(sample_rate: int, device_index: int,
                        frames_per_buffer: int) -> tuple[InputStream, Callable[[], None]]:
    """A 16-bit mono input stream and the function that releases PyAudio."""
    pyaudio = _import_pyaudio()
    audio = pyaudio.PyAudio()
    try:
        stream = audio.open(format=pyaudio.paInt16, channels=1, rate=sample_rate, input=True,
                            frames_per_buffer=frames_per_buffer,
                            input_device_index=None if device_index < 0 else device_index)
    except (OSError, ValueError) as exc:
        audio.terminate()
        device = "the default input" if device_index < 0 else f"input device {device_index}"
        raise SensorError(f"cannot open {device} at {sample_rate} Hz: {exc} (list devices "
                          "with `python -m node devices`)") from None
    return stream, audio.terminate


class RecordedStream:
    """A recording in the place of PyAudio's stream: the same blocks, paced at ``speed`` times
    real time (0: as fast as they are taken), then EOFError."""

    def __init__(self, samples: np.ndarray, sample_rate: int, speed: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.data = np.asarray(samples, dtype="<i2").tobytes()
        self.sample_rate, self.speed = sample_rate, speed
        self.position = 0  # bytes
        self._clock, self._sleep = clock, sleep
        self._started: float | None = None

    def read(self, num_frames: int, exception_on_overflow: bool = True) -> bytes:
        if self.position >= len(self.data):
            raise EOFError("end of the recording")
        chunk = self.data[self.position:self.position + 2 * num_frames]
        self.position += len(chunk)
        if self.speed > 0:
            self._started = self._clock() if self._started is None else self._started
            due = self._started + self.position / 2 / self.sample_rate / self.speed
            self._sleep(max(0.0, due - self._clock()))
        return chunk

    def stop_stream(self) -> None:
        pass

    def close(self) -> None:
        pass


def input_devices() -> list[tuple[int, str, float]]:
    """(index, name, default sample rate) of every input device PyAudio sees."""
    pyaudio = _import_pyaudio()
    audio = pyaudio.PyAudio()
    try:
        devices = [audio.get_device_info_by_index(i) for i in range(audio.get_device_count())]
        return [(int(d["index"]), str(d["name"]), float(d["defaultSampleRate"]))
                for d in devices if int(d["maxInputChannels"]) > 0]
    finally:
        audio.terminate()


def _import_pyaudio() -> Any:
    return import_driver("pyaudio", "PyAudio", needs="apt: portaudio19-dev")


class Microphone:
    """Reads ``stream`` continuously in a thread; its sound events wait in :attr:`clips`.

    ``finished`` is set when the reader ends: stopped, failed (:attr:`error`) or at the end
    of a recording; an event in progress is published then too."""

    def __init__(self, stream: InputStream, sample_rate: int, capture: Capture, *,
                 on_close: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.time, max_waiting: int = 64,
                 block_when_full: bool = False, loan: MicrophoneLoan | None = None,
                 reopen: Callable[[], tuple[InputStream, Callable[[], Any] | None]] | None = None
                 ) -> None:
        self.stream = stream
        # Lent to `node enroll` when it asks (node/loan.py), then opened again with ``reopen``.
        self._loan = loan if reopen is not None else None
        self._reopen = reopen
        self._open = True
        self._events_before = 0  # cut before the stream was last opened again
        self.sample_rate = sample_rate
        self.capture = capture
        self.clips: queue.Queue[Clip] = queue.Queue(maxsize=max_waiting)
        self.dropped = 0  # events that found the queue full (publisher stalled)
        self.error: str | None = None
        self.finished = threading.Event()
        self._events: SoundEvents | None = None
        self._on_close = on_close
        self._clock = clock
        # A recording can wait for its publisher; a live microphone cannot.
        self._block_when_full = block_when_full
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="microphone", daemon=True)

    @property
    def events(self) -> int:
        """Sound events (and periodic clips) cut from the stream so far."""
        return self._events_before + (self._events.events if self._events is not None else 0)

    def start(self) -> Microphone:
        self._thread.start()
        return self

    def _run(self) -> None:
        block = max(1, round(BLOCK_SECONDS * self.sample_rate))
        events = self._events = SoundEvents(self.capture, self.sample_rate, self._clock())
        try:
            while not self._stop.is_set():
                if self._loan is not None and self._loan.wanted_path.exists() \
                        and self._loan.requested_by() is not None:
                    for clip in events.flush():  # the event in progress goes out first
                        self._queue(clip)
                    if not self._lend():
                        break
                    self._events_before += events.events
                    events = self._events = SoundEvents(self.capture, self.sample_rate,
                                                        self._clock())
                    continue
                try:
                    data = self.stream.read(block, exception_on_overflow=False)
                except EOFError:
                    break
                except OSError as exc:
                    self.error = f"microphone stream failed: {exc}"
                    log.error("%s; audio stops", self.error)
                    break
                for clip in events.feed(np.frombuffer(data, dtype="<i2")):
                    self._queue(clip)
            for clip in events.flush():
                self._queue(clip)
        finally:
            self.finished.set()

    def _queue(self, clip: Clip) -> None:
        while self._block_when_full and not self._stop.is_set():
            try:
                self.clips.put(clip, timeout=0.1)
                return
            except queue.Full:
                continue
        try:
            self.clips.put_nowait(clip)
        except queue.Full:
            self.dropped += 1

    def _lend(self) -> bool:
        """Close the stream for the process that asked, wait until it is done and open the
        stream again; False when stopped meanwhile or the stream cannot be opened again."""
        assert self._loan is not None and self._reopen is not None
        borrower = self._loan.borrower_text()
        self._close()
        self._loan.release()
        log.info("microphone lent %s: sound events pause", borrower)
        while not self._stop.is_set() and self._loan.requested_by() is not None:
            self._stop.wait(POLL_S)
        if not self._loan.hold(self._stop.is_set):
            return False
        try:
            self.stream, self._on_close = self._reopen()
        except SensorError as error:
            self.error = f"microphone not opened again after lending it: {error}"
            log.error("%s; audio stops", self.error)
            return False
        self._open = True
        log.info("microphone back: sound events resume")
        return True

    def _close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self.stream.stop_stream()
            self.stream.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * BLOCK_SECONDS + 1)
        try:
            self._close()
        finally:
            if self._loan is not None:
                self._loan.release()
