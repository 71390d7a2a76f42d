"""Our front end against the reference implementations: tf.signal and scipy.

Needs the training extra; skipped without it. The MFCC reference runs tf.signal in float64,
where only the semantics can differ; in float32, TensorFlow's own FFT rounding (~1e-7 of a
frame's peak) moves quiet mel bands by up to ~2e-4 after the log, which is also checked.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, SHARED_DATA
from tests.test_frontend import KWS_A, KWS_B
from tinyml_core.frontend import FrontEnd, MfccParams, fit_length, resample, to_float
from tinyml_core.recordings import read_wav

pytestmark = pytest.mark.training
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
signal = pytest.importorskip("scipy.signal")


def real_clips() -> list[tuple[int, np.ndarray]]:
    """The bundled clips, plus every 25th clip of the dataset's test split when present."""
    paths = sorted((REPO_ROOT / "samples" / "speech").glob("*/*.wav"))
    split = SHARED_DATA / "kws" / "kws_test_split.txt"
    extracted = REPO_ROOT / "data"
    if split.exists() and (extracted / "mini_speech_commands").is_dir():
        names = split.read_text().split()[::25]
        paths += [extracted / name.removeprefix("./data/") for name in names]
    return [read_wav(path) for path in paths]


def tf_mfcc(audio: np.ndarray, params: MfccParams, dtype: object) -> np.ndarray:
    mel = tf.signal.linear_to_mel_weight_matrix(
        params.num_mel_bins, params.frame_length // 2 + 1, params.sample_rate,
        params.lower_hz, params.upper_hz, dtype=dtype)
    stft = tf.signal.stft(tf.constant(audio, dtype), params.frame_length, params.frame_step,
                          fft_length=params.frame_length)
    log_mel = tf.math.log(tf.tensordot(tf.abs(stft), mel, 1) + 1e-6)
    mfcc = tf.signal.mfccs_from_log_mel_spectrograms(log_mel)
    return mfcc[..., : params.num_coefficients].numpy()


@pytest.mark.parametrize("params", [KWS_A, KWS_B], ids=["kws_a", "kws_b"])
def test_mfcc_matches_tf_signal_on_real_clips(params: MfccParams) -> None:
    front_end = FrontEnd(params)
    worst64 = worst32 = 0.0
    for rate, clip in real_clips():
        audio = fit_length(resample(to_float(clip), rate, params.sample_rate),
                           params.clip_samples)
        ours = front_end.mfcc(audio)
        worst64 = max(worst64, float(np.abs(ours - tf_mfcc(audio, params, tf.float64)).max()))
        worst32 = max(worst32, float(np.abs(ours - tf_mfcc(audio, params, tf.float32)).max()))
    assert worst64 < 1e-4
    assert worst32 < 1e-3


def test_mel_matrix_matches_tf_signal() -> None:
    from tinyml_core.frontend import mel_weight_matrix

    for params in (KWS_A, KWS_B):
        ours = mel_weight_matrix(params.num_mel_bins, params.frame_length // 2 + 1,
                                 params.sample_rate, params.lower_hz, params.upper_hz)
        theirs = tf.signal.linear_to_mel_weight_matrix(
            params.num_mel_bins, params.frame_length // 2 + 1, params.sample_rate,
            params.lower_hz, params.upper_hz).numpy()
        assert np.abs(ours - theirs).max() < 1e-5


@pytest.mark.parametrize(("from_rate", "to_rate"),
                         [(16000, 8000), (48000, 8000), (48000, 16000), (44100, 8000),
                          (8000, 16000), (22050, 16000)])
def test_resampling_matches_scipy_resample_poly(from_rate: int, to_rate: int) -> None:
    noise = np.random.default_rng(from_rate + to_rate).standard_normal(from_rate) * 0.3
    divisor = math.gcd(from_rate, to_rate)
    theirs = signal.resample_poly(noise, to_rate // divisor, from_rate // divisor)
    ours = resample(noise.astype(np.float32), from_rate, to_rate)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 1e-5
