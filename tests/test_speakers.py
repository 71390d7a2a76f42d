"""Speaker folds (training/speakers.py): no voice on both sides of a fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.negatives import speaker
from training.speakers import fold_data, fold_of
from training.speech import SpeechData, labels, split_paths


def fake_split() -> SpeechData:
    root = Path("/nowhere/mini_speech_commands")
    parts = ("train", "validation", "test")
    clips = {part: [(16000, np.full(4, index, np.int16))
                    for index, _ in enumerate(split_paths(root, part))] for part in parts}
    targets = {part: np.array([labels().index(p.parent.name) for p in split_paths(root, part)])
               for part in parts}
    return SpeechData(root, labels(), clips, targets)


def test_each_fold_holds_out_whole_speakers_and_together_they_cover_the_training_split() -> None:
    data = fake_split()
    speakers = [speaker(p) for p in split_paths(data.root, "train")]
    held_out_total = 0
    for fold in range(5):
        split = fold_data(data, fold, 5)
        trained = {speakers[int(c[1][0])] for c in split.clips["train"]}
        new = {speakers[int(c[1][0])] for c in split.clips["test"]}
        assert trained and new and not trained & new
        assert len(split.clips["train"]) + len(split.clips["test"]) == 6400
        assert split.clips["validation"] is data.clips["validation"]
        held_out_total += len(split.clips["test"])
        assert all(fold_of(s, 5) == fold for s in new)
    assert held_out_total == 6400


def test_negatives_are_split_by_speaker_and_noise_by_time() -> None:
    from training.negatives import noise_span, speaker_part

    parts = [speaker_part(f"{index:08x}") for index in range(5000)]
    shares = {part: parts.count(part) / len(parts) for part in ("train", "validation", "test")}
    assert abs(shares["train"] - 0.7) < 0.03 and abs(shares["test"] - 0.2) < 0.03
    assert speaker_part("0132a06d") == speaker_part("0132a06d")  # stable
    spans = [noise_span(1000, part) for part in ("train", "validation", "test")]
    assert [(s.start, s.stop) for s in spans] == [(0, 700), (700, 800), (800, 1000)]


def test_the_strangers_halves_split_a_folds_speakers_and_the_anchors_skip_them() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from kws_strangers import held_out

    from training.anchors import fold_keep

    data = fake_split()
    speakers = [speaker(p) for p in split_paths(data.root, "train")]
    for fold in range(5):
        halves = [held_out(data, fold, 5, half) for half in ("validation", "test")]
        voices = [{speakers[int(clip[0])] for _, clip in clips} for clips, _, _ in halves]
        assert voices[0] and voices[1] and not voices[0] & voices[1]
        assert all(fold_of(s, 5) == fold for s in voices[0] | voices[1])
        assert sum(len(clips) for clips, _, _ in halves) == sum(
            fold_of(s, 5) == fold for s in speakers)
        assert [len(v) for v in voices] == [count for _, _, count in halves]
        # What a fold model's anchors are sampled from: only the speakers it trained on.
        kept = {speakers[i] for i in fold_keep(data, fold, 5)}
        assert not kept & (voices[0] | voices[1])
