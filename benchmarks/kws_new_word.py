"""A word of the household's own, learned from its members' takes (issue 41, item 3).

    .venv/bin/python benchmarks/kws_new_word.py [--model kws_e] [--words happy bed cat]
        [--takes 2] [--keyword-clips 60] [--json FILE]

No keyword model here was taught these words as keywords, and none heard these voices: the
new word's speakers are those of the negatives' held-back part (never trained on) who said
it twice or more, three to a household. Each member enrolls all but their last take of the
word (at most ``--takes``), and half of their other words as ordinary speech; the last take
is the test. The eight keywords are the fold's held-out speakers' (each household is given
to a speaker fold in turn, answered by that fold's model: it never heard them either).

One stream per household, built as kws_stream.py builds its own: the members' test takes of
the new word, ``--keyword-clips`` of the fold's keyword clips, the other words of the
held-back part (never the new word, never the members' enrolled clips) alone and in
phrases, and noise bursts. The collector's keyword path answers it with the shipped layer
and with the node's layer after enrolling the word (collector/enrollment/store.py, as ``collector
enroll --word`` makes it). Prints the new word's recall, the keywords' recall before and
after, and false accepts an hour (and how many of them said the new word).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.kws_household import fold_anchors  # noqa: E402
from collector.enrollment.adapt import Takes, adapt, adapt_settings  # noqa: E402
from collector.settings import CollectorOptions, scan_settings  # noqa: E402
from tinyml_core.keywords import smoothing_in_force, threshold_in_force  # noqa: E402
from tinyml_core.messages import UNKNOWN_LABEL, KeywordResult  # noqa: E402
from tinyml_core.models import load_keyword_spotter  # noqa: E402
from training.climate import DataError  # noqa: E402
from training.negatives import Negatives, find_negatives, speaker, speaker_part  # noqa: E402
from training.running_speech import talk_stream  # noqa: E402
from training.speakers import fold_dir, fold_of  # noqa: E402
from training.speech import SpeechData, read_clip, split_paths  # noqa: E402
from training.stream import (  # noqa: E402
    MATCH_S,
    RATE,
    START_TIME,
    ScansOnce,
    Stream,
    StreamResult,
    build_stream,
    capture_events,
    combined,
    run_stream,
    score,
)

Clip = tuple[int, np.ndarray]
MEMBERS = 3


@dataclass
class Member:
    speaker: str
    word_takes: list[Clip]  # of the new word, the last is the test
    other_words: list[tuple[str, Clip]]  # their other (non-keyword) words, by name


def members_saying(word: str, negatives_dir: Path) -> list[Member]:
    """The held-back part's speakers who said ``word`` twice or more, in a fixed order."""
    clips: dict[str, dict[str, list[Clip]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted((negatives_dir / "words").glob("*/*.wav")):
        who = speaker(path)
        if speaker_part(who) == "test":
            clips[who][path.parent.name].append(read_clip(path))
    chosen = [Member(who, said[word], [(name, clip) for name, takes in sorted(said.items())
                                       if name != word for clip in takes])
              for who, said in clips.items() if len(said.get(word, ())) >= 2]
    return sorted(chosen, key=lambda m: zlib.crc32(m.speaker.encode()))


def fold_keywords(speech: SpeechData, fold: int, folds: int) -> list[tuple[str, int, np.ndarray]]:
    """The fold's held-out speakers' keyword clips (mini speech commands train split)."""
    return [(speech.labels[target], *clip) for path, clip, target in zip(
        split_paths(speech.root, "train"), speech.clips["train"], speech.targets["train"],
        strict=True) if fold_of(speaker(path), folds) == fold]


def recall_of(stream: Stream, results: list[KeywordResult], words: set[str]
              ) -> tuple[int, int, int]:
    """(said, found, false results naming one of ``words``): the stream's items of
    ``words`` and the results that match them, as training.stream.score matches."""
    truth = [item for item in stream.keywords() if item.label in words]
    starts = np.array([item.start / stream.rate for item in truth])
    matched = np.zeros(len(truth), dtype=bool)
    false = 0
    for result in results:
        if result.label == UNKNOWN_LABEL or result.label not in words:
            continue
        at = result.input_time - START_TIME
        near = np.flatnonzero(np.abs(starts - at) <= MATCH_S) if len(truth) else []
        hit = [i for i in near if truth[i].label == result.label and not matched[i]]
        if hit:
            matched[hit[0]] = True
        else:
            false += 1
    return len(truth), int(matched.sum()), false


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Needs mini speech commands, negatives.tar.xz and "
                                            "the fold models.")
    parser.add_argument("--model", default=CollectorOptions().keyword_model,
                        help="keyword model (default: the collector's, %(default)s)")
    parser.add_argument("--words", nargs="+", default=["happy", "bed", "cat"],
                        help="new words, from the negatives (default: the three with "
                             "speakers who said them twice or more)")
    parser.add_argument("--takes", type=int, default=2,
                        help="at most this many takes of the word per member (default 2)")
    parser.add_argument("--keyword-clips", type=int, default=60, metavar="N",
                        help="the fold's keyword clips in each household's stream")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--folds-dir", type=Path, default=REPO / "data" / "folds")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--threshold", type=float, help="default: the shipped model's")
    parser.add_argument("--thresholds", type=float, nargs="+",
                        default=[0.5, 0.6, 0.7, 0.8, 0.9], help="thresholds to sweep")
    parser.add_argument("--floors", type=float, nargs="+", metavar="LIKENESS",
                        help="likeness to a take at which the word is accepted, each tried "
                             "(default: the model's enrollment setting own_word_floor)")
    parser.add_argument("--slope", type=float, metavar="LOGITS",
                        help="logits per 1.0 of likeness beyond the floor (default: the "
                             "model's enrollment setting own_word_slope)")
    parser.add_argument("--anchors", type=int, default=1000, metavar="N")
    parser.add_argument("--guests", type=int, default=6, metavar="N",
                        help="voices not of the household saying the word, per household "
                             "(default 6)")
    parser.add_argument("--no-running-speech", dest="running_speech", action="store_false",
                        help="leave out the stream of running speech (Debian's Asterisk "
                             "prompts, fetched into data/ when missing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args()
    folds = [k for k in range(args.folds)
             if (fold_dir(args.folds_dir, args.model, k, args.folds) / "manifest.json").exists()]
    if not folds:
        parser.error(f"no fold models in {args.folds_dir}: train them with `python -m "
                     f"training.speakers {args.model} --keep {args.folds_dir}`")
    speech = SpeechData.load(parts=("train",), show_progress=False)
    negatives = Negatives.load()
    noise = negatives.noise_audio("test", RATE)
    shipped = load_keyword_spotter(args.models, args.model)
    settings = adapt_settings(shipped.entry)
    if args.slope is not None:
        settings = replace(settings, own_word_slope=args.slope)
    threshold = args.threshold or threshold_in_force(scan_settings(CollectorOptions()), shipped)
    smoothing = smoothing_in_force(scan_settings(CollectorOptions()), shipped)
    sweep = sorted({*args.thresholds, threshold})
    floors = sorted({*(args.floors or ()), settings.own_word_floor})
    print(f"{args.model} at threshold {threshold:.2f}; folds {folds}; new words "
          f"{', '.join(args.words)}; up to {args.takes} takes per member; likeness floors "
          f"{', '.join(f'{f:.2f}' for f in floors)}, slope {settings.own_word_slope:g}")
    loaded: dict[int, Any] = {}
    talk = running_speech(shipped.keywords, noise, args.seed) \
        if args.running_speech else None
    talking: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(2, int))
    heard_guests: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(2, int))
    rows: dict[tuple[str, float], list[StreamResult]] = defaultdict(list)
    counts: dict[tuple[str, float], np.ndarray] = defaultdict(lambda: np.zeros(5, int))
    report, timings, number = [], [], 0
    for word in args.words:
        members = members_saying(word, find_negatives())
        for start in range(0, len(members) - MEMBERS + 1, MEMBERS):
            home = members[start:start + MEMBERS]
            fold = folds[number % len(folds)]
            seed = args.seed * 10_000 + number
            number += 1
            if fold not in loaded:
                directory = fold_dir(args.folds_dir, args.model, fold, args.folds)
                base = load_keyword_spotter(directory, args.model, embedding=True)
                anchors = fold_anchors(base, speech, negatives, fold, args.folds, args.anchors,
                                       args.seed) if args.anchors else None
                loaded[fold] = (directory, base, anchors, fold_keywords(speech, fold,
                                                                         args.folds))
            directory, base, anchors, keyword_clips = loaded[fold]
            rng = np.random.default_rng(seed)
            picked = [keyword_clips[i] for i in
                      rng.permutation(len(keyword_clips))[:args.keyword_clips]]
            tests = [(word, *m.word_takes[-1]) for m in home]
            # Voices of the held-back part that said the word and are not of this household:
            # guests saying it (their first take each).
            guests = [(word, *m.word_takes[0]) for m in members if m not in home][:args.guests]
            guest_stream = build_stream(guests, [], noise, seed=seed + 1,
                                        noise_bursts_per_keyword=0.0)
            guest_events = capture_events(guest_stream)
            enrolled = [Takes(m.speaker, {word: m.word_takes[:-1][:args.takes]},
                              [clip for _, clip in m.other_words[:len(m.other_words) // 2]])
                        for m in home]
            kept_back = {id(clip) for m in home for _, clip in m.other_words}
            others = [clip for m in home for _, clip in m.other_words[len(m.other_words) // 2:]]
            others += [clip for name, clip in zip(negatives.word_names["test"],
                                                  negatives.words["test"], strict=True)
                       if name != word and id(clip) not in kept_back]
            stream = build_stream(tests + picked, others, noise, seed=seed,
                                  noise_bursts_per_keyword=0.5)
            events = capture_events(stream)
            started = time.perf_counter()
            head = adapt(base, enrolled, settings, anchors, words=[word])
            timings.append(time.perf_counter() - started)
            line: dict[str, Any] = {"word": word, "fold": fold,
                                    "members": [m.speaker for m in home],
                                    "takes": sum(len(t.words[word]) for t in enrolled),
                                    "minutes": round(stream.hours * 60, 1)}
            assert head.own_words is not None
            for name, spotter in [("shipped", base)] + [
                    (_floor_name(floor), base.with_head(replace(
                        head, own_words=replace(head.own_words, floor=floor,
                                                slope=settings.own_word_slope))))
                    for floor in floors]:
                once = ScansOnce(spotter)
                for value in sweep:
                    settings_here = replace(scan_settings(CollectorOptions()), threshold=value,
                                            smoothing=smoothing)
                    results = run_stream(events, directory, args.model, settings_here,
                                         spotter=once)
                    scored = score(stream, results, value)
                    said, found, false_word = recall_of(stream, results, {word})
                    said_k, found_k, _ = recall_of(stream, results, set(base.keywords))
                    rows[(name, value)].append(scored)
                    counts[(name, value)] += [said, found, false_word, said_k, found_k]
                    if value == threshold:
                        line[name] = {"word_found": found, "word_said": said,
                                      "keywords_found": found_k, "keywords_said": said_k,
                                      "false_accepts": scored.false_accepts,
                                      "false_saying_the_word": false_word}
                guest_results = run_stream(guest_events, directory, args.model, replace(
                    scan_settings(CollectorOptions()), threshold=threshold,
                    smoothing=smoothing), spotter=spotter)
                said_g, found_g, _ = recall_of(guest_stream, guest_results, {word})
                heard_guests[name] += [said_g, found_g]
                line[name]["guests"] = {"word_found": found_g, "word_said": said_g}
                if talk is not None:  # the household talking: every result is false
                    heard = run_stream(talk[1], directory, args.model, replace(
                        scan_settings(CollectorOptions()), threshold=threshold,
                        smoothing=smoothing), spotter=spotter)
                    said_word = sum(result.label == word for result in heard)
                    other = sum(result.label not in (word, UNKNOWN_LABEL) for result in heard)
                    talking[name] += [said_word, other]
                    line[name]["running_speech"] = {"saying_the_word": said_word,
                                                    "keywords": other}
            report.append(line)
            chosen = line[_floor_name(settings.own_word_floor)]
            print(f"{word} household {number} (fold {fold}, {line['takes']} takes): the word "
                  f"{chosen['word_found']}/{len(tests)}, keywords "
                  f"{line['shipped']['keywords_found']} -> "
                  f"{chosen['keywords_found']}/{len(picked)}, false accepts "
                  f"{line['shipped']['false_accepts']} -> {chosen['false_accepts']} "
                  f"(at likeness {settings.own_word_floor:.2f})", flush=True)
    if not report:
        parser.error("no households: no held-back speaker said these words twice")
    print(f"\n{len(report)} households of {MEMBERS}; never heard by their fold's model")
    print(f"{'':14} {'threshold':>9} {'new word':>9} {'keywords':>9} {'false/h':>8} "
          f"{'saying it':>9} {'hours':>6}")
    summary: dict[str, Any] = {}
    names = ["shipped"] + [_floor_name(floor) for floor in floors]
    for value in sweep:
        for name in names:
            said, found, false_word, said_k, found_k = counts[(name, value)]
            total = combined(rows[(name, value)])
            word_recall = found / said if name != "shipped" else 0.0
            print(f"{name:14} {value:>9.2f} {word_recall:>9.1%} {found_k / said_k:>9.1%} "
                  f"{total.false_per_hour:>8.1f} {false_word:>9} {total.hours:>6.2f}"
                  + ("  <- default" if value == threshold else ""))
            summary[f"{name} {value:.2f}"] = {
                "word_recall": round(word_recall, 4), "word_said": int(said),
                "keyword_recall": round(found_k / said_k, 4), "keywords_said": int(said_k),
                "false_accepts_per_hour": round(total.false_per_hour, 2),
                "false_accepts": total.false_accepts, "false_saying_the_word": int(false_word),
                "false_by_kind": total.by_kind, "hours": round(total.hours, 3)}
    said_g = heard_guests[names[0]][0]
    print(f"\nguests (held-back voices not of the household) saying the word, {said_g} takes: "
          "found " + ", ".join(f"{name} {heard_guests[name][1] / max(1, said_g):.1%}"
                               for name in names[1:]))
    for name in names[1:]:
        summary[f"guests {name}"] = {"word_found": int(heard_guests[name][1]),
                                     "word_said": int(said_g)}
    if talk is not None:
        hours = talk[0].hours * len(report)
        print(f"\nrunning speech (Asterisk's held-back prompts, {talk[0].hours * 60:.1f} min "
              f"after each household enrolled: {hours:.2f} h), at {threshold:.2f}: results "
              "saying the word / a keyword, an hour")
        for name in names:
            said_word, other = talking[name]
            print(f"{name:14} {said_word / hours:>8.1f} {other / hours:>8.1f}")
            summary[f"running speech {name}"] = {
                "saying_the_word_per_hour": round(said_word / hours, 2),
                "keywords_per_hour": round(other / hours, 2), "hours": round(hours, 3)}
    print(f"learning the word: {np.mean(timings):.2f} s per household of {MEMBERS} "
          f"(max {max(timings):.2f} s)")
    if args.json:
        args.json.write_text(json.dumps({"threshold": threshold, "households": report,
                                         "summary": summary, "seconds": timings}, indent=1))
    return 0


def running_speech(keywords: tuple[str, ...], noise: list[tuple[str, np.ndarray]],
                   seed: int) -> tuple[Stream, list[bytes]] | None:
    """The held-back Asterisk prompts as a stream and its events; None when unavailable."""
    try:
        return talk_stream(keywords, "test", noise, seed)
    except (DataError, OSError) as error:
        print(f"no running speech: {error}")
        return None


def _floor_name(floor: float) -> str:
    return f"likeness {floor:.2f}"


if __name__ == "__main__":
    sys.exit(main())
