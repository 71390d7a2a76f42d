"""The audio front end: int16 clip at any rate → one second at the model's rate → MFCCs.

One implementation, numpy only, used by training and the collector alike, so features
never differ between the two (no train/serve skew). Semantics are those of tf.signal
(checked against it by tests/test_frontend_tf.py to < 1e-4):

- STFT with a periodic Hann window, fft length = frame length, no end padding;
- magnitude, weighted by an HTK-mel matrix built like ``linear_to_mel_weight_matrix``
  (triangles on mel = 1127·ln(1 + f/700), the DC bin's row zeroed);
- ``log(mel + 1e-6)``, then the DCT-II of ``mfccs_from_log_mel_spectrograms``
  (``sqrt(2/N)·Σ x_n cos(πk(2n+1)/2N)``, the same scale for every k), first N coefficients.

Resampling is polyphase FIR filtering with the filter and alignment of
``scipy.signal.resample_poly`` (Kaiser window, β = 5): every output sample costs only the
filter taps that meet non-zero input.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from .errors import PayloadError

LOG_OFFSET = 1e-6
# Beyond this ratio the polyphase filter gets long and slow; no microphone needs more.
MAX_RATE_RATIO = 1000


@dataclass(frozen=True)
class MfccParams:
    """What a keyword model expects from the front end (stored in models/manifest.json)."""

    sample_rate: int
    frame_length: int
    frame_step: int
    num_mel_bins: int
    lower_hz: float
    upper_hz: float
    num_coefficients: int
    clip_seconds: float = 1.0

    centered: ClassVar[bool] = False  # a shorter clip is padded at its end (fit_length)

    def __post_init__(self) -> None:
        if not (0 < self.frame_step <= self.frame_length <= self.clip_samples):
            raise ValueError(f"frame step {self.frame_step} / length {self.frame_length} do not "
                             f"fit a clip of {self.clip_samples} samples")
        if not 0 <= self.lower_hz < self.upper_hz <= self.sample_rate / 2:
            raise ValueError(f"mel edges {self.lower_hz}–{self.upper_hz} Hz must lie within "
                             f"0–{self.sample_rate / 2} Hz")
        if not 0 < self.num_coefficients <= self.num_mel_bins:
            raise ValueError("num_coefficients must be between 1 and num_mel_bins")

    @property
    def clip_samples(self) -> int:
        return round(self.sample_rate * self.clip_seconds)

    @property
    def num_frames(self) -> int:
        return 1 + (self.clip_samples - self.frame_length) // self.frame_step

    @property
    def feature_shape(self) -> tuple[int, int]:
        return (self.num_frames, self.num_coefficients)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MfccParams:
        return cls(**data)


class FrontEnd:
    """Clip → MFCC features for one parameter set; reusable and cheap to call."""

    def __init__(self, params: MfccParams) -> None:
        self.params = params
        self._window = _periodic_hann(params.frame_length)
        self._mel = mel_weight_matrix(params.num_mel_bins, params.frame_length // 2 + 1,
                                      params.sample_rate, params.lower_hz,
                                      params.upper_hz).astype(np.float64)
        self._dct = dct_matrix(params.num_mel_bins, params.num_coefficients)

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """float32 MFCCs of shape ``params.feature_shape`` for int16 (or float in [-1, 1]) audio.

        The clip is resampled to the model's rate, then zero-padded or cropped to
        ``clip_seconds``.
        """
        audio = to_float(samples)
        audio = resample(audio, sample_rate, self.params.sample_rate)
        return self.mfcc(fit_length(audio, self.params.clip_samples))

    def frames(self, audio: np.ndarray) -> np.ndarray:
        """A keyword model's frames of float audio at its rate: here, MFCCs (the speech
        embedding's front end answers the same call with its vectors)."""
        return self.mfcc(audio)

    def mfcc(self, audio: np.ndarray) -> np.ndarray:
        """MFCCs of float audio already at the model's rate (any length ≥ one frame)."""
        p = self.params
        # float64 inside: in float32 the FFT's rounding (~1e-7 of a frame's peak) shows up
        # after the log in quiet mel bands, by up to ~2e-4. It costs ~0.05 ms a clip.
        frames = _frames(np.ascontiguousarray(audio, dtype=np.float64), p.frame_length,
                         p.frame_step)
        magnitude = np.abs(np.fft.rfft(frames * self._window, axis=-1))
        log_mel = np.log(single_threaded_matmul(magnitude, self._mel) + LOG_OFFSET)
        result: np.ndarray = (log_mel @ self._dct).astype(np.float32)
        return result


# OpenBLAS runs a product on one thread below m·n·k = 65536·4; above, it wakes its other
# threads, which costs more than a clip's whole front end (0.3 ms becomes 0.6–0.9 ms on
# 2 cores). Products are cut to stay below that size.
_SINGLE_THREAD_WORK = 250_000


def single_threaded_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b computed in pieces small enough for BLAS to keep on the calling thread."""
    rows, inner = a.shape
    columns = b.shape[1]
    if rows * inner * columns <= _SINGLE_THREAD_WORK:
        product: np.ndarray = a @ b
        return product
    out = np.empty((rows, columns), dtype=np.result_type(a, b))
    if rows >= columns:
        step = max(1, _SINGLE_THREAD_WORK // (inner * columns))
        for start in range(0, rows, step):
            np.matmul(a[start:start + step], b, out=out[start:start + step])
    else:
        step = max(1, _SINGLE_THREAD_WORK // (inner * rows))
        for start in range(0, columns, step):
            np.matmul(a, b[:, start:start + step], out=out[:, start:start + step])
    return out


def to_float(samples: np.ndarray) -> np.ndarray:
    """int16 PCM → float32 in [-1, 1); float input is passed through as float32."""
    array = np.asarray(samples)
    if array.ndim != 1:
        raise PayloadError(f"audio must be mono (1-D), not shape {array.shape}")
    if array.dtype == np.int16:
        return array.astype(np.float32) / np.float32(32768.0)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    raise PayloadError(f"audio samples must be int16 or float, not {array.dtype}")


def block_levels_dbfs(samples: np.ndarray, sample_rate: int, block_s: float = 0.05
                      ) -> np.ndarray:
    """The RMS level of each whole ``block_s`` of the audio, in dBFS (-240 for digital
    silence): how loud a take is, and for how long."""
    audio = to_float(samples).astype(np.float64)
    block = max(1, round(block_s * sample_rate))
    usable = len(audio) // block * block
    if not usable:
        return np.full(1, -240.0)
    rms = np.sqrt(np.mean(np.square(audio[:usable].reshape(-1, block)), axis=1))
    levels: np.ndarray = 20 * np.log10(rms + 1e-12)
    return levels


def fit_length(audio: np.ndarray, length: int, centered: bool = False) -> np.ndarray:
    """Zero-pad at the end or crop to exactly ``length`` samples; ``centered``: pad both ends
    alike, or crop both (a front end whose window is longer than a word wants the word in its
    middle: the speech embedding's)."""
    if len(audio) >= length:
        start = (len(audio) - length) // 2 if centered else 0
        return audio[start:start + length]
    before = (length - len(audio)) // 2 if centered else 0
    return np.concatenate([np.zeros(before, dtype=audio.dtype), audio,
                           np.zeros(length - len(audio) - before, dtype=audio.dtype)])


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling of float audio; the output has ``ceil(n·to/from)`` samples."""
    if from_rate <= 0 or to_rate <= 0:
        raise PayloadError(f"sample rates must be positive, not {from_rate} → {to_rate}")
    divisor = math.gcd(from_rate, to_rate)
    up, down = to_rate // divisor, from_rate // divisor
    if max(up, down) > MAX_RATE_RATIO:
        raise PayloadError(f"cannot resample {from_rate} Hz → {to_rate} Hz: the rates "
                           f"reduce to {up}/{down}, beyond the supported ratio")
    x = np.asarray(audio, dtype=np.float32)
    if up == down == 1:
        return x.copy()
    n_out = -(-len(x) * up // down)
    blocks, half_len = _polyphase_blocks(up, down)
    taps = blocks.shape[1] * blocks.shape[2]
    left, right = taps + down, half_len // up + 2
    padded = np.concatenate([np.zeros(left, np.float32), x, np.zeros(right, np.float32)])
    out = np.empty(n_out, dtype=np.float32)
    # Outputs r, r+up, r+2·up, ... share one filter phase and read inputs `down` apart.
    for r in range(min(up, n_out)):
        count = len(range(r, n_out, up))
        position = r * down + half_len
        first = position // up + left  # input under tap 0 for the first output of this phase
        out[r::up] = _phase_outputs(padded, first, count, blocks[position % up], down)
    return out


def _phase_outputs(padded: np.ndarray, first: int, count: int, block: np.ndarray,
                   down: int) -> np.ndarray:
    """y[j] = Σ_t g[t]·padded[first + j·down − t] for j < count, with one matrix product.

    The input, cut into rows of `down` samples (a view, not a copy), times the filter cut into
    columns of `down` taps gives every partial sum; output j adds up one anti-diagonal of it.
    """
    columns = block.shape[0]
    rows = count + columns - 1
    start = first - (down - 1) - (columns - 1) * down
    # partial[q, m] = Σ_u block[q, u]·padded[start + m·down + u]
    inputs = padded[start: start + rows * down].reshape(rows, down)
    partial = single_threaded_matmul(block, inputs.T)
    item = partial.itemsize
    diagonals = np.lib.stride_tricks.as_strided(
        partial.reshape(-1)[columns - 1:], shape=(columns, count),
        strides=((rows - 1) * item, item), writeable=False)
    result: np.ndarray = diagonals.sum(axis=0)
    return result


@lru_cache(maxsize=16)
def _polyphase_blocks(up: int, down: int) -> tuple[np.ndarray, int]:
    """resample_poly's low-pass filter h as blocks[p][q, u] = h[p + up·(q·down + down − 1 − u)].

    Phase p holds the taps h[p::up] that one output sample meets; they are laid out
    `down` to a column, last tap of a block first, to match rows of consecutive input.
    """
    max_rate = max(up, down)
    half_len = 10 * max_rate
    n = np.arange(2 * half_len + 1) - half_len
    cutoff = 1.0 / max_rate
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(2 * half_len + 1, 5.0)
    h *= up / h.sum()
    per_phase = -(-len(h) // up)
    columns = -(-per_phase // down)
    padded = np.zeros(columns * down * up)
    padded[: len(h)] = h
    phases = padded.reshape(-1, up).T  # phases[p][t] = h[p + up·t]
    blocks = phases.reshape(up, columns, down)[:, :, ::-1]
    return np.ascontiguousarray(blocks, dtype=np.float32), half_len


def _frames(audio: np.ndarray, length: int, step: int) -> np.ndarray:
    if len(audio) < length:
        raise PayloadError(f"audio of {len(audio)} samples is shorter than one frame ({length})")
    count = 1 + (len(audio) - length) // step
    stride = audio.strides[0]
    return np.lib.stride_tricks.as_strided(audio, shape=(count, length),
                                           strides=(step * stride, stride), writeable=False)


def _periodic_hann(length: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)


def _hz_to_mel(hz: Any) -> Any:
    return np.float32(1127.0) * np.log(np.float32(1.0) + hz / np.float32(700.0))


def _linspace32(start: Any, stop: Any, num: int) -> np.ndarray:
    """tf.linspace in float32: start + i·delta inside, both ends exact."""
    delta = (stop - start) / np.float32(num - 1)
    inner = start + np.arange(1, num - 1, dtype=np.float32) * delta
    return np.concatenate([[start], inner, [stop]]).astype(np.float32)


def mel_weight_matrix(num_mel_bins: int, num_spectrogram_bins: int, sample_rate: int,
                      lower_hz: float, upper_hz: float) -> np.ndarray:
    """[spectrogram bins, mel bins] triangles, as tf.signal.linear_to_mel_weight_matrix.

    Computed in float32 step by step as TensorFlow does: the mel edges are large numbers
    (~2000), and float64 edges would move the weights by ~1e-5, visible after the log.
    """
    f32 = np.float32
    linear_hz = _linspace32(f32(0.0), f32(sample_rate / 2), num_spectrogram_bins)[1:]
    linear_mel = _hz_to_mel(linear_hz)[:, None]
    edges = _linspace32(_hz_to_mel(f32(lower_hz)), _hz_to_mel(f32(upper_hz)), num_mel_bins + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (linear_mel - lower) / (center - lower)
    falling = (upper - linear_mel) / (upper - center)
    weights = np.maximum(f32(0.0), np.minimum(rising, falling))
    # The DC bin carries no speech and tf.signal zeroes its row; so do we.
    return np.vstack([np.zeros((1, num_mel_bins), np.float32), weights]).astype(np.float32)


def dct_matrix(num_mel_bins: int, num_coefficients: int) -> np.ndarray:
    """[mel bins, coefficients] DCT-II scaled as tf.signal.mfccs_from_log_mel_spectrograms."""
    n = np.arange(num_mel_bins)[:, None]
    k = np.arange(num_coefficients)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * num_mel_bins))
    return basis * math.sqrt(2.0 / num_mel_bins)
