"""Keyword spotting for voices the model never heard: the speaker folds' streams.

    .venv/bin/python benchmarks/kws_strangers.py [--model kws_e] [--folds-dir data/folds]
        [--choose-default [--record] | --threshold T] [--rooms SEED] [--json FILE]

The course split's test speakers also spoke in training, so every number measured on it (and
on the stream kws_stream.py builds from it) is a number for familiar voices. Here each speaker
fold's model (``python -m training.speakers kws_b --keep data/folds``: the recipe trained
without one fifth of the training split's speakers) is scored on the speakers it never heard.
A fold's held-out speakers are halved by speaker: the validation half's stream is where a
default is chosen, the test half's where it is measured. Each stream is built as
kws_stream.py builds its own (training/stream.py: every keyword clip once, the negatives'
held-back other words alone and in phrases, noise bursts, over a room tone), cut by the
node's capture and answered by the collector's keyword path at each threshold. The folds'
counts are added up: recall and false accepts an hour over all of them.

Also, single one-second clips through the same decision: the right word for the test
halves' keyword clips, and ``unknown`` for the held-back other words and noise crops.

``--rooms SEED`` hears every stream and clip in rooms nobody trained on (training/rooms.py):
each spoken item from its own talker position in one of 40 simulated rooms, with its echo,
and the whole stream through one random cheap microphone.

``--choose-default`` picks, on the validation halves, the threshold and the smoothing (1, 3,
5 or 7 windows averaged) that find the most keywords at <= 5 false accepts an hour (the rule
kws_stream.py used on the course split); ``--record`` stores them as the model's
``default_threshold`` and ``default_smoothing`` with this evidence, and the strangers'
numbers at them, in models/manifest.json, and refreshes models/REPORT.md. ``--threshold T``
scores another threshold than the model's (a node that sends single clips can afford a lower
one than a live microphone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector.settings import CollectorOptions, scan_settings  # noqa: E402
from tinyml_core.keywords import (  # noqa: E402
    ScanSettings,
    find_keywords,
    smoothing_in_force,
    threshold_in_force,
)
from tinyml_core.models import (  # noqa: E402
    KeywordSpotter,
    load_keyword_spotter,
    read_manifest,
    write_manifest_entry,
)
from training.negatives import Negatives, silence_clips, speaker  # noqa: E402
from training.rooms import clips_in_rooms, stream_in_rooms  # noqa: E402
from training.speakers import fold_dir, fold_of  # noqa: E402
from training.speech import SpeechData, split_paths  # noqa: E402
from training.stream import (  # noqa: E402
    OTHER_WORDS_PER_KEYWORD,
    RATE,
    THRESHOLD_CHOICES,
    ScansOnce,
    StreamResult,
    build_stream,
    capture_events,
    choose_threshold,
    combined,
    print_table,
    threshold_table,
)

HALVES = ("validation", "test")


def half_of(speaker_id: str) -> str:
    """Which half of its fold a held-out speaker is in (stable, independent of the fold)."""
    return HALVES[zlib.crc32(f"{speaker_id}/half".encode()) % 2]


@dataclass
class FoldPart:
    """One fold's held-out speakers of one half: their clips and their stream's table."""

    fold: int
    half: str
    models: Path  # the fold model's folder
    speakers: int
    clips: list[tuple[int, np.ndarray]]
    said: list[str]
    minutes: float
    events: int
    rows: dict[int, list[StreamResult]]  # by smoothing, then threshold


def held_out(speech: SpeechData, fold: int, folds: int, half: str
             ) -> tuple[list[tuple[int, np.ndarray]], np.ndarray, int]:
    speakers = [speaker(path) for path in split_paths(speech.root, "train")]
    chosen = [i for i, s in enumerate(speakers)
              if fold_of(s, folds) == fold and half_of(s) == half]
    return ([speech.clips["train"][i] for i in chosen], speech.targets["train"][chosen],
            len({speakers[i] for i in chosen}))


def fold_part(speech: SpeechData, negatives: Negatives, models: Path, model: str, fold: int,
              folds: int, half: str, thresholds: list[float], base: ScanSettings,
              smoothings: list[int], seed: int, rooms_seed: int | None = None) -> FoldPart:
    clips, targets, speakers = held_out(speech, fold, folds, half)
    keywords = [(speech.labels[t], rate, clip) for (rate, clip), t in
                zip(clips, targets, strict=True)]
    # Same recipe as the course-split stream; a seed per fold and half.
    stream = build_stream(keywords, negatives.words[half], negatives.noise_audio(half, RATE),
                          seed=seed * 1000 + fold * 10 + HALVES.index(half),
                          min_other_words=round(OTHER_WORDS_PER_KEYWORD * len(keywords)))
    if rooms_seed is not None:
        stream = stream_in_rooms(stream, rooms_seed + fold * 10 + HALVES.index(half))
    payloads = capture_events(stream)
    spotter = ScansOnce(load_keyword_spotter(models, model))  # scanned once for all settings
    rows = {windows: threshold_table(stream, payloads, models, model, thresholds,
                                     replace(base, smoothing=windows), spotter)
            for windows in smoothings}
    if rooms_seed is not None:  # the single clips in rooms too
        clips = clips_in_rooms(clips, rooms_seed + 5 + fold * 10 + HALVES.index(half))
    return FoldPart(fold, half, models, speakers, clips, [speech.labels[t] for t in targets],
                    stream.hours * 60, len(payloads), rows)


def pooled(parts: list[FoldPart], smoothing: int) -> list[StreamResult]:
    """The folds' streams as one: counts and hours added up, per threshold."""
    return [combined([part.rows[smoothing][index] for part in parts])
            for index in range(len(parts[0].rows[smoothing]))]


def surest(spotter: KeywordSpotter, clips: list[tuple[int, np.ndarray]],
           settings: ScanSettings) -> tuple[list[str], np.ndarray]:
    """Each clip sent alone, decided as the collector decides one: its surest word and that
    word's smoothed probability (the clip is that word at any threshold up to it, else
    ``unknown``)."""
    words, scores = [], []
    for rate, clip in clips:
        detections, _ = find_keywords(spotter, clip, rate, replace(settings, threshold=0.0))
        best = max(detections, key=lambda d: d.score)
        words.append(best.label)
        scores.append(best.score)
    return words, np.array(scores)


@dataclass
class SingleScores:
    """One half's single clips, scored once for every threshold."""

    said: list[str] = field(default_factory=list)  # keyword clips: the word said
    words: list[str] = field(default_factory=list)  # and the surest word heard
    scores: list[float] = field(default_factory=list)
    top: int = 0  # top class right (no threshold)
    other: list[np.ndarray] = field(default_factory=list)  # per fold model: other words' scores
    noise: list[np.ndarray] = field(default_factory=list)  # and the noise crops'
    other_clips: int = 0
    noise_clips: int = 0

    def at(self, threshold: float) -> dict[str, Any]:
        scores = np.array(self.scores)
        heard = np.array(self.words)
        total = len(self.said)
        right = int(np.sum((heard == np.array(self.said)) & (scores >= threshold)))
        return {"threshold": threshold, "keyword_clips": total,
                "top_class_right": self.top / total, "right_word": right / total,
                "answered_unknown": float(np.mean(scores < threshold)),
                "other_word_clips": self.other_clips,
                "other_words_unknown": float(np.mean([np.mean(o < threshold)
                                                      for o in self.other])),
                "noise_clips": self.noise_clips,
                "noise_unknown": float(np.mean([np.mean(n < threshold) for n in self.noise]))}


# What a single clip's default must keep (issue 40's targets): other words and noise
# answered "unknown" this often; the most keywords right within that.
CLIP_OTHER_WORDS_UNKNOWN = 0.97
CLIP_NOISE_UNKNOWN = 0.99


def single_scores(model: str, parts: list[FoldPart], negatives: Negatives, half: str,
                  settings: ScanSettings, rooms_seed: int | None = None) -> SingleScores:
    """Single clips of one half: each fold's keywords by its own model, and the negatives'
    other words of that part (in rooms with ``rooms_seed``) and noise crops by every fold's
    model (their rates averaged)."""
    negatives_part = "test" if half == "test" else "validation"
    other_words = negatives.words[negatives_part] if rooms_seed is None else \
        clips_in_rooms(negatives.words[negatives_part], rooms_seed + 7)
    rng = np.random.default_rng(0)
    noise_clips = []
    for recording in negatives.noise_audio(negatives_part, RATE):  # as evaluate_negatives
        noise_clips += [(RATE, crop) for crop in
                        silence_clips([recording], 100, RATE, rng, (-50.0, -20.0))]
    scored = SingleScores(other_clips=len(other_words), noise_clips=len(noise_clips))
    for part in parts:
        fold_spotter = load_keyword_spotter(part.models, model)
        words, scores = surest(fold_spotter, part.clips, settings)
        scored.said += part.said
        scored.words += words
        scored.scores += scores.tolist()
        batch = np.stack([fold_spotter.features(clip, rate) for rate, clip in part.clips])
        best = fold_spotter.classify_features(batch).argmax(axis=1)
        scored.top += sum(fold_spotter.labels[b] == s for b, s in
                          zip(best, part.said, strict=True))
        scored.other.append(surest(fold_spotter, other_words, settings)[1])
        scored.noise.append(surest(fold_spotter, noise_clips, settings)[1])
    return scored


def choose_clip_threshold(validation: SingleScores) -> float | None:
    """The threshold for single clips: the most keywords right while other words and noise
    stay ``unknown`` at least CLIP_OTHER_WORDS_UNKNOWN and CLIP_NOISE_UNKNOWN of the time."""
    rows = [validation.at(t) for t in THRESHOLD_CHOICES]
    allowed = [row for row in rows if row["other_words_unknown"] >= CLIP_OTHER_WORDS_UNKNOWN
               and row["noise_unknown"] >= CLIP_NOISE_UNKNOWN]
    best = max(allowed, key=lambda row: (row["right_word"], -row["threshold"]), default=None)
    return None if best is None else float(best["threshold"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Needs mini speech commands, negatives.tar.xz and "
                                            "the fold models (python -m training.speakers "
                                            "MODEL --keep data/folds).")
    parser.add_argument("--model", default=CollectorOptions().keyword_model,
                        help="keyword model (default: the collector's, %(default)s)")
    parser.add_argument("--folds", type=int, default=5, help="speaker folds (default 5)")
    parser.add_argument("--fold", type=int, action="append", metavar="K",
                        help="score only these folds (repeatable; default: all)")
    parser.add_argument("--folds-dir", type=Path, default=REPO / "data" / "folds",
                        help="where training.speakers --keep put the fold models")
    parser.add_argument("--models", type=Path, default=REPO / "models",
                        help="the shipped models (whose default threshold is used, or set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--choose-default", action="store_true",
                        help="choose the default threshold on the validation halves (the most "
                             "keywords at <= --max-false-per-hour)")
    parser.add_argument("--max-false-per-hour", type=float, default=5.0)
    parser.add_argument("--smoothing", type=int, metavar="N",
                        help="windows averaged before the threshold (default: the model's "
                             "own; --choose-default without it tries 1, 3, 5 and 7)")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="score the streams and single clips at this threshold instead of "
                             "the model's own (e.g. a lower one for a node that sends single "
                             "clips)")
    parser.add_argument("--record", action="store_true",
                        help="store the default (with --choose-default) and the strangers' "
                             "numbers in the manifest (with --rooms: beside them, as "
                             "strangers_in_rooms); refresh models/REPORT.md")
    parser.add_argument("--rooms", type=int, metavar="SEED",
                        help="hear every stream and clip through simulated rooms and a "
                             "microphone drawn with this seed (training/rooms.py; training "
                             "draws its rooms with the recipe's seed, so use another)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the numbers as JSON")
    args = parser.parse_args()
    if args.record and args.rooms is not None and args.choose_default:
        parser.error("the defaults are chosen on the streams as recorded: --rooms --record "
                     "stores the rooms' numbers at them, without --choose-default")
    ships = args.model in read_manifest(args.models)
    if args.record and not ships:
        parser.error(f"--record stores a shipped model's numbers; {args.model} is not in "
                     f"{args.models}")
    if args.record and args.smoothing is not None:
        parser.error("--record stores what the collector does: the model's own smoothing, or "
                     "the one --choose-default picks")
    if args.threshold is not None and (args.record or args.choose_default):
        parser.error("--threshold scores one threshold; --choose-default chooses one and "
                     "--record stores the model's")
    if args.threshold is not None:
        try:  # the collector's own check of a threshold
            ScanSettings(threshold=args.threshold)
        except ValueError as error:
            parser.error(f"--threshold {args.threshold}: {error}")
    started = time.perf_counter()
    folds = {}
    for fold in args.fold or range(args.folds):
        if not 0 <= fold < args.folds:
            parser.error(f"--fold must be within 0..{args.folds - 1}")
        directory = fold_dir(args.folds_dir, args.model, fold, args.folds)
        if not (directory / "manifest.json").exists():
            parser.error(f"{directory}: no fold model; train them with `python -m "
                         f"training.speakers {args.model} --folds {args.folds} --keep "
                         f"{args.folds_dir}`")
        folds[fold] = directory
    speech = SpeechData.load(parts=("train",), show_progress=False)
    negatives = Negatives.load()
    # A recipe that does not ship (kws_b_ceiling) has no defaults of its own: its first
    # fold's (the build's), until --choose-default chooses them.
    shipped = load_keyword_spotter(
        args.models if ships else next(iter(folds.values())), args.model)
    base = scan_settings(CollectorOptions())
    if args.smoothing is not None:
        base = replace(base, smoothing=args.smoothing)
    if args.threshold is not None:
        base = replace(base, threshold=args.threshold)
    default = threshold_in_force(base, shipped)
    windows = smoothing_in_force(base, shipped)
    thresholds = sorted({*THRESHOLD_CHOICES, default})
    smoothings = sorted({*SMOOTHING_CHOICES, windows}) if args.choose_default and \
        args.smoothing is None else [windows]
    parts: dict[str, list[FoldPart]] = {half: [] for half in HALVES}
    for half in HALVES:
        for fold, directory in folds.items():
            part = fold_part(speech, negatives, directory, args.model, fold, args.folds, half,
                             thresholds, base, smoothings, args.seed, args.rooms)
            parts[half].append(part)
            print(f"fold {fold} {half} half: {part.speakers} speakers, {len(part.clips)} "
                  f"keywords, {part.minutes:.1f} min, {part.events} sound events "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    by_smoothing = {n: {half: pooled(parts[half], n) for half in HALVES} for n in smoothings}
    if args.choose_default:
        best = {}
        for n in smoothings:
            chosen = choose_threshold(by_smoothing[n]["validation"], args.max_false_per_hour)
            if chosen is not None:
                best[n] = chosen
                at = next(r for r in by_smoothing[n]["test"] if r.threshold == chosen.threshold)
                print(f"smoothing {n}: validation {chosen.recall:.1%} at "
                      f"{chosen.false_per_hour:.1f}/h at {chosen.threshold:.2f}; test "
                      f"{at.recall:.1%} at {at.false_per_hour:.1f}/h")
        if not best:
            print(f"no threshold stays within {args.max_false_per_hour:g} false accepts an "
                  "hour on the validation halves: the default is left as it is")
        else:  # the most keywords; on a tie fewer false accepts, then the model's own
            current = windows
            windows = max(best, key=lambda n: (best[n].recall, -best[n].false_per_hour,
                                               n == current))
            default = best[windows].threshold
    tables = by_smoothing[windows]
    report: dict[str, Any] = {"model": args.model, "folds": args.folds, "rooms": args.rooms,
                              "smoothing": windows,
                              "folds_scored": sorted(folds), "seed": args.seed,
                              "default_threshold": default}
    for half in HALVES:
        minutes = sum(p.minutes for p in parts[half])
        keywords = sum(len(p.clips) for p in parts[half])
        speakers = sum(p.speakers for p in parts[half])
        print(f"\n{args.model}, {half} halves of {len(folds)} of {args.folds} folds: "
              f"{speakers} speakers never heard, {keywords} keywords, {minutes:.0f} min; "
              f"smoothed over {windows} windows"
              + (f"; in simulated rooms (seed {args.rooms})" if args.rooms is not None else ""))
        print_table([r for r in tables[half] if r.threshold in (*THRESHOLDS_SHOWN, default)],
                    default, "default" if args.threshold is None else "--threshold")
        at_default = next(r for r in tables[half] if abs(r.threshold - default) < 1e-9)
        report[half] = {"minutes": round(minutes, 1), "keywords": keywords,
                        "speakers": speakers, "at_default": at_default.row(),
                        "rows": [r.row() for r in tables[half]],
                        "per_fold": [next(r for r in p.rows[windows]
                                          if abs(r.threshold - default) < 1e-9).row()
                                     | {"fold": p.fold} for p in parts[half]]}
    print(f"\ntest halves at {default:.2f}, per fold: " + "; ".join(
        f"{row['fold']}: {row['recall']:.1%} at {row['false_accepts_per_hour']:.1f}/h"
        for row in report["test"]["per_fold"]))
    clip_settings = replace(base, smoothing=windows)
    test_singles = single_scores(args.model, parts["test"], negatives, "test", clip_settings,
                                 args.rooms)
    single = test_singles.at(default)
    print_single("single clips at the sound events' threshold", single, windows)
    report["singles"] = single
    clip_default = args.threshold if args.threshold is not None else \
        shipped.contract.clip_threshold
    if args.choose_default:
        validation_singles = single_scores(args.model, parts["validation"], negatives,
                                           "validation", clip_settings, args.rooms)
        chosen_clip = choose_clip_threshold(validation_singles)
        if chosen_clip is None:
            print(f"no threshold keeps {CLIP_OTHER_WORDS_UNKNOWN:.0%} of other words and "
                  f"{CLIP_NOISE_UNKNOWN:.0%} of noise unknown on the validation halves: the "
                  "clip default stays the sound events'")
            clip_default = default
        else:
            clip_default = chosen_clip
            report["clip_validation"] = validation_singles.at(chosen_clip)
    report["default_clip_threshold"] = clip_default
    report["singles_at_clip_default"] = test_singles.at(clip_default)
    print_single("single clips at the clip threshold", report["singles_at_clip_default"],
                 windows)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.record:
        record(args, report)
    return 0


def print_single(what: str, single: dict[str, Any], windows: int) -> None:
    print(f"{what} {single['threshold']:.2f} (smoothing {windows}): the right word for "
          f"{single['right_word']:.1%} of {single['keyword_clips']} keyword clips "
          f"({single['answered_unknown']:.1%} 'unknown'; top class right "
          f"{single['top_class_right']:.1%}); 'unknown' for {single['other_words_unknown']:.1%} "
          f"of {single['other_word_clips']} other words and {single['noise_unknown']:.1%} of "
          f"{single['noise_clips']} noise crops")


THRESHOLDS_SHOWN = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
SMOOTHING_CHOICES = (1, 3, 5, 7)  # windows averaged, with --choose-default


def record(args: argparse.Namespace, report: dict[str, Any]) -> None:
    from training.report import write_report

    entry = read_manifest(args.models)[args.model]
    validation = report["validation"]["at_default"]
    scored = report["folds_scored"]
    folds = f"{args.folds}" if len(scored) == args.folds else f"{len(scored)} of {args.folds}"
    command = (f"benchmarks/kws_strangers.py --model {args.model}"
               + "".join(f" --fold {fold}" for fold in scored if len(scored) < args.folds))
    if args.choose_default:
        # The rooms' numbers were measured at the default they had: gone with it.
        rooms = entry.get("strangers_in_rooms", {})
        if (rooms.get("default_threshold"), rooms.get("smoothing")) != (
                report["default_threshold"], report["smoothing"]):
            entry.pop("strangers_in_rooms", None)
        entry["default_smoothing"] = {
            "value": report["smoothing"],
            "chosen_on": "with the threshold, from 1, 3, 5 and 7 windows (see default_threshold)",
            "command": f"{command} --choose-default --record"}
        entry["default_threshold"] = {
            "value": report["default_threshold"], "recall": validation["recall"],
            "false_accepts_per_hour": validation["false_accepts_per_hour"],
            "chosen_on": (f"speaker-disjoint validation streams ({folds} speaker folds' "
                          f"models, each on the validation half of the speakers it never "
                          f"heard: {report['validation']['speakers']} speakers, "
                          f"{report['validation']['minutes']:.0f} min): the most keywords "
                          f"found at <= {args.max_false_per_hour:g} false accepts an hour"),
            "command": f"{command} --choose-default --record"}
        clip = report.get("clip_validation")
        entry["default_clip_threshold"] = {
            "value": report["default_clip_threshold"],
            **({"right_word": clip["right_word"],
                "other_words_unknown": clip["other_words_unknown"],
                "noise_unknown": clip["noise_unknown"]} if clip else {}),
            "chosen_on": (f"single clips of the same validation halves: the most keywords "
                          f"answered right while >= {CLIP_OTHER_WORDS_UNKNOWN:.0%} of other words "
                          f"and >= {CLIP_NOISE_UNKNOWN:.0%} of noise crops stay unknown"
                          if clip else "none met the bar: the sound events' threshold"),
            "command": f"{command} --choose-default --record"}
    # In simulated rooms, a result of its own beside the dry one (the defaults stay chosen on
    # the dry streams: the rooms are a model of a home, not a recording of one).
    entry["strangers" if args.rooms is None else "strangers_in_rooms"] = {
        "folds": args.folds, "folds_scored": report["folds_scored"], "seed": args.seed,
        "rooms_seed": args.rooms,
        "smoothing": report["smoothing"], "default_threshold": report["default_threshold"],
        "test": {key: report["test"][key] for key in ("minutes", "keywords", "speakers",
                                                      "at_default", "rows", "per_fold")},
        "validation_at_default": validation, "singles": report["singles"],
        "default_clip_threshold": report["default_clip_threshold"],
        "singles_at_clip_default": report["singles_at_clip_default"],
        "command": command + (" --choose-default" if args.choose_default else "")
                   + (f" --rooms {args.rooms}" if args.rooms is not None else "") + " --record"}
    write_manifest_entry(args.models, args.model, entry)
    write_report(args.models, {})


if __name__ == "__main__":
    sys.exit(main())
