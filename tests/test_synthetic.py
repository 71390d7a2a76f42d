"""Synthetic "not a keyword" speech (training/synthetic.py): the word list and espeak-ng clips.

The clip tests need espeak-ng (scripts/bootstrap --espeak, which scripts/test runs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from training import synthetic
from training.climate import DataError
from training.speech import labels

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (scripts/bootstrap --espeak)")


def test_the_word_list_holds_no_keyword_and_nothing_that_sounds_or_begins_like_one() -> None:
    words = synthetic.read_words()
    assert len(words) == len(set(words)) > 200
    keywords = set(labels())
    assert keywords.isdisjoint(words)
    assert {"know", "write", "rite", "going", "upper", "notice"}.isdisjoint(words)
    assert {"yet", "top", "town", "light", "goal"} <= set(words)  # one sound away: kept


def test_a_word_list_reads_every_word_once_without_comments(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_text("# a comment with go in it\nyet top  # near 'yes' and 'stop'\ntop town\n")
    assert synthetic.read_words(path) == ["yet", "top", "town"]
    path.write_text("# nothing but comments\n")
    with pytest.raises(DataError, match="no words"):
        synthetic.read_words(path)


@needs_espeak
def test_clips_are_one_second_at_16_khz_with_the_whole_word_and_repeat_with_the_seed(
        tmp_path: Path) -> None:
    words = ["yet", "kitchen"]
    clips = synthetic.synthetic_words(3, seed=5, words=words, cache_dir=tmp_path)
    assert len(clips) == 6
    for rate, samples in clips:
        assert rate == 16_000 and samples.dtype == np.int16 and len(samples) == 16_000
        peak = np.abs(samples).max() / 32767
        assert 10 ** (-25 / 20) - 0.01 <= peak <= 10 ** (-3 / 20) + 0.01
        sounding = np.flatnonzero(samples)
        assert 0.1 < (sounding[-1] - sounding[0]) / 16_000 < 1.0  # a word, not cut
    again = synthetic.synthetic_words(3, seed=5, words=words, cache_dir=tmp_path)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(clips, again, strict=True))
    other = synthetic.synthetic_words(3, seed=6, words=words, cache_dir=tmp_path)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(clips, other, strict=True))


@needs_espeak
def test_cached_clips_need_no_espeak_and_a_missing_espeak_is_explained(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = synthetic.synthetic_words(2, seed=1, words=["town"], cache_dir=tmp_path)
    monkeypatch.setattr(synthetic.shutil, "which", lambda name: None)
    cached = synthetic.synthetic_words(2, seed=1, words=["town"], cache_dir=tmp_path)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, cached, strict=True))
    with pytest.raises(DataError, match="apt install espeak-ng"):
        synthetic.synthetic_words(1, seed=1, words=["garden"], cache_dir=tmp_path)
