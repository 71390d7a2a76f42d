"""Speaker folds (training/speakers.py): no voice on both sides of a fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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


def test_household_takes_join_training_from_the_folds_members_never_their_test_take(
        tmp_path: Path, monkeypatch) -> None:
    """``training.speakers --household-takes``: the ceiling of enrolling trains on exactly
    the takes the household benchmark enrolls with, and on nothing it tests with."""
    import training.households as households_module
    from training.households import households, people
    from training.speakers import HOUSEHOLD_COPIES, with_household_takes

    (tmp_path / "words").mkdir()
    monkeypatch.setattr(households_module, "find_negatives", lambda: tmp_path)
    root = Path("/nowhere/mini_speech_commands")
    parts = ("train", "validation", "test")
    paths = {part: split_paths(root, part) for part in parts}
    # Each clip says which part and which file it is.
    clips = {part: [(16000, np.array([number, index], np.int16))
                    for index, _ in enumerate(paths[part])] for number, part in enumerate(parts)}
    targets = {part: np.array([labels().index(p.parent.name) for p in paths[part]])
               for part in parts}
    data = SpeechData(root, labels(), clips, targets)
    fold = 2
    split = fold_data(data, fold, 5)
    trained = with_household_takes(split, data, fold, 5, per_word=3)
    added = trained.clips["train"][len(split.clips["train"]):]
    added_targets = trained.targets["train"][len(split.clips["train"]):]
    assert added and len(added) == len(added_targets)
    assert trained.clips["train"][:len(split.clips["train"])] == split.clips["train"]
    homes = households(people(data, fold, 5))
    members = [person for home, _ in homes for person in home]
    tests = {tuple(clip.tolist()) for person in members for _, _, clip in person.tests()}
    takes: dict[tuple[int, ...], int] = {}
    for (_, clip), target in zip(added, added_targets, strict=True):
        part, index = (int(v) for v in clip)
        path = paths[parts[part]][index]
        assert fold_of(speaker(path), 5) == fold
        assert speaker(path) in {person.speaker for person in members}
        assert labels()[target] == path.parent.name
        assert tuple(clip.tolist()) not in tests
        takes[tuple(clip.tolist())] = takes.get(tuple(clip.tolist()), 0) + 1
    assert set(takes.values()) == {HOUSEHOLD_COPIES}
    per_person_word = {}
    for key in takes:
        path = paths[parts[key[0]]][key[1]]
        per_person_word[(speaker(path), path.parent.name)] = per_person_word.get(
            (speaker(path), path.parent.name), 0) + 1
    assert max(per_person_word.values()) <= 3


def test_a_misspelt_recipe_setting_is_refused_not_trained_as_the_recipe_unchanged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tinyml_core.errors import ConfigError
    from training.recipes import load_recipes
    from training.speakers import main

    kws_b = load_recipes()["kws_b"]
    tried = kws_b.with_settings({"room_probability": 0.2}, {"phrase_windows_per_epoch": 800})
    assert tried.augment["room_probability"] == 0.2 and tried.augment["speed"] == [0.95, 1.05]
    assert tried.open_set["phrase_windows_per_epoch"] == 800 and kws_b.open_set == \
        {"silence_per_epoch": 700, "silence_validation": 200}
    with pytest.raises(ConfigError, match="phrase_window_per_epoch"):
        kws_b.with_settings(open_set={"phrase_window_per_epoch": 800})
    with pytest.raises(ConfigError, match="room_probabilty"):
        kws_b.with_settings(augment={"room_probabilty": 0.5})
    with pytest.raises(ConfigError, match="no open_set table"):
        load_recipes()["forecast_a"].with_settings(open_set={"silence_per_epoch": 1})
    # In the file too, and on the command line before any data is read or model trained.
    text = (Path(__file__).parent.parent / "config" / "recipes.toml").read_text()
    bad = tmp_path / "recipes.toml"
    bad.write_text(text.replace("silence_per_epoch = 700, silence_validation = 200 }",
                                "silence_per_epoch = 700, silence_validaton = 200 }", 1))
    with pytest.raises(ConfigError, match="silence_validaton"):
        load_recipes(bad)
    with pytest.raises(SystemExit) as exit_info:
        main(["kws_b", "--open-set", "phrase_window_per_epoch=800",
              "--speech-dir", str(tmp_path / "none")])
    assert exit_info.value.code == 2
    assert "phrase_window_per_epoch" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, complaint", [
    (["--threshold", "0.56", "--record"], "--threshold scores one threshold"),
    (["--threshold", "0.56", "--choose-default"], "--threshold scores one threshold"),
    (["--threshold", "1.5"], "--threshold 1.5: threshold must be a probability (0-1)"),
])
def test_the_strangers_benchmark_refuses_a_threshold_it_cannot_score_or_store(
        arguments: list[str], complaint: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from kws_strangers import main

    # Refused before any fold model or dataset is looked for.
    monkeypatch.setattr(sys, "argv", ["kws_strangers.py", "--folds-dir", "/nonexistent",
                                      *arguments])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err
