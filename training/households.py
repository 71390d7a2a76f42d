"""Households of speakers a speaker fold's model never heard (issue 26's benchmark).

A speaker fold (``training.speakers``) leaves out a fifth of the speakers; those of them who
said at least four of the words at least twice (mini speech commands, train and test split;
the validation split chose the fold model's epoch) make households of three members plus
voices that did not enroll there. A member enrolls with up to N takes of each word they said
twice or more, never the last one: that is their test. benchmarks/kws_household.py enrolls
them and measures; ``training.speakers --household-takes N`` trains a fold model with the
same takes in its training data, the most a model can get from them.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .negatives import find_negatives, speaker
from .speakers import fold_of
from .speech import SpeechData, read_clip, split_paths

Clip = tuple[int, np.ndarray]
MEMBERS = 3


@dataclass
class Person:
    speaker: str
    takes: dict[str, list[Clip]]  # word → takes, in a fixed order (the last is the test)
    other_words: list[Clip]  # their own non-keywords

    def enrollment_takes(self, per_word: int) -> dict[str, list[Clip]]:
        """Up to ``per_word`` takes of each word said twice or more, never the last."""
        return {word: clips[:min(per_word, len(clips) - 1)]
                for word, clips in self.takes.items() if len(clips) >= 2}

    def enrollment_speech(self) -> list[Clip]:
        """Half of their own other words: what they enroll as ordinary speech."""
        return self.other_words[:len(self.other_words) // 2]

    def tests(self) -> list[tuple[str, int, np.ndarray]]:
        return [(word, *clips[-1]) for word, clips in self.takes.items() if len(clips) >= 2]

    def all_takes(self) -> list[tuple[str, int, np.ndarray]]:
        return [(word, *clip) for word, clips in self.takes.items() for clip in clips]


def people(speech: SpeechData, fold: int, folds: int) -> list[Person]:
    """The fold's speakers who said four or more words twice or more, in a fixed order."""
    takes: dict[str, dict[str, list[Clip]]] = defaultdict(lambda: defaultdict(list))
    for part in ("train", "test"):
        for path, clip in zip(split_paths(speech.root, part), speech.clips[part], strict=True):
            if fold_of(speaker(path), folds) == fold:
                takes[speaker(path)][path.parent.name].append(clip)
    own: dict[str, list[Clip]] = defaultdict(list)
    for path in sorted((find_negatives() / "words").glob("*/*.wav")):
        if speaker(path) in takes:
            own[speaker(path)].append(read_clip(path))
    chosen = [Person(s, dict(sorted(words.items())), own[s]) for s, words in takes.items()
              if sum(len(clips) >= 2 for clips in words.values()) >= 4]
    return sorted(chosen, key=lambda p: zlib.crc32(p.speaker.encode()))


def households(members: list[Person], guests: int = 1
               ) -> list[tuple[list[Person], list[Person]]]:
    """Three enrolled members per household, and ``guests`` voices that did not enroll: its
    own fourth member first, then the fold's next speakers, who are strangers to this
    household (members of the next households, never enrolled here)."""
    size = MEMBERS + 1
    homes = []
    for i in range(0, len(members) - size + 1, size):
        visitors = [members[(i + MEMBERS + k) % len(members)] for k in range(guests)]
        homes.append((members[i:i + MEMBERS], visitors))
    return homes


def enrolled_takes(speech: SpeechData, fold: int, folds: int, per_word: int
                   ) -> list[tuple[str, Clip]]:
    """(word, clip) of every take the fold's households' members enroll with."""
    return [(word, clip) for members, _ in households(people(speech, fold, folds))
            for person in members
            for word, clips in person.enrollment_takes(per_word).items() for clip in clips]
