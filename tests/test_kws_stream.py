"""The stream benchmark's own logic (training/stream.py): the stream it lays out, and how
results are scored. Runs on the bundled samples; the benchmark itself needs the datasets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from node.microphone import level_dbfs
from tests.conftest import REPO_ROOT
from tinyml_core.keywords import ScanSettings
from tinyml_core.messages import AudioClip, KeywordResult
from tinyml_core.recordings import read_wav
from training.stream import (
    RATE,
    START_TIME,
    Placed,
    Stream,
    StreamResult,
    build_stream,
    capture_events,
    choose_threshold,
    run_stream,
    score,
    threshold_table,
)

SPEECH = REPO_ROOT / "samples" / "speech"


def sample_words() -> list[tuple[str, int, np.ndarray]]:
    return [(path.parent.name, *read_wav(path)) for path in sorted(SPEECH.glob("[a-z]*/*.wav"))]


def quiet_room() -> list[tuple[str, np.ndarray]]:
    return [("hiss", np.random.default_rng(0).normal(0, 0.01, 10 * RATE).astype(np.float32))]


def test_every_clip_is_placed_once_without_overlap_and_the_same_seed_gives_the_same_stream(
) -> None:
    words = sample_words()
    others = [read_wav(p) for p in sorted((SPEECH / "_unknown_").glob("*.wav"))]
    stream = build_stream(words, others, quiet_room(), seed=3)
    keywords = stream.keywords()
    assert sorted(k.label for k in keywords) == sorted(w for w, _, _ in words)
    spans = sorted((p.start, p.start + len(p.audio)) for p in stream.placed)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(spans)]
    assert min(gaps) >= 1.5 * RATE and max(gaps) <= 3.5 * RATE
    again = build_stream(words, others, quiet_room(), seed=3)
    np.testing.assert_array_equal(stream.render(0, stream.length),
                                  again.render(0, again.length))
    pages = np.concatenate(list(stream.pages(seconds=7.0)))
    np.testing.assert_array_equal(pages, stream.render(0, stream.length))


def test_the_nodes_capture_finds_every_word_above_its_gate() -> None:
    stream = build_stream(sample_words(), [], quiet_room(), seed=0,
                          noise_bursts_per_keyword=0)
    events = [AudioClip.decode(payload) for payload in capture_events(stream)]
    starts = [event.time - START_TIME for event in events]
    heard = [k for k in stream.keywords() if level_dbfs(
        np.round(k.audio * 32768).astype(np.int16)) > -50]
    # right/122c5aa7 peaks at -61 dBFS, below the node's gate: the one clip not heard.
    assert len(heard) == len(events) == len(stream.keywords()) - 1
    for word in heard:
        assert any(abs(start - word.start / RATE) < 0.6 for start in starts)


def result(label: str, at: float) -> KeywordResult:
    probabilities = {"yes": 0.9, "no": 0.05, "unknown": 0.05}
    return KeywordResult("stream", "kws_b", "1+0", START_TIME + at, 1.0, 0.1, label,
                         probabilities)


def test_a_right_word_near_its_clip_is_found_once_and_the_rest_are_false_accepts() -> None:
    clip = np.zeros(RATE, np.float32)
    stream = Stream(20 * RATE, [Placed(2 * RATE, clip, "yes"), Placed(8 * RATE, clip, "no"),
                                Placed(14 * RATE, clip, "word")],
                    np.zeros(RATE, np.float32), -90.0)
    results = [result("yes", 2.2),  # found
               result("yes", 2.3),  # the same word twice: false
               result("yes", 8.0),  # the wrong word for "no": false, "no" not found
               result("no", 14.1),  # another word taken for a keyword: false
               result("unknown", 17.0)]  # "none of my words": never a false accept
    scored = score(stream, results, 0.6)
    assert (scored.keywords, scored.found, scored.false_accepts) == (2, 1, 3)
    assert scored.recall == 0.5
    assert scored.false_per_hour == pytest.approx(3 / (20 / 3600))
    assert scored.by_kind == {"keyword": 2, "word": 1}


def test_a_threshold_sweep_scans_each_event_once_and_scores_as_the_collector_answers() -> None:
    stream = build_stream(sample_words(), [], quiet_room(), seed=1, noise_bursts_per_keyword=0)
    payloads = capture_events(stream)
    models = REPO_ROOT / "models"
    rows = threshold_table(stream, payloads, models, "kws_c", (0.5, 0.9))
    for row in rows:  # the collector's own path, a fresh scan of every event
        settings = ScanSettings(threshold=row.threshold)
        alone = score(stream, run_stream(payloads, models, "kws_c", settings), row.threshold)
        assert (alone.found, alone.false_accepts) == (row.found, row.false_accepts)
    assert rows[0].found > rows[1].found  # 0.9 is strict enough to lose some of the words


def test_the_chosen_threshold_finds_the_most_keywords_within_the_false_accept_budget() -> None:
    def row(threshold: float, found: int, false_accepts: int) -> StreamResult:
        return StreamResult(threshold, 100, found, false_accepts, hours=1.0)

    rows = [row(0.5, 95, 12), row(0.6, 93, 6), row(0.7, 90, 5), row(0.72, 90, 4),
            row(0.8, 85, 1)]
    assert choose_threshold(rows, 5.0).threshold == 0.7  # type: ignore[union-attr]
    assert choose_threshold(rows, 6.0).threshold == 0.6  # type: ignore[union-attr]
    assert choose_threshold(rows, 0.5) is None


def test_a_part_with_few_other_words_uses_them_again_to_reach_the_mix_asked_for() -> None:
    words = sample_words()
    others = [read_wav(p) for p in sorted((SPEECH / "_unknown_").glob("*.wav"))]
    plain = build_stream(words, others, quiet_room(), seed=3, phrase_share=0.0)
    assert sum(p.kind == "word" for p in plain.placed) == len(others)
    again = build_stream(words, others, quiet_room(), seed=3, phrase_share=0.0,
                         min_other_words=3 * len(others) + 1)
    placed = [p.audio.tobytes() for p in again.placed if p.kind == "word"]
    assert len(placed) == 3 * len(others) + 1
    uses = sorted(placed.count(clip) for clip in set(placed))
    assert len(uses) == len(others) and uses[0] >= 3 and uses[-1] <= 4
    # Asking for fewer than there are changes nothing: the same stream as without.
    same = build_stream(words, others, quiet_room(), seed=3, phrase_share=0.0,
                        min_other_words=1)
    np.testing.assert_array_equal(same.render(0, same.length), plain.render(0, plain.length))


def test_phrase_windows_are_other_speech_cut_where_a_streams_windows_fall() -> None:
    from training.stream import phrase_windows

    # Each "word" a constant of its own, so a window shows which words it holds.
    words = [np.full(6000 + 500 * i, i + 1, np.float32) for i in range(6)]
    windows = phrase_windows(words, 400, 8000, np.random.default_rng(4), rate=8000)
    assert windows.shape == (400, 8000) and windows.dtype == np.float32
    held = [set(np.unique(w)) - {0.0} for w in windows]
    assert all(held), "every window holds some speech"
    assert all(h <= {1.0, 2.0, 3.0, 4.0, 5.0, 6.0} for h in held)
    assert sum(len(h) >= 2 for h in held) > 40, "the end of one word and the start of the next"
    starts_quiet = [w[0] == 0 and w[-1] != 0 for w in windows]
    ends_quiet = [w[0] != 0 and w[-1] == 0 for w in windows]
    assert sum(starts_quiet) > 20 and sum(ends_quiet) > 20, "onsets out of quiet, and offsets"
    again = phrase_windows(words, 400, 8000, np.random.default_rng(4), rate=8000)
    np.testing.assert_array_equal(windows, again)
