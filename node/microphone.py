"""One-second clips from a microphone, through PyAudio.

A reader thread pulls the input stream without pause and cuts it into consecutive clips, so
no sample is lost between clips however long publishing takes; :class:`ClipGate` decides
which clips go out: those louder than the gate (RMS in dBFS), and optionally one every N
seconds regardless. Clip times come from the sample count since the stream opened, so they
do not drift with scheduling. PyAudio is imported only when a microphone is configured.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .hardware import SensorError, import_driver

log = logging.getLogger("node.microphone")

BLOCK_SECONDS = 0.1  # read granularity: short enough to stop promptly
FULL_SCALE = 32768.0


class InputStream(Protocol):
    """The part of ``pyaudio.Stream`` used here."""

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


class ClipGate:
    """Which clips to publish: louder than ``gate_dbfs``, or ``every_s`` since the last one."""

    def __init__(self, gate_dbfs: float, every_s: float = 0.0) -> None:
        self.gate_dbfs = gate_dbfs
        self.every_s = every_s
        self._last_published: float | None = None

    def admit(self, clip: Clip) -> bool:
        due = (self.every_s > 0 and (self._last_published is None
                                     or clip.start_time - self._last_published
                                     >= self.every_s - 1e-6))
        if clip.level_dbfs > self.gate_dbfs or due:
            self._last_published = clip.start_time
            return True
        return False


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
    """Reads ``stream`` continuously in a thread; admitted clips wait in :attr:`clips`."""

    def __init__(self, stream: InputStream, sample_rate: int, clip_seconds: float,
                 gate: ClipGate, *, on_close: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.time, max_waiting: int = 64) -> None:
        self.stream = stream
        self.sample_rate = sample_rate
        self.clip_samples = round(clip_seconds * sample_rate)
        self.gate = gate
        self.clips: queue.Queue[Clip] = queue.Queue(maxsize=max_waiting)
        self.captured = 0  # clips cut from the stream
        self.dropped = 0  # admitted clips that found the queue full (publisher stalled)
        self.error: str | None = None
        self._on_close = on_close
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="microphone", daemon=True)

    def start(self) -> Microphone:
        self._thread.start()
        return self

    def _run(self) -> None:
        block = max(1, round(BLOCK_SECONDS * self.sample_rate))
        pending: list[np.ndarray] = []
        pending_samples = 0
        started = self._clock()
        total = 0  # samples read since the stream opened
        while not self._stop.is_set():
            try:
                data = self.stream.read(block, exception_on_overflow=False)
            except (OSError, EOFError) as exc:
                self.error = f"microphone stream failed: {exc}"
                log.error("%s; audio stops", self.error)
                return
            chunk = np.frombuffer(data, dtype="<i2")
            pending.append(chunk)
            pending_samples += chunk.size
            while pending_samples >= self.clip_samples:
                joined = np.concatenate(pending)
                samples = joined[:self.clip_samples].astype(np.int16)
                rest = joined[self.clip_samples:]
                pending, pending_samples = [rest], rest.size
                clip = Clip(started + total / self.sample_rate, self.sample_rate, samples,
                            level_dbfs(samples))
                total += self.clip_samples
                self.captured += 1
                if self.gate.admit(clip):
                    try:
                        self.clips.put_nowait(clip)
                    except queue.Full:
                        self.dropped += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * BLOCK_SECONDS + 1)
        try:
            self.stream.stop_stream()
            self.stream.close()
        finally:
            if self._on_close is not None:
                self._on_close()
