"""Rooms and microphones the recordings never had: simulated reverberation and a cheap
microphone's response, for keyword augmentation and for streams in rooms nobody trained on.

Speech Commands clips were recorded close to laptop and phone microphones: almost dry, full
band. A node's microphone hears a kitchen: the word from 0.3-4 m away, with its echoes, through
a USB microphone that cuts the lows and highs and tilts what is left. :func:`simulated_rooms`
makes image-source rooms (pyroomacoustics: shoebox rooms 3x3x2.4 to 8x6x3.2 m, RT60
0.15-0.9 s as measured on the impulse response, the talker 0.3-4 m from the microphone);
:func:`reverberate` puts clips into them, :func:`through_microphones` gives them a random
microphone's response (high-pass 80-400 Hz, low-pass 2.5-7 kHz, a tilt of -3..+3 dB an
octave around 1 kHz). Both are numpy after the rooms are made; pyroomacoustics is needed
only to make them (the training extra).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .stream import Stream

log = logging.getLogger(__name__)

RT60_S = (0.15, 0.9)
DISTANCE_M = (0.3, 4.0)
ROOM_M = ((3.0, 3.0, 2.4), (8.0, 6.0, 3.2))
WALL_CLEARANCE_M = 0.3
MAX_ORDER = 40  # image-source reflections: enough for RT60 up to ~0.9 s in these rooms
MAX_IMPULSE_S = 1.0  # a clip is a second: a longer tail falls outside it anyway
HIGH_PASS_HZ = (80.0, 400.0)
LOW_PASS_HZ = (2500.0, 7000.0)
TILT_DB_PER_OCTAVE = (-3.0, 3.0)
CHUNK = 256  # clips convolved at once


@dataclass(frozen=True)
class Room:
    """One talker position in one room: the impulse response from mouth to microphone,
    starting at the direct sound."""

    impulse: np.ndarray  # float32
    rt60_s: float  # measured on the impulse response
    distance_m: float


def simulated_rooms(count: int, rate: int, seed: int) -> list[Room]:
    """``count`` rooms (each its own size, absorption, microphone and talker position), the
    same for the same seed."""
    try:
        import pyroomacoustics as pra
    except ImportError:
        raise RuntimeError("room simulation needs pyroomacoustics: "
                           "pip install -e '.[training]'") from None
    rng = np.random.default_rng(seed)
    rooms: list[Room] = []
    low, high = (np.array(corner) for corner in ROOM_M)
    while len(rooms) < count:
        size = rng.uniform(low, high)
        target = rng.uniform(*RT60_S)
        absorption, order = pra.inverse_sabine(target, size)
        room = pra.ShoeBox(size, fs=rate, materials=pra.Material(absorption),
                           max_order=min(order, MAX_ORDER))
        microphone = rng.uniform(WALL_CLEARANCE_M, size - WALL_CLEARANCE_M)
        microphone[2] = rng.uniform(0.7, min(1.8, size[2] - WALL_CLEARANCE_M))  # a shelf, a desk
        distance = rng.uniform(*DISTANCE_M)
        talker = _talker(rng, microphone, distance, size)
        if talker is None:
            continue  # this room is too small for that distance: draw another
        room.add_microphone(microphone)
        room.add_source(talker)
        room.compute_rir()
        impulse = np.asarray(room.rir[0][0], dtype=np.float64)
        measured = float(pra.experimental.measure_rt60(impulse, fs=rate))
        if not RT60_S[0] <= measured <= RT60_S[1]:
            continue  # the image-source room missed its target: keep only what is in range
        # Start just before the direct sound (its fractional-delay filter rings a little
        # ahead of the peak), so a reverberated word stays where it was in its second.
        start = max(0, int(np.abs(impulse).argmax()) - int(0.002 * rate))
        impulse = impulse[start:start + int(MAX_IMPULSE_S * rate)]
        rooms.append(Room((impulse / np.sqrt(np.sum(impulse ** 2))).astype(np.float32),
                          measured, float(distance)))
    return rooms


def _talker(rng: np.random.Generator, microphone: np.ndarray, distance: float,
            size: np.ndarray) -> np.ndarray | None:
    for _ in range(50):
        direction = rng.normal(size=3)
        direction[2] *= 0.3  # mouths are at about the microphone's height, give or take
        position = microphone + direction / np.linalg.norm(direction) * distance
        if np.all(position > WALL_CLEARANCE_M) and np.all(position < size - WALL_CLEARANCE_M):
            return position
    return None


def _rms(audio: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.square(audio, dtype=np.float64), axis=-1, keepdims=True) + 1e-12)


def reverberate(audio: np.ndarray, rooms: list[Room], rng: np.random.Generator
                ) -> np.ndarray:
    """Each row of ``audio`` [N, L] (float) said in a random one of ``rooms``, cut to its
    length and brought back to its own level (the level is another augmentation's job)."""
    if not len(audio):
        return audio.copy()
    length = audio.shape[1]
    longest = max(len(room.impulse) for room in rooms)
    size = 1 << int(np.ceil(np.log2(length + longest)))
    chosen = rng.integers(0, len(rooms), len(audio))
    impulses = np.zeros((len(rooms), size), dtype=np.float32)
    for index, room in enumerate(rooms):
        impulses[index, :len(room.impulse)] = room.impulse
    spectra = np.fft.rfft(impulses, axis=1).astype(np.complex64)
    wet = np.empty_like(audio)
    for start in range(0, len(audio), CHUNK):  # a few MB of spectra at a time
        rows = slice(start, start + CHUNK)
        wet[rows] = np.fft.irfft(np.fft.rfft(audio[rows], size, axis=1) * spectra[chosen[rows]],
                                 size, axis=1)[:, :length]
    return (wet * (_rms(audio) / _rms(wet))).astype(audio.dtype)


@dataclass(frozen=True)
class Microphone:
    """A cheap microphone's magnitude response: a high-pass, a low-pass and a tilt."""

    high_pass_hz: float
    low_pass_hz: float
    low_pass_order: int
    tilt_db_per_octave: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> Microphone:
        return cls(float(rng.uniform(*HIGH_PASS_HZ)), float(rng.uniform(*LOW_PASS_HZ)),
                   int(rng.integers(1, 3)) * 2, float(rng.uniform(*TILT_DB_PER_OCTAVE)))

    def gains(self, bins: int, rate: int) -> np.ndarray:
        """Its response over an rfft's ``bins`` at ``rate``, 1 at its loudest."""
        hz = np.linspace(0.0, rate / 2, bins)
        ratio = hz / self.high_pass_hz
        low_pass = min(self.low_pass_hz, 0.9 * rate / 2)
        gains = (ratio ** 2 / np.sqrt(1 + ratio ** 4)) \
            / np.sqrt(1 + (hz / low_pass) ** (2 * self.low_pass_order)) \
            * 10 ** (self.tilt_db_per_octave * np.log2(np.maximum(hz, 20.0) / 1000.0) / 20)
        return (gains / gains.max()).astype(np.float32)

    def hear(self, audio: np.ndarray, rate: int) -> np.ndarray:
        """``audio`` (one clip, or rows of clips) through this microphone, at its own level."""
        spectra = np.fft.rfft(audio, axis=-1)
        heard = np.fft.irfft(spectra * self.gains(spectra.shape[-1], rate), audio.shape[-1],
                             axis=-1)
        return (heard * (_rms(audio) / _rms(heard))).astype(audio.dtype)


def through_microphones(audio: np.ndarray, rate: int, rng: np.random.Generator
                        ) -> np.ndarray:
    """Each row of ``audio`` [N, L] through a random microphone of its own."""
    out = np.empty_like(audio)
    for index in range(len(audio)):
        out[index] = Microphone.random(rng).hear(audio[index], rate)
    return out


def at_peak_levels(audio: np.ndarray, peak_dbfs: tuple[float, float],
                   rng: np.random.Generator) -> np.ndarray:
    """Each row scaled to a random peak level (dBFS) and clipped at full scale: whispered to
    clipped."""
    peaks = np.max(np.abs(audio), axis=1, keepdims=True) + 1e-9
    wanted = 10 ** (rng.uniform(*peak_dbfs, (len(audio), 1)) / 20)
    return np.clip(audio * (wanted / peaks), -1.0, 1.0).astype(audio.dtype)


class RoomAugment:
    """The room part of a recipe's ``augment`` table: ``room_probability`` (the share of
    clips said in a simulated room), ``rooms`` (how many rooms to draw them from),
    ``microphone_probability`` and ``peak_dbfs`` ([low, high]); nothing when absent."""

    def __init__(self, settings: dict[str, Any], rate: int, seed: int) -> None:
        self.room_probability = float(settings.get("room_probability", 0.0))
        self.microphone_probability = float(settings.get("microphone_probability", 0.0))
        peak = settings.get("peak_dbfs")
        self.peak_dbfs = (float(peak[0]), float(peak[1])) if peak else None
        self.rate = rate
        self.rooms: list[Room] = []
        if self.room_probability:
            count = int(settings.get("rooms", 300))
            self.rooms = simulated_rooms(count, rate, seed)
            log.info("%d simulated rooms, RT60 %.2f-%.2f s (median %.2f)", count,
                     min(r.rt60_s for r in self.rooms), max(r.rt60_s for r in self.rooms),
                     float(np.median([r.rt60_s for r in self.rooms])))

    def said_in_rooms(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Reverberation, before any noise is added (the noise is in the room, not the mouth)."""
        if not self.rooms:
            return audio
        out = audio.copy()
        chosen = np.flatnonzero(rng.random(len(out)) < self.room_probability)
        out[chosen] = reverberate(out[chosen], self.rooms, rng)
        return out

    def heard(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The microphone and the level, after the noise (the microphone hears both)."""
        out = audio
        if self.microphone_probability:
            out = out.copy()
            chosen = np.flatnonzero(rng.random(len(out)) < self.microphone_probability)
            out[chosen] = through_microphones(out[chosen], self.rate, rng)
        if self.peak_dbfs is not None:
            out = at_peak_levels(out, self.peak_dbfs, rng)
        return out


ROOMS_PER_STREAM = 40


def stream_in_rooms(stream: Stream, seed: int, rooms: int = ROOMS_PER_STREAM) -> Stream:
    """The same stream as a node in a room hears it: every spoken item (keywords, other
    words, phrases) said from a talker position of its own in one of ``rooms`` simulated rooms
    drawn with ``seed`` (give it one the training never used), with its echo; the noise
    bursts and the room tone as recorded (they were recorded in rooms); everything through
    one random microphone (one node has one)."""
    from dataclasses import replace

    from .stream import Placed

    rng = np.random.default_rng(seed)
    drawn = simulated_rooms(rooms, stream.rate, seed)
    microphone = Microphone.random(rng)
    placed = []
    for item in stream.placed:
        audio = item.audio
        if item.label != "noise":
            room = drawn[int(rng.integers(len(drawn)))]
            tail = np.zeros(len(room.impulse) - 1, dtype=audio.dtype)
            audio = reverberate(np.concatenate([audio, tail])[None], [room], rng)[0]
        placed.append(Placed(item.start, microphone.hear(audio, stream.rate), item.label))
    return replace(stream, placed=placed,
                   room_tone=microphone.hear(stream.room_tone, stream.rate))


def clips_in_rooms(clips: Sequence[tuple[int, np.ndarray]], seed: int,
                   rooms: int = ROOMS_PER_STREAM) -> list[tuple[int, np.ndarray]]:
    """One-second clips (int16 or float, any rate) each said in a random one of ``rooms``
    rooms drawn with ``seed``, through a random microphone: float32 at their own rate."""
    from tinyml_core.frontend import to_float

    rng = np.random.default_rng(seed)
    drawn: dict[int, list[Room]] = {}
    out = []
    for rate, samples in clips:
        if rate not in drawn:
            drawn[rate] = simulated_rooms(rooms, rate, seed)
        audio = reverberate(to_float(samples)[None], drawn[rate], rng)
        out.append((rate, np.clip(Microphone.random(rng).hear(audio, rate)[0], -1.0, 1.0)))
    return out
