"""Simulated rooms and microphones (training/rooms.py): keyword augmentation and room streams."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

pytest.importorskip("pyroomacoustics")

from training.rooms import (
    DISTANCE_M,
    RT60_S,
    Microphone,
    RoomAugment,
    at_peak_levels,
    clips_in_rooms,
    reverberate,
    simulated_rooms,
    stream_in_rooms,
)

RATE = 8000


@pytest.fixture(scope="module")
def rooms() -> list:
    return simulated_rooms(12, RATE, seed=3)


def test_rooms_are_in_range_and_the_same_for_the_same_seed(rooms: list) -> None:
    assert all(RT60_S[0] <= r.rt60_s <= RT60_S[1] for r in rooms)
    assert all(DISTANCE_M[0] <= r.distance_m <= DISTANCE_M[1] for r in rooms)
    again = simulated_rooms(3, RATE, seed=3)
    assert all(np.array_equal(a.impulse, b.impulse) for a, b in zip(again, rooms, strict=False))
    other = simulated_rooms(3, RATE, seed=4)
    assert not np.array_equal(other[0].impulse, rooms[0].impulse)


def test_an_impulse_starts_at_the_direct_sound(rooms: list) -> None:
    for room in rooms:
        assert int(np.abs(room.impulse).argmax()) <= 0.003 * RATE
        assert len(room.impulse) <= RATE
        assert np.sum(room.impulse ** 2) == pytest.approx(1.0, rel=1e-4)


def test_a_click_in_a_room_rings_on_at_the_same_level(rooms: list) -> None:
    clicks = np.zeros((4, RATE), dtype=np.float32)
    clicks[:, 1000] = 1.0
    wet = reverberate(clicks, rooms, np.random.default_rng(0))
    assert wet.shape == clicks.shape and wet.dtype == np.float32
    assert int(np.abs(wet).argmax(axis=1).max()) <= 1000 + 0.003 * RATE  # not moved
    late = np.sum(wet[:, 1000 + RATE // 20:] ** 2, axis=1) / np.sum(wet ** 2, axis=1)
    # Echo 50 ms on and later: little for a talker close by in a dead room, a lot far off.
    assert np.all(late > 1e-3) and late.max() > 0.1
    rms = np.sqrt(np.mean(wet ** 2, axis=1))
    assert np.allclose(rms, np.sqrt(np.mean(clicks ** 2, axis=1)), rtol=1e-3)


def test_a_cheap_microphone_cuts_the_lows_and_keeps_the_level() -> None:
    microphone = Microphone(high_pass_hz=300.0, low_pass_hz=3000.0, low_pass_order=4,
                            tilt_db_per_octave=0.0)
    gains = microphone.gains(4001, RATE)  # 1 Hz a bin
    assert gains[50] < 0.05 and gains[1000] > 0.9 and gains[3900] < 0.4
    assert gains[3000] / gains[1000] == pytest.approx(2 ** -0.5, rel=0.05)  # -3 dB at the cutoff
    assert gains[300] / gains[1000] == pytest.approx(2 ** -0.5, rel=0.05)
    rng = np.random.default_rng(0)
    time = np.arange(RATE) / RATE
    hum, voice = np.sin(2 * np.pi * 50 * time), np.sin(2 * np.pi * 1000 * time)
    heard = microphone.hear((hum + voice).astype(np.float32), RATE)
    spectrum = np.abs(np.fft.rfft(heard))
    assert spectrum[50] < 0.05 * spectrum[1000]
    assert np.sqrt(np.mean(heard ** 2)) == pytest.approx(1.0, rel=1e-3)
    assert Microphone.random(rng) != Microphone.random(rng)


def test_peak_levels_go_from_whispered_to_clipped() -> None:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((200, 800)) * 0.1).astype(np.float32)
    out = at_peak_levels(audio, (-40.0, 6.0), rng)
    peaks = 20 * np.log10(np.abs(out).max(axis=1))
    assert peaks.min() < -30 and np.abs(out).max() == pytest.approx(1.0)
    assert np.mean(np.abs(out) >= 1.0) > 0  # some rows clipped


def test_no_room_settings_change_nothing_and_room_settings_change_clips() -> None:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((20, RATE)) * 0.1).astype(np.float32)
    plain = RoomAugment({}, RATE, seed=1)
    assert np.array_equal(plain.heard(plain.said_in_rooms(audio, rng), rng), audio)
    rooms = RoomAugment({"room_probability": 1.0, "rooms": 4, "microphone_probability": 1.0},
                        RATE, seed=1)
    out = rooms.heard(rooms.said_in_rooms(audio, rng), rng)
    assert out.shape == audio.shape and not np.allclose(out, audio, atol=1e-3)


def test_augment_puts_a_recipes_clips_in_rooms() -> None:
    from training.kws import augment

    rng = np.random.default_rng(0)
    audio = np.zeros((8, RATE), dtype=np.float32)
    audio[:, 4000] = 0.5
    settings = {"room_probability": 1.0, "rooms": 4}
    out = augment(audio, settings, rng, RATE, rooms=RoomAugment(settings, RATE, seed=1))
    assert np.all(np.count_nonzero(np.abs(out) > 1e-4, axis=1) > 100)  # rings on


def test_a_stream_in_rooms_keeps_its_words_where_they_were() -> None:
    from training.stream import RATE as STREAM_RATE
    from training.stream import build_stream

    rng = np.random.default_rng(0)
    word = (rng.standard_normal(STREAM_RATE) * 3000).astype(np.int16)
    noise = [("hum", (rng.standard_normal(STREAM_RATE * 4) * 0.01).astype(np.float32))]
    stream = build_stream([("yes", STREAM_RATE, word)] * 3, [(STREAM_RATE, word)], noise,
                          seed=1, noise_bursts_per_keyword=1.0)
    heard = stream_in_rooms(stream, seed=9, rooms=3)
    assert [p.start for p in heard.placed] == [p.start for p in stream.placed]
    assert [p.label for p in heard.placed] == [p.label for p in stream.placed]
    for before, after in zip(stream.placed, heard.placed, strict=True):
        if before.label == "noise":  # recorded in a room already: only the microphone
            assert len(after.audio) == len(before.audio)
        else:  # with its echo
            assert len(after.audio) > len(before.audio)
    assert heard.render(0, heard.length).shape == (heard.length,)


def test_clips_in_rooms_keep_rate_and_length() -> None:
    clip = (np.random.default_rng(0).standard_normal(16000) * 3000).astype(np.int16)
    (rate, out), = clips_in_rooms([(16000, clip)], seed=2, rooms=2)
    assert rate == 16000 and out.shape == (16000,) and np.abs(out).max() <= 1.0


def test_fold_augmentation_settings_are_toml_values() -> None:
    from training.speakers import recipe_setting

    assert recipe_setting("room_probability=0.5") == ("room_probability", 0.5)
    assert recipe_setting("peak_dbfs=[-35, 0]") == ("peak_dbfs", [-35, 0])
    for bad in ("room_probability", "=1", "rooms=[1,"):
        with pytest.raises(argparse.ArgumentTypeError):
            recipe_setting(bad)
