"""The node's sources: the DHT11 through Adafruit's real decoder, the microphone's clip cutting."""

from __future__ import annotations

import numpy as np
import pytest

from node.dht11 import MIN_READ_INTERVAL_S, Dht11Sensor
from node.hardware import SensorReadError
from node.microphone import Capture, Clip, Microphone, RecordedStream, SoundEvents, level_dbfs
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


def run_microphone(samples: np.ndarray, capture: Capture,
                   stream: object | None = None) -> tuple[Microphone, object]:
    stream = stream or FakeInputStream(samples)
    microphone = Microphone(stream, RATE, capture, clock=lambda: 1_000.0).start()  # type: ignore[arg-type]
    assert microphone.finished.wait(5)
    microphone.stop()
    return microphone, stream


def drain(microphone: Microphone) -> list[Clip]:
    clips = []
    while not microphone.clips.empty():
        clips.append(microphone.clips.get_nowait())
    return clips


def seconds(clip: Clip) -> tuple[float, float]:
    start = round(clip.start_time - 1_000.0, 3)
    return start, round(start + len(clip.samples) / RATE, 3)


def test_an_event_runs_from_the_pre_roll_to_the_hangover_with_its_start_time() -> None:
    samples = audio(3.5, loud=(1.0, 1.5))
    microphone, stream = run_microphone(samples, Capture(gate_dbfs=-40.0))
    [clip] = drain(microphone)
    assert seconds(clip) == (0.7, 1.8)  # 0.3 s before the rise, 0.3 s after the fall
    np.testing.assert_array_equal(clip.samples, samples[int(0.7 * RATE):int(1.8 * RATE)])
    assert clip.level_dbfs == pytest.approx(-16.7, abs=0.3)  # 0.5 s of a -13 dB tone in 1.1 s
    assert microphone.events == 1
    assert stream.closed and not any(stream.overflow_flags)  # overflow never stops the stream


def test_a_word_across_a_second_boundary_is_not_cut() -> None:
    # Consecutive one-second slices split this sound at 1.0 s; an event holds all of it.
    microphone, _ = run_microphone(audio(4.0, loud=(0.7, 1.4)), Capture(gate_dbfs=-40.0))
    [clip] = drain(microphone)
    assert seconds(clip) == (0.4, 1.7)


def test_a_short_click_still_gives_one_second_for_the_model() -> None:
    microphone, _ = run_microphone(audio(3.0, loud=(1.0, 1.1)), Capture(gate_dbfs=-40.0))
    [clip] = drain(microphone)
    assert seconds(clip) == (0.7, 1.7)


def test_a_long_sound_is_cut_into_events_that_overlap_by_a_whole_window() -> None:
    samples = audio(8.0, loud=(0.5, 7.0))
    microphone, _ = run_microphone(samples, Capture(gate_dbfs=-40.0, max_seconds=3.0))
    clips = drain(microphone)
    assert [seconds(c) for c in clips] == [(0.2, 3.2), (2.2, 5.2), (4.2, 7.2), (6.2, 7.3)]
    for clip in clips:
        start = int(round(clip.start_time - 1_000.0, 3) * RATE)
        np.testing.assert_array_equal(clip.samples, samples[start:start + len(clip.samples)])
    # Any second of the sound lies wholly inside one event: no word is ever split.
    for second in np.arange(0.5, 6.0, 0.1):
        assert any(a <= second and second + 1.0 <= b for a, b in map(seconds, clips))


def test_two_words_far_apart_are_two_events_and_quiet_is_not_published() -> None:
    samples = audio(6.0, loud=(1.0, 1.6))
    samples[4 * RATE:int(4.5 * RATE)] = audio(6.0, loud=(4.0, 4.5))[4 * RATE:int(4.5 * RATE)]
    microphone, _ = run_microphone(samples, Capture(gate_dbfs=-40.0))
    assert [seconds(c) for c in drain(microphone)] == [(0.7, 1.9), (3.7, 4.8)]


def test_a_recording_that_ends_mid_sound_publishes_the_event_in_progress() -> None:
    samples = audio(2.0, loud=(1.5, 2.0))
    stream = RecordedStream(samples, RATE, speed=0)
    microphone, _ = run_microphone(samples, Capture(gate_dbfs=-40.0), stream)
    [clip] = drain(microphone)
    assert seconds(clip) == (1.2, 2.0) and microphone.error is None


def test_every_n_seconds_publishes_quiet_clips_too() -> None:
    microphone, _ = run_microphone(audio(5.0), Capture(gate_dbfs=0.0, every_s=2.0))
    assert [seconds(c) for c in drain(microphone)] == [(0.0, 1.0), (2.0, 3.0), (4.0, 5.0)]


def test_a_failing_stream_is_reported_and_ends_the_reader() -> None:
    microphone, _ = run_microphone(np.zeros(0, dtype=np.int16), Capture(-40.0))
    assert microphone.error is not None and "Input overflowed" in microphone.error
    assert microphone.events == 0


def test_a_capture_that_cannot_overlap_long_sounds_is_refused() -> None:
    with pytest.raises(ValueError, match="max_seconds >= 2 x min_seconds"):
        Capture(min_seconds=1.0, max_seconds=1.5)


def test_a_recorded_stream_is_paced_at_its_speed() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    stream = RecordedStream(np.zeros(RATE, np.int16), RATE, speed=2.0, clock=lambda: now[0],
                            sleep=sleep)
    while True:
        try:
            stream.read(RATE // 10)
        except EOFError:
            break
    assert now[0] == pytest.approx(0.5)  # one second of audio at twice real time


def test_level_of_a_full_scale_sine_is_minus_three_dbfs() -> None:
    sine = (32767 * np.sin(np.arange(RATE) * 2 * np.pi * 1000 / RATE)).astype(np.int16)
    assert level_dbfs(sine) == pytest.approx(-3.01, abs=0.01)
    assert level_dbfs(np.zeros(100, dtype=np.int16)) == -np.inf


def test_one_huge_block_is_cut_into_the_same_events_as_small_ones() -> None:
    samples = audio(8.0, loud=(0.5, 7.0))
    small = SoundEvents(Capture(gate_dbfs=-40.0), RATE, 0.0)
    cut_small = [c for start in range(0, len(samples), 1600)
                 for c in small.feed(samples[start:start + 1600])] + small.flush()
    huge = SoundEvents(Capture(gate_dbfs=-40.0), RATE, 0.0)
    cut_huge = huge.feed(samples[:1600]) + huge.feed(samples[1600:]) + huge.flush()
    assert len(cut_huge) >= 3
    assert all(len(c.samples) <= 3 * RATE for c in cut_huge)
    # every second of the sound is whole in one event either way
    for clips in (cut_small, cut_huge):
        spans = [(c.start_time, c.start_time + len(c.samples) / RATE) for c in clips]
        for second in np.arange(0.5, 6.0, 0.1):
            assert any(a <= second + 1e-9 and second + 1.0 <= b + 1e-9 for a, b in spans)
