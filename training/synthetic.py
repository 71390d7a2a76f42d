"""Synthetic "not a keyword" speech: espeak-ng saying the words of config/synthetic_words.txt.

The real negatives hold 22 other words, 92 % of them bed, cat and happy; a person near the
microphone says thousands more, many of them one sound away from a keyword (yet, top, town,
light). An open-set recipe with ``open_set.synthetic_per_word = N`` adds N clips of every
listed word to the TRAINING share of "unknown", each in a random voice (accent and variant),
pitch and speed, placed at a random point of its second. Validation and the held-back
negatives stay real recordings, so every number the build reports is measured on real voices.

espeak-ng comes from the distribution (``apt install espeak-ng``; ``scripts/bootstrap
training --espeak``). Clips are cached in data/synthetic/ (git-ignored), one WAV per word,
voice, pitch and speed: a second build synthesizes nothing.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from tinyml_core.frontend import resample

from . import DATA_DIR, REPO_ROOT
from .climate import DataError

WORDS_PATH = REPO_ROOT / "config" / "synthetic_words.txt"
CACHE_DIR = DATA_DIR / "synthetic"
RATE = 16_000
# English accents espeak-ng ships, and its voice variants (male m1-m7, female f1-f5).
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
PITCH = (25, 75)  # espeak-ng -p, 0-99
SPEED = (120, 200)  # words per minute


def read_words(path: Path = WORDS_PATH) -> list[str]:
    """The listed words, once each, in file order (``#`` starts a comment)."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        for word in line.split("#", 1)[0].split():
            if word not in words:
                words.append(word)
    if not words:
        raise DataError(f"{path}: no words")
    return words


def espeak() -> str:
    found = shutil.which("espeak-ng")
    if found is None:
        raise DataError("espeak-ng is not installed; the recipe asks for synthetic negatives "
                        "(open_set.synthetic_per_word): apt install espeak-ng, or "
                        "scripts/bootstrap training --espeak")
    return found


def say(word: str, voice: str, pitch: int, speed: int, cache_dir: Path = CACHE_DIR
        ) -> np.ndarray:
    """espeak-ng's ``word`` as float32 at 16 kHz (cached)."""
    key = hashlib.sha256(f"{word}|{voice}|{pitch}|{speed}".encode()).hexdigest()[:16]
    cached = cache_dir / f"{word}-{key}.wav"
    if cached.exists():
        data = cached.read_bytes()
    else:
        done = subprocess.run([espeak(), "-v", voice, "-p", str(pitch), "-s", str(speed),
                               "--stdout", word], capture_output=True, timeout=30)
        if done.returncode != 0 or not done.stdout:
            raise DataError(f"espeak-ng could not say {word!r} with voice {voice}: "
                            f"{done.stderr.decode(errors='replace').strip()}")
        data = done.stdout
        cache_dir.mkdir(parents=True, exist_ok=True)
        cached.with_suffix(".part").write_bytes(data)
        cached.with_suffix(".part").replace(cached)
    with wave.open(io.BytesIO(data)) as clip:
        rate = clip.getframerate()
        samples = np.frombuffer(clip.readframes(clip.getnframes()), "<i2")
    return resample(samples.astype(np.float32) / 32768, rate, RATE)


def trim(audio: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """The word without espeak's leading and trailing silence."""
    loud = np.flatnonzero(np.abs(audio) > floor * max(float(np.abs(audio).max()), 1e-9))
    return audio[loud[0]:loud[-1] + 1] if len(loud) else audio


def synthetic_words(per_word: int, seed: int, words: list[str] | None = None,
                    cache_dir: Path = CACHE_DIR) -> list[tuple[int, np.ndarray]]:
    """``per_word`` one-second int16 clips at 16 kHz of every word, as the negatives hold
    real ones: a random accent and variant, pitch and speed each, peak level -25..-3 dBFS,
    the word at a random point of the second."""
    rng = np.random.default_rng(seed)
    clips = []
    for word in words or read_words():
        for _ in range(per_word):
            voice = f"{rng.choice(ACCENTS)}+{rng.choice(VARIANTS)}"
            audio = trim(say(word, voice, int(rng.integers(*PITCH)), int(rng.integers(*SPEED)),
                             cache_dir))[:RATE]
            audio = audio / max(float(np.abs(audio).max()), 1e-9) \
                * np.float32(10 ** (rng.uniform(-25, -3) / 20))
            second = np.zeros(RATE, np.float32)
            start = int(rng.integers(0, RATE - len(audio) + 1))
            second[start:start + len(audio)] = audio
            clips.append((RATE, np.round(second * 32767).astype(np.int16)))
    return clips


def describe(per_word: int) -> dict[str, object]:
    words = read_words()
    return {"what": "espeak-ng saying config/synthetic_words.txt, training share of "
                    "'unknown' only", "words": len(words), "clips_per_word": per_word,
            "accents": list(ACCENTS), "variants": list(VARIANTS),
            "pitch": list(PITCH), "speed_wpm": list(SPEED)}
