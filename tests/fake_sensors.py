"""Sensor stand-ins that keep the real code paths: Adafruit's DHT11 driver decoding
synthesized pulse trains, and an object with PyAudio's stream interface."""

from __future__ import annotations

import array
from collections import deque
from collections.abc import Iterable

import numpy as np

LOW_US, ZERO_US, ONE_US = 50, 26, 70  # DHT11 timing: 50 µs low, then 26-28 µs (0) or 70 µs (1)


def dht11_frame(humidity: int, temperature: int, tenths: int = 0,
                checksum: int | None = None) -> list[int]:
    """The 81 pulse widths (µs) the DHT11 sends for these values, as the driver samples them."""
    data = [humidity, 0, temperature, tenths]
    data.append(sum(data) & 0xFF if checksum is None else checksum)
    pulses = []
    for byte in data:
        for bit in range(7, -1, -1):
            pulses += [LOW_US, ONE_US if byte >> bit & 1 else ZERO_US]
    return [*pulses, LOW_US]


def make_dht11(frames: Iterable[list[int]]):  # type: ignore[no-untyped-def]
    """An ``adafruit_dht.DHT11`` whose GPIO sampling returns ``frames`` one per measurement."""
    import adafruit_dht

    class SynthesizedDht11(adafruit_dht.DHT11):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(None, use_pulseio=False)
            self.frames = deque(frames)

        def _get_pulses_bitbang(self) -> array.array:  # type: ignore[type-arg]
            return array.array("H", self.frames.popleft())

        def forget_last_read(self) -> None:
            """What 2 s of waiting does: the driver measures again instead of caching."""
            self._last_called = 0

    return SynthesizedDht11()


class FakeInputStream:
    """PyAudio's ``Stream.read`` over a prepared int16 array; raises OSError when exhausted."""

    def __init__(self, samples: np.ndarray) -> None:
        self.data = samples.astype("<i2").tobytes()
        self.position = 0
        self.closed = False
        self.overflow_flags: list[bool] = []

    def read(self, num_frames: int, exception_on_overflow: bool = True) -> bytes:
        self.overflow_flags.append(exception_on_overflow)
        chunk = self.data[self.position:self.position + 2 * num_frames]
        self.position += len(chunk)
        if not chunk:
            raise OSError("[Errno -9981] Input overflowed (end of the fake stream)")
        return chunk

    def stop_stream(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
