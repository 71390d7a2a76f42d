"""The numpy front end: resampling and MFCC behaviour (no TensorFlow needed).

Agreement with tf.signal and scipy is checked in tests/test_frontend_reference.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tinyml_core.errors import PayloadError
from tinyml_core.frontend import (
    FrontEnd,
    MfccParams,
    fit_length,
    resample,
    single_threaded_matmul,
    to_float,
)
from tinyml_core.recordings import read_wav

KWS_A = MfccParams(16000, 640, 320, 40, 20.0, 4000.0, 10)
KWS_B = MfccParams(8000, 320, 160, 16, 20.0, 4000.0, 10)
SAMPLE_CLIPS = sorted((REPO_ROOT / "samples" / "speech").glob("*/*.wav"))


def tone(frequency: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


@pytest.mark.parametrize(("from_rate", "to_rate"),
                         [(16000, 8000), (48000, 8000), (48000, 16000), (44100, 8000),
                          (8000, 16000), (22050, 16000), (11025, 8000)])
def test_resampling_keeps_a_tone_and_gives_ceil_length(from_rate: int, to_rate: int) -> None:
    signal = tone(440.0, from_rate, 0.5)
    out = resample(signal, from_rate, to_rate)
    assert len(out) == -(-len(signal) * to_rate // from_rate)
    expected = tone(440.0, to_rate, 0.5)
    middle = slice(len(out) // 4, 3 * len(out) // 4)  # the filter's edges taper
    assert np.abs(out[middle] - expected[middle]).max() < 0.01


def test_resampling_removes_what_the_new_rate_cannot_hold() -> None:
    above_new_nyquist = tone(6000.0, 48000)
    out = resample(above_new_nyquist, 48000, 8000)
    assert np.sqrt(np.mean(out[500:-500] ** 2)) < 0.01  # would alias to 2 kHz otherwise


def test_same_rate_is_a_copy() -> None:
    signal = tone(100.0, 8000)
    out = resample(signal, 8000, 8000)
    assert np.array_equal(out, signal) and out is not signal


@pytest.mark.parametrize(("from_rate", "to_rate"), [(0, 8000), (8000, -1), (96001, 8000)])
def test_bad_rates_are_refused(from_rate: int, to_rate: int) -> None:
    with pytest.raises(PayloadError):
        resample(np.zeros(1000, np.float32), from_rate, to_rate)


def test_int16_is_scaled_and_other_types_refused() -> None:
    assert to_float(np.array([-32768, 16384], np.int16)).tolist() == [-1.0, 0.5]
    with pytest.raises(PayloadError, match="mono"):
        to_float(np.zeros((10, 2), np.int16))
    with pytest.raises(PayloadError, match="int16 or float"):
        to_float(np.zeros(10, np.int32))


def test_fit_length_pads_with_zeros_and_crops() -> None:
    assert fit_length(np.ones(3, np.float32), 5).tolist() == [1, 1, 1, 0, 0]
    assert fit_length(np.arange(8, dtype=np.float32), 5).tolist() == [0, 1, 2, 3, 4]
    # Centred (the speech embedding's window is longer than a word): padded or cut evenly.
    assert fit_length(np.ones(3, np.float32), 6, centered=True).tolist() == [0, 1, 1, 1, 0, 0]
    assert fit_length(np.arange(8, dtype=np.float32), 4, centered=True).tolist() == [2, 3, 4, 5]


@pytest.mark.parametrize("params", [KWS_A, KWS_B], ids=["kws_a", "kws_b"])
def test_features_have_the_model_shape_from_any_rate_and_length(params: MfccParams) -> None:
    front_end = FrontEnd(params)
    assert params.feature_shape == (49, 10)
    for rate, seconds in [(16000, 1.0), (48000, 1.0), (8000, 0.4), (44100, 1.7)]:
        features = front_end(tone(700.0, rate, seconds), rate)
        assert features.shape == (49, 10) and features.dtype == np.float32
        assert np.isfinite(features).all()


def test_same_clip_at_different_rates_gives_nearly_the_same_features() -> None:
    rate, clip = read_wav(SAMPLE_CLIPS[0])
    front_end = FrontEnd(KWS_B)
    direct = front_end(clip, rate)
    via_48k = front_end(resample(to_float(clip), rate, 48000), 48000)
    # Coefficient 0 is the loudness (≈ ±20): the two paths differ far less than words do.
    assert np.abs(direct - via_48k)[:, 0].max() < 0.5
    other_rate, other = read_wav(SAMPLE_CLIPS[-1])
    different_word = np.abs(direct - front_end(other, other_rate)).mean()
    assert different_word > 5 * np.abs(direct - via_48k).mean()


def test_silence_gives_the_log_floor_and_louder_gives_a_larger_c0() -> None:
    front_end = FrontEnd(KWS_B)
    silent = front_end(np.zeros(8000, np.int16), 8000)
    assert np.allclose(silent[:, 0], np.log(1e-6) * np.sqrt(2 * 16), atol=1e-3)
    assert np.allclose(silent[:, 1:], 0.0, atol=1e-3)
    quiet = front_end(tone(1000.0, 8000) * 0.01, 8000)
    loud = front_end(tone(1000.0, 8000), 8000)
    assert (loud[:, 0] > quiet[:, 0] + 2).all()  # one mel band 40 dB louder


def test_parameters_are_checked_and_round_trip() -> None:
    assert MfccParams.from_dict(KWS_A.to_dict()) == KWS_A
    with pytest.raises(ValueError, match="mel edges"):
        MfccParams(8000, 320, 160, 16, 20.0, 6000.0, 10)
    with pytest.raises(ValueError, match="frame"):
        MfccParams(8000, 320, 400, 16, 20.0, 4000.0, 10)
    with pytest.raises(ValueError, match="num_coefficients"):
        MfccParams(8000, 320, 160, 16, 20.0, 4000.0, 20)


@pytest.mark.parametrize(("a_shape", "b_shape"),
                         [((3, 4), (4, 5)), ((20000, 6), (6, 21)), ((21, 6), (6, 20000)),
                          ((49, 321), (321, 40))])
def test_piecewise_matmul_equals_matmul(a_shape: tuple[int, int],
                                        b_shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    assert np.allclose(single_threaded_matmul(a, b), a @ b)
