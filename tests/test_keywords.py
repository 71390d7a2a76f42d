"""The collector's decision over scanned windows: one result per utterance, ``unknown`` when
no word is clear (tinyml_core/keywords.py), and the scan itself on a real model."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tinyml_core.keywords import ScanSettings, decide, smoothed
from tinyml_core.models import load_keyword_spotter
from tinyml_core.recordings import read_wav

LABELS = ("yes", "no", "unknown", "silence")
KEYWORDS = ("yes", "no")
MODELS = REPO_ROOT / "models"
SAMPLES = REPO_ROOT / "samples" / "speech"


def windows(*rows: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.array(rows, dtype=np.float32)
    return np.arange(len(rows)) * 0.1, probabilities


QUIET = (0.0, 0.0, 0.1, 0.9)
YES = (0.9, 0.0, 0.1, 0.0)
NO = (0.0, 0.9, 0.1, 0.0)


def test_a_word_seen_in_consecutive_windows_is_one_result_at_its_peak() -> None:
    offsets, probabilities = windows(QUIET, (0.5, 0, 0.5, 0), YES, YES, (0.7, 0, 0.3, 0), QUIET)
    [found] = decide(offsets, probabilities, LABELS, KEYWORDS, ScanSettings(threshold=0.6))
    assert found.label == "yes" and found.offset_s == pytest.approx(0.3)
    assert found.probabilities.tolist() == pytest.approx(list(YES))


def test_one_confident_window_among_quiet_ones_is_smoothed_away() -> None:
    offsets, probabilities = windows(QUIET, QUIET, YES, QUIET, QUIET)
    [result] = decide(offsets, probabilities, LABELS, KEYWORDS, ScanSettings(threshold=0.6))
    assert result.label == "unknown"
    [alone] = decide(offsets, probabilities, LABELS, KEYWORDS,
                     ScanSettings(threshold=0.6, smoothing=1))
    assert alone.label == "yes"


def test_two_words_further_apart_than_the_refractory_time_are_two_results() -> None:
    rows = [YES] * 3 + [QUIET] * 9 + [NO] * 3
    offsets, probabilities = windows(*rows)
    found = decide(offsets, probabilities, LABELS, KEYWORDS, ScanSettings(threshold=0.6))
    assert [(f.label, round(f.offset_s, 1)) for f in found] == [("yes", 0.0), ("no", 1.3)]
    close = [YES] * 3 + [QUIET] * 3 + [NO] * 3  # 0.6 s apart: one utterance
    offsets, probabilities = windows(*close)
    assert len(decide(offsets, probabilities, LABELS, KEYWORDS, ScanSettings(threshold=0.6))) == 1


def test_the_edges_are_averaged_over_the_windows_that_exist() -> None:
    values = np.array([[1.0], [0.0], [0.0], [1.0]])
    assert smoothed(values, 3)[:, 0].tolist() == pytest.approx([0.5, 1 / 3, 1 / 3, 0.5])
    assert smoothed(values[:1], 3).tolist() == [[1.0]]
    assert smoothed(values[:2], 5)[:, 0].tolist() == [0.5, 0.5]


@pytest.mark.parametrize("settings", [dict(hop_s=0), dict(smoothing=0), dict(threshold=1.5),
                                      dict(refractory_s=-1)])
def test_impossible_scan_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ScanSettings(**settings)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the scan, real model


@pytest.fixture(scope="module")
def spotter():  # type: ignore[no-untyped-def]
    return load_keyword_spotter(MODELS, "kws_b")


def test_a_windows_features_are_those_of_that_second_on_its_own(spotter) -> None:  # type: ignore[no-untyped-def]
    # At the model's rate (no resampling, whose filter sees past a cut second's edges).
    rate, word = read_wav(next((SAMPLES / "yes").glob("*.wav")))
    word = word[::2]
    rate //= 2
    assert rate == spotter.contract.front_end.sample_rate
    event = np.concatenate([np.zeros(rate // 2, np.int16), word, np.zeros(rate, np.int16)])
    offsets, probabilities, inference_ms = spotter.scan(event, rate, hop_s=0.1)
    assert inference_ms > 0
    assert offsets[0] == 0 and offsets[-1] == pytest.approx(len(event) / rate - 1.0)
    assert np.allclose(np.diff(offsets), 0.1)
    for index in (0, 5, len(offsets) - 1):
        start = round(offsets[index] * rate)
        alone = spotter.classify(event[start:start + rate], rate)
        np.testing.assert_allclose(probabilities[index], alone, atol=1e-6)


def test_an_event_shorter_than_a_window_is_padded_to_one(spotter) -> None:  # type: ignore[no-untyped-def]
    offsets, probabilities, _ = spotter.scan(np.zeros(100, np.int16), 16000)
    assert offsets.tolist() == [0.0] and probabilities.shape == (1, len(spotter.labels))
