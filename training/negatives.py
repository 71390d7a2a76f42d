"""What is not a keyword: other words and background noise, split so a part is never trained on.

``../shared/data/negatives.tar.xz`` (Speech Commands, CC BY 4.0) holds one-second clips of
22 other words and six background-noise recordings. Words are split by speaker (the part of
the file name before ``_nohash_``, hashed), noise recordings by time (the first 70 % of every
file trains, the next 10 % validates, the last 20 % is held back), so the held-back part
measures what a model does with voices and sounds it never heard. Numpy only: the stream
benchmark and ``training.evaluate`` use it without TensorFlow.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyml_core.frontend import fit_length, resample, to_float

from . import DATA_DIR, SHARED_DATA_DIR
from .climate import DataError
from .speech import read_clip

NAME = "negatives"
LOCAL_ARCHIVE = SHARED_DATA_DIR / "negatives.tar.xz"
PARTS = ("train", "validation", "test")
# Percent of speakers (by hash) in each part; noise recordings are cut at the same shares.
SHARES = {"train": 70, "validation": 10, "test": 20}
UNKNOWN, SILENCE = "unknown", "silence"


def find_negatives(negatives_dir: Path | None = None) -> Path:
    """The extracted ``negatives/`` folder: given, in data/, or extracted from ../shared."""
    if negatives_dir is not None:
        if not (negatives_dir / "words").is_dir():
            raise DataError(f"{negatives_dir}: no words/<word>/*.wav in it")
        return negatives_dir
    extracted = DATA_DIR / NAME
    if (extracted / "words").is_dir():
        return extracted
    if LOCAL_ARCHIVE.exists():
        with tarfile.open(LOCAL_ARCHIVE) as bundle:
            bundle.extractall(DATA_DIR, filter="data")
        return extracted
    raise DataError(f"no negatives: extract {LOCAL_ARCHIVE.name} into data/ or pass "
                    "--negatives-dir DIR (words/<word>/*.wav and noise/*.wav)")


def speaker(path: Path | str) -> str:
    """Speech Commands names files ``<speaker>_nohash_<n>.wav``."""
    return Path(path).name.split("_nohash_")[0]


def speaker_part(speaker_id: str) -> str:
    """train / validation / test for a speaker, stable across runs and machines."""
    bucket = zlib.crc32(speaker_id.encode()) % 100
    if bucket < SHARES["train"]:
        return "train"
    return "validation" if bucket < SHARES["train"] + SHARES["validation"] else "test"


def noise_span(length: int, part: str) -> slice:
    """The samples of a noise recording that belong to ``part``."""
    train_end = length * SHARES["train"] // 100
    validation_end = length * (SHARES["train"] + SHARES["validation"]) // 100
    return {"train": slice(0, train_end), "validation": slice(train_end, validation_end),
            "test": slice(validation_end, length)}[part]


@dataclass
class Negatives:
    """Other-word clips (int16, own rate) with their word, and noise as float at 16 kHz."""

    root: Path
    words: dict[str, list[tuple[int, np.ndarray]]]
    word_names: dict[str, list[str]]
    noise: dict[str, list[tuple[str, int, np.ndarray]]]

    @classmethod
    def load(cls, negatives_dir: Path | None = None) -> Negatives:
        root = find_negatives(negatives_dir)
        words: dict[str, list[tuple[int, np.ndarray]]] = {part: [] for part in PARTS}
        names: dict[str, list[str]] = {part: [] for part in PARTS}
        for path in sorted((root / "words").glob("*/*.wav")):
            part = speaker_part(speaker(path))
            words[part].append(read_clip(path))
            names[part].append(path.parent.name)
        noise: dict[str, list[tuple[str, int, np.ndarray]]] = {part: [] for part in PARTS}
        for path in sorted((root / "noise").glob("*.wav")):
            rate, samples = read_clip(path)
            for part in PARTS:
                noise[part].append((path.stem, rate, samples[noise_span(len(samples), part)]))
        if not words["train"] or not noise["train"]:
            raise DataError(f"{root}: needs words/<word>/*.wav and noise/*.wav")
        return cls(root, words, names, noise)

    def word_audio(self, part: str, rate: int, length: int, centered: bool = False
                   ) -> np.ndarray:
        """[N, length] float32 at ``rate``, padded or cropped as the front end does."""
        return np.stack([fit_length(resample(to_float(clip), clip_rate, rate), length, centered)
                         for clip_rate, clip in self.words[part]])

    def noise_audio(self, part: str, rate: int) -> list[tuple[str, np.ndarray]]:
        """Each recording's share for ``part`` as float32 at ``rate``."""
        return [(name, resample(to_float(samples), noise_rate, rate))
                for name, noise_rate, samples in self.noise[part]]

    def describe(self) -> dict[str, object]:
        return {"dataset": "negatives: 22 other Speech Commands words and its six "
                           "background-noise recordings (Pete Warden, Google, CC BY 4.0)",
                "split": "words by speaker hash (crc32 % 100: < 70 train, < 80 validation, "
                         "else held back); noise by time (70/10/20 % of every recording)",
                "word_clips": {part: len(clips) for part, clips in self.words.items()}}


def noise_crops(noise: list[tuple[str, np.ndarray]], count: int, length: int,
                rng: np.random.Generator) -> np.ndarray:
    """``count`` random ``length``-sample crops, the recording chosen uniformly."""
    out = np.empty((count, length), dtype=np.float32)
    choices = rng.integers(0, len(noise), count)
    for index, choice in enumerate(choices):
        samples = noise[choice][1]
        start = int(rng.integers(0, max(1, len(samples) - length)))
        out[index] = fit_length(samples[start:start + length], length)
    return out


def rms(audio: np.ndarray) -> np.ndarray:
    """RMS of each row (a tiny floor keeps digital silence finite)."""
    return np.sqrt(np.mean(np.square(audio, dtype=np.float64), axis=-1) + 1e-12)


def at_level(audio: np.ndarray, dbfs: np.ndarray) -> np.ndarray:
    """Each row scaled to the RMS level ``dbfs`` (relative to full scale 1.0)."""
    gain = (10 ** (np.asarray(dbfs) / 20)) / rms(audio)
    return (audio * gain[:, None]).astype(np.float32)


def silence_clips(noise: list[tuple[str, np.ndarray]], count: int, length: int,
                  rng: np.random.Generator, levels_dbfs: tuple[float, float] = (-70.0, -20.0)
                  ) -> np.ndarray:
    """"No word": noise crops at random levels, from a very quiet room to a loud kitchen."""
    crops = noise_crops(noise, count, length, rng)
    return at_level(crops, rng.uniform(*levels_dbfs, count))
