"""The node's sources: the DHT11 through Adafruit's real decoder, the microphone's clip cutting."""

from __future__ import annotations

import time

import numpy as np
import pytest

from node.dht11 import MIN_READ_INTERVAL_S, Dht11Sensor
from node.hardware import SensorReadError
from node.microphone import ClipGate, Microphone, level_dbfs
from tests.fake_sensors import FakeInputStream, dht11_frame, make_dht11

pytest.importorskip("adafruit_dht", reason="needs adafruit-circuitpython-dht (the dht extra)")

RATE = 16_000


def sensor_for(*frames: list[int], retries: int = 3) -> tuple[Dht11Sensor, list[float]]:
    device = make_dht11(frames)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        device.forget_last_read()

    return Dht11Sensor(device, retries=retries, sleep=sleep), slept


def test_a_good_frame_decodes_to_temperature_and_humidity() -> None:
    sensor, slept = sensor_for(dht11_frame(humidity=41, temperature=23, tenths=4))
    assert sensor.read() == (23.4, 41.0)
    assert slept == [] and sensor.stats.readings == 1


def test_checksum_failure_is_retried_after_the_drivers_interval() -> None:
    bad = dht11_frame(humidity=41, temperature=23, checksum=0x12)
    sensor, slept = sensor_for(bad, dht11_frame(humidity=55, temperature=19))
    assert sensor.read() == (19.0, 55.0)
    assert slept == [MIN_READ_INTERVAL_S] and MIN_READ_INTERVAL_S > 2.0
    assert sensor.stats.failures == {"checksum did not validate": 1}


def test_timeouts_on_every_retry_miss_the_period_without_raising_anything_else() -> None:
    silent = [80, 80, 80]  # the sensor did not answer: a few edges only
    partial = dht11_frame(humidity=41, temperature=23)[:50]
    sensor, _ = sensor_for(silent, partial, silent)
    with pytest.raises(SensorReadError, match="3 reads failed"):
        sensor.read()
    assert sensor.stats.failures == {"dht sensor not found, check wiring": 2,
                                     "a full buffer was not returned": 1}
    assert sensor.stats.missed_periods == 1 and sensor.stats.readings == 0


def test_physically_impossible_values_are_rejected() -> None:
    too_hot = dht11_frame(humidity=41, temperature=99)  # passes the checksum
    sensor, _ = sensor_for(too_hot, dht11_frame(humidity=41, temperature=21))
    assert sensor.read() == (21.0, 41.0)
    assert sensor.stats.failures == {"implausible value": 1}


def test_driver_and_gpio_errors_become_read_errors() -> None:
    class Broken:
        @property
        def temperature(self) -> float:
            raise OSError(13, "Permission denied")

        humidity = 0.0

        def exit(self) -> None:
            raise RuntimeError("already released")

    sensor = Dht11Sensor(Broken(), retries=1, sleep=lambda _: None)
    with pytest.raises(SensorReadError, match="GPIO: Permission denied"):
        sensor.read()
    sensor.close()  # a failing release is logged, not raised


# --- microphone ----------------------------------------------------------------------------------
def audio(seconds: float, loud: tuple[float, float] | None = None) -> np.ndarray:
    rng = np.random.default_rng(0)
    samples = rng.normal(0, 20, int(seconds * RATE))  # about -64 dBFS of hiss
    if loud:
        start, end = (int(t * RATE) for t in loud)
        samples[start:end] += 10_000 * np.sin(np.arange(end - start) * 2 * np.pi * 440 / RATE)
    return samples.round().astype(np.int16)


def run_microphone(samples: np.ndarray, gate: ClipGate) -> tuple[Microphone, FakeInputStream]:
    stream = FakeInputStream(samples)
    microphone = Microphone(stream, RATE, 1.0, gate, clock=lambda: 1_000.0).start()
    deadline = time.monotonic() + 5
    while microphone.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    microphone.stop()
    return microphone, stream


def drain(microphone: Microphone) -> list:  # type: ignore[type-arg]
    clips = []
    while not microphone.clips.empty():
        clips.append(microphone.clips.get_nowait())
    return clips


def test_the_energy_gate_publishes_only_the_loud_second_with_its_start_time() -> None:
    samples = audio(3.5, loud=(1.0, 2.0))
    microphone, stream = run_microphone(samples, ClipGate(gate_dbfs=-40.0))
    clips = drain(microphone)
    assert [clip.start_time for clip in clips] == [1_001.0]
    np.testing.assert_array_equal(clips[0].samples, samples[RATE:2 * RATE])
    assert clips[0].level_dbfs == pytest.approx(-13.3, abs=0.5)
    assert microphone.captured == 3  # the half second left over is not a clip
    assert stream.closed and not any(stream.overflow_flags)  # overflow never stops the stream


def test_an_open_gate_yields_every_sample_in_consecutive_clips() -> None:
    samples = audio(3.0)
    microphone, _ = run_microphone(samples, ClipGate(gate_dbfs=-120.0))
    clips = drain(microphone)
    assert [clip.start_time for clip in clips] == [1_000.0, 1_001.0, 1_002.0]
    np.testing.assert_array_equal(np.concatenate([c.samples for c in clips]), samples)


def test_every_n_seconds_publishes_quiet_clips_too() -> None:
    microphone, _ = run_microphone(audio(5.0), ClipGate(gate_dbfs=0.0, every_s=2.0))
    assert [clip.start_time for clip in drain(microphone)] == [1_000.0, 1_002.0, 1_004.0]


def test_a_failing_stream_is_reported_and_ends_the_reader() -> None:
    microphone, _ = run_microphone(np.zeros(0, dtype=np.int16), ClipGate(-40.0))
    assert microphone.error is not None and "Input overflowed" in microphone.error
    assert microphone.captured == 0


def test_level_of_a_full_scale_sine_is_minus_three_dbfs() -> None:
    sine = (32767 * np.sin(np.arange(RATE) * 2 * np.pi * 1000 / RATE)).astype(np.int16)
    assert level_dbfs(sine) == pytest.approx(-3.01, abs=0.01)
    assert level_dbfs(np.zeros(100, dtype=np.int16)) == -np.inf
