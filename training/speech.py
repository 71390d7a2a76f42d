"""Mini speech commands and its fixed split: clips and labels, numpy only.

The split files (training/kws_split/, 6400/800/800) are those every published result on
this dataset uses; the archive is read from data/, ../shared/data, or downloaded once
(its sha256 recorded and checked after). Training, ``training.evaluate`` and the stream
benchmark read clips through here, without TensorFlow.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyml_core.embedding import EmbeddingParams
from tinyml_core.frontend import MfccParams, fit_length, resample, to_float
from tinyml_core.recordings import RecordingError, read_wav

from . import DATA_DIR, SHARED_DATA_DIR
from .climate import DataError, cache_dir

log = logging.getLogger(__name__)

SPLIT_DIR = Path(__file__).resolve().parent / "kws_split"
SPLIT_FILES = {"train": "kws_train_split.txt", "validation": "kws_val_split.txt",
               "test": "kws_test_split.txt"}
DATASET_NAME = "mini_speech_commands"
DATASET_URL = "http://storage.googleapis.com/download.tensorflow.org/data/mini_speech_commands.zip"
LOCAL_ARCHIVES = (SHARED_DATA_DIR / "mini_speech_commands.tar.xz",)
SOURCE_RATE = 16000


def labels() -> list[str]:
    return (SPLIT_DIR / "labels.txt").read_text().split()


# ---------------------------------------------------------------- data


def find_dataset(speech_dir: Path | None) -> Path:
    """The <word>/*.wav folder: given, already extracted into data/, extracted from a local
    archive, or downloaded (its sha256 recorded on first download and checked after)."""
    if speech_dir is not None:
        if not speech_dir.is_dir():
            raise DataError(f"{speech_dir}: not a folder of <word>/*.wav")
        return speech_dir
    extracted = DATA_DIR / DATASET_NAME
    if extracted.is_dir():
        return extracted
    for archive in LOCAL_ARCHIVES:
        if archive.exists():
            log.info("extracting %s into data/", archive)
            with tarfile.open(archive) as bundle:
                bundle.extractall(DATA_DIR, filter="data")
            return extracted
    archive = cache_dir() / f"{DATASET_NAME}.zip"
    if not archive.exists():
        log.info("downloading %s", DATASET_URL)
        try:
            with urllib.request.urlopen(DATASET_URL, timeout=60) as response:
                data = response.read()
        except OSError as exc:
            raise DataError(f"cannot download {DATASET_URL} ({exc}); pass --speech-dir DIR "
                            "(a folder of <word>/*.wav)") from None
        archive.parent.mkdir(parents=True, exist_ok=True)
        archive.write_bytes(data)
        archive.with_name(archive.name + ".sha256").write_text(
            hashlib.sha256(data).hexdigest() + "\n")
    record = archive.with_name(archive.name + ".sha256")
    if record.exists() and hashlib.sha256(archive.read_bytes()).hexdigest() != \
            record.read_text().strip():
        raise DataError(f"{archive}: checksum differs from the recorded one; delete it")
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(DATA_DIR)
    shutil.rmtree(DATA_DIR / "__MACOSX", ignore_errors=True)
    return extracted


def split_paths(root: Path, part: str) -> list[Path]:
    names = (SPLIT_DIR / SPLIT_FILES[part]).read_text().split()
    return [root / name.removeprefix(f"./data/{DATASET_NAME}/") for name in names]


def read_clip(path: Path) -> tuple[int, np.ndarray]:
    """A WAV of a dataset; an unreadable one is a data error naming the file."""
    try:
        return read_wav(path)
    except RecordingError as exc:
        raise DataError(f"clip unusable: {exc}") from None


@dataclass
class SpeechData:
    """Raw clips of each split part (int16, their own rate) and their label indices."""

    root: Path
    labels: list[str]
    clips: dict[str, list[tuple[int, np.ndarray]]]
    targets: dict[str, np.ndarray]

    @classmethod
    def load(cls, speech_dir: Path | None = None, parts: tuple[str, ...] = tuple(SPLIT_FILES),
             show_progress: bool = True) -> SpeechData:
        from tqdm.auto import tqdm  # training extra; the split helpers import without it

        root = find_dataset(speech_dir)
        names = labels()
        clips: dict[str, list[tuple[int, np.ndarray]]] = {}
        targets: dict[str, np.ndarray] = {}
        for part in parts:
            paths = split_paths(root, part)
            clips[part] = [read_clip(path) for path in
                           tqdm(paths, desc=f"read {part}", unit="clip", leave=False,
                                disable=not show_progress)]
            targets[part] = np.array([names.index(path.parent.name) for path in paths])
        return cls(root, names, clips, targets)

    def audio(self, part: str, params: MfccParams | EmbeddingParams) -> np.ndarray:
        """[N, clip samples] float32 at the model's rate, padded/cropped as the front end does."""
        return np.stack([fit_length(resample(to_float(clip), rate, params.sample_rate),
                                    params.clip_samples, params.centered)
                         for rate, clip in self.clips[part]])

    def describe(self) -> dict[str, Any]:
        return {"dataset": "mini speech commands (Speech Commands, Pete Warden, Google, "
                           "CC BY 4.0)",
                "split": "fixed 6400/800/800 split, training/kws_split/",
                "clips": {part: len(items) for part, items in self.clips.items()}}
