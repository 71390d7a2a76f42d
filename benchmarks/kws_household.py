"""Households the model never heard, before and after they enroll (issue 26).

    .venv/bin/python benchmarks/kws_household.py [--model kws_e] [--folds-dir data/folds]
        [--takes 1 2 3] [--fold K ...] [--json FILE] [--record]

Each speaker fold's model (``python -m training.speakers kws_b --keep data/folds``) never
heard that fold's speakers, so they make households of strangers: speakers of one fold who
said at least four of the words at least twice (mini speech commands, train and test split;
the validation split is left out, it chose the fold model's epoch), three to a household, and
one more speaker of the fold as the member who did not enroll (``--guests N``: also the fold's
next N-1 speakers, members of other households, as voices that did not enroll here).
A member enrolls with up to ``--takes`` takes of each word they said twice or more (the last
take of each such word is never enrolled: it is the test), and half of their own other words
(Speech Commands words that are not keywords, by the same speaker, from the negatives) as
their ordinary speech.

Two streams per household, built as kws_stream.py builds its own (training/stream.py), with
the other words of other people (the negatives' held-back words) and the kitchen (noise
bursts): the enrolled members' test takes with the rest of their own other words, and the
member who did not enroll's takes. The collector's keyword path answers them at the model's
default threshold, with the shipped last layer and with the household's own
(collector/enrollment/adapt.py). Prints recall and false accepts an hour per household and in all,
and how long each enrollment took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector.enrollment.adapt import (  # noqa: E402
    AdaptSettings,
    Anchors,
    Takes,
    adapt,
    adapt_settings,
)
from collector.settings import CollectorOptions, scan_settings  # noqa: E402
from tinyml_core.keywords import smoothing_in_force, threshold_in_force  # noqa: E402
from tinyml_core.models import KeywordSpotter, load_keyword_spotter  # noqa: E402
from training.anchors import anchor_sample, fold_keep  # noqa: E402
from training.households import MEMBERS, Person, households, people  # noqa: E402
from training.negatives import Negatives  # noqa: E402
from training.speakers import fold_dir  # noqa: E402
from training.speech import SpeechData  # noqa: E402
from training.stream import (  # noqa: E402
    RATE,
    ScansOnce,
    StreamResult,
    build_stream,
    capture_events,
    combined,
    run_stream,
    score,
)

OTHER_WORDS_PER_KEYWORD = 4  # other people's words in a household's stream, per keyword


def enrollment(person: Person, per_word: int) -> Takes:
    return Takes(person.speaker, person.enrollment_takes(per_word), person.enrollment_speech())


def fold_anchors(spotter: KeywordSpotter, speech: SpeechData, negatives: Negatives, fold: int,
                 folds: int, count: int, seed: int) -> Anchors:
    """As training.anchors makes them for a shipped model: from what the fold model trained
    on (never the fold's own speakers)."""
    embeddings, targets = anchor_sample(spotter, speech, negatives, count, seed,
                                        fold_keep(speech, fold, folds))
    return Anchors(embeddings, targets)


def answer(stream: Any, payloads: list[bytes], models: Path, model: str,
           spotter: KeywordSpotter, threshold: float, smoothing: int) -> StreamResult:
    settings = replace(scan_settings(CollectorOptions()), threshold=threshold,
                       smoothing=smoothing)
    return score(stream, run_stream(payloads, models, model, settings, spotter=spotter),
                 threshold)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Needs mini speech commands, negatives.tar.xz and "
                                            "the fold models.")
    parser.add_argument("--model", default=CollectorOptions().keyword_model,
                        help="keyword model (default: the collector's, %(default)s)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold", type=int, action="append", metavar="K",
                        help="only these folds (repeatable; default: every fold with a model)")
    parser.add_argument("--folds-dir", type=Path, default=REPO / "data" / "folds")
    parser.add_argument("--models", type=Path, default=REPO / "models",
                        help="the shipped models (their default threshold is used)")
    parser.add_argument("--takes", type=int, nargs="+", default=[1, 2, 3],
                        help="takes per word to enroll with (default 1 2 3)")
    parser.add_argument("--threshold", type=float, help="default: the shipped model's")
    # Each setting's default is the model's own (its manifest's enrollment.settings, as
    # `collector enroll` adapts it), else collector/enrollment/adapt.py's.
    tuning = parser.add_argument_group(
        "adaptation", "how the household's layer is made (default: as `collector enroll` "
        "makes it for the model: its manifest's enrollment settings, else "
        "collector/enrollment/adapt.py's)")
    tuning.add_argument("--l2", type=float, help="pull towards the shipped layer")
    tuning.add_argument("--steps", type=int)
    tuning.add_argument("--variants", type=int,
                        help="varied copies of each take (speed, level, noise)")
    tuning.add_argument("--takes-weight", type=float)
    tuning.add_argument("--label-smoothing", type=float)
    tuning.add_argument("--lift", type=float, dest="prototype_lift",
                        help="the most a take's likeness raises its word's logit (0 with "
                             "--penalty 0 and --anchor-lift 0: the fitted layer alone)")
    tuning.add_argument("--floor", type=float, dest="prototype_floor",
                        help="the likeness (cosine similarity) below which a take lifts "
                             "nothing")
    tuning.add_argument("--penalty", type=float, dest="keyword_penalty",
                        help="how much every keyword's logit is lowered on an enrolled node")
    tuning.add_argument("--anchor-lift", type=float,
                        help="the same from the anchors' keywords (other voices; 0: none)")
    tuning.add_argument("--anchor-floor", type=float)
    tuning.add_argument("--exclusive", action=argparse.BooleanOptionalAction,
                        help="each word's takes also rival every other word's: a window lifts "
                             "a word only by its lead over the closest take of another word")
    tuning.add_argument("--no-clip", dest="clip_logits", action="store_false", default=None,
                        help="let the household's layer pass the int8 model's logit range")
    parser.add_argument("--guests", type=int, default=1, metavar="N",
                        help="voices that did not enroll per household: its fourth member, "
                             "then the fold's next speakers (default 1; more make the "
                             "guests' numbers less noisy)")
    parser.add_argument("--thresholds", type=float, nargs="+",
                        default=[0.5, 0.6, 0.7, 0.76, 0.8, 0.85, 0.9, 0.95],
                        help="thresholds to sweep (the default's row is the headline)")
    parser.add_argument("--anchors", type=int, default=1000, metavar="N",
                        help="windows of the fold model's own training data the household's "
                             "layer keeps answering as before (0: none; default 1000, as "
                             "training.anchors makes them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.add_argument("--record", action="store_true",
                        help="store the settings and the numbers in the shipped model's "
                             "manifest entry (enrollment): `collector enroll` then adapts it "
                             "so; refreshes models/REPORT.md")
    args = parser.parse_args()
    folds = [k for k in (args.fold or range(args.folds))
             if (fold_dir(args.folds_dir, args.model, k, args.folds) / "manifest.json").exists()]
    if not folds:
        parser.error(f"no fold models in {args.folds_dir}: train them with `python -m "
                     f"training.speakers {args.model} --keep {args.folds_dir}`")
    speech = SpeechData.load(parts=("train", "test"), show_progress=False)
    negatives = Negatives.load()
    noise = negatives.noise_audio("test", RATE)
    shipped = load_keyword_spotter(args.models, args.model)
    settings = replace(adapt_settings(shipped.entry), **{
        f.name: getattr(args, f.name) for f in fields(AdaptSettings)
        if getattr(args, f.name, None) is not None})
    threshold = args.threshold or threshold_in_force(scan_settings(CollectorOptions()), shipped)
    # The shipped model's smoothing: the fold models' manifests choose none.
    smoothing = smoothing_in_force(scan_settings(CollectorOptions()), shipped)
    print(f"{args.model} at threshold {threshold:.2f}, smoothed over {smoothing} windows; folds "
          f"{folds}; enrolling with {args.takes} takes per word")
    print("adapting with " + ", ".join(f"{name} {value}"
                                       for name, value in asdict(settings).items()))
    rows: dict[tuple[str, str, float], list[StreamResult]] = defaultdict(list)
    names = ["base"] + [f"takes {t}" for t in args.takes]
    sweep = sorted({*args.thresholds, threshold})
    timings: dict[int, list[float]] = defaultdict(list)
    report: list[dict[str, Any]] = []
    for fold in folds:
        directory = fold_dir(args.folds_dir, args.model, fold, args.folds)
        base = load_keyword_spotter(directory, args.model, embedding=True)
        anchors = fold_anchors(base, speech, negatives, fold, args.folds, args.anchors,
                               args.seed) if args.anchors else None
        for number, (members, strangers) in enumerate(households(
                people(speech, fold, args.folds), args.guests)):
            seed = args.seed * 10_000 + fold * 100 + number
            tests = [t for m in members for t in m.tests()]
            own = [c for m in members for c in m.other_words[len(m.other_words) // 2:]]
            rng = np.random.default_rng(seed)
            pick = rng.permutation(len(negatives.words["test"]))[
                :OTHER_WORDS_PER_KEYWORD * len(tests)]
            others = own + [negatives.words["test"][i] for i in pick]
            home = build_stream(tests, others, noise, seed=seed, noise_bursts_per_keyword=1.0)
            guest = build_stream([t for g in strangers for t in g.all_takes()], [], noise,
                                 seed=seed + 1, noise_bursts_per_keyword=1.0)
            home_events, guest_events = capture_events(home), capture_events(guest)
            line = {"fold": fold, "household": number, "members": [m.speaker for m in members],
                    "not_enrolled": [g.speaker for g in strangers], "test_keywords": len(tests),
                    "minutes": round(home.hours * 60, 1)}
            for name in names:
                spotter = base
                if name != "base":
                    per_word = int(name.split()[1])
                    started = time.perf_counter()
                    head = adapt(base, [enrollment(m, per_word) for m in members], settings,
                                 anchors)
                    timings[per_word].append(time.perf_counter() - started)
                    spotter = base.with_head(head)
                spotter = ScansOnce(spotter)  # each event scanned once for every threshold
                for who, stream, events in (("enrolled", home, home_events),
                                            ("not enrolled", guest, guest_events)):
                    for value in sweep:
                        rows[(name, who, value)].append(
                            answer(stream, events, directory, args.model, spotter, value,
                                   smoothing))
                line[name] = {"enrolled": rows[(name, "enrolled", threshold)][-1].row(),
                              "not_enrolled": rows[(name, "not enrolled", threshold)][-1].row()}
            report.append(line)
            print(f"fold {fold} household {number}: {len(tests)} test keywords, "
                  f"{home.hours * 60:.1f} min; " + "; ".join(
                      f"{name} {line[name]['enrolled']['recall']:.0%} at "
                      f"{line[name]['enrolled']['false_accepts']} false"
                      for name in names), flush=True)
    guests = "one who did not" if args.guests == 1 else f"{args.guests} voices that did not"
    print(f"\n{len(report)} households of {MEMBERS} enrolled members and {guests} "
          f"enroll, never heard by their fold's model; at the default threshold {threshold:.2f}")
    print(f"{'':22} {'recall':>8} {'false/h':>8} {'keywords':>9} {'hours':>6}")
    summary: dict[str, Any] = {}
    for name in names:
        for who in ("enrolled", "not enrolled"):
            total = combined(rows[(name, who, threshold)])
            summary[f"{name} {who}"] = total.row() | {"keywords": total.keywords,
                                                      "hours": round(total.hours, 2)}
            print(f"{name + ' ' + who:22} {total.recall:>8.1%} {total.false_per_hour:>8.1f} "
                  f"{total.keywords:>9} {total.hours:>6.2f}  "
                  + ", ".join(f"{k} {v}" for k, v in sorted(total.by_kind.items())))
    print("\nenrolled members by threshold (recall / false accepts an hour):")
    print(f"{'threshold':>9} " + " ".join(f"{name:>16}" for name in names))
    for value in sweep:
        cells = [combined(rows[(name, "enrolled", value)]) for name in names]
        print(f"{value:>9.2f} " + " ".join(
            f"{c.recall:>8.1%} {c.false_per_hour:>6.1f}/h" for c in cells))
    summary["sweep"] = {f"{value:.2f}": {name: combined(rows[(name, "enrolled", value)]).row()
                                         for name in names} for value in sweep}
    for per_word, seconds in sorted(timings.items()):
        print(f"enrollment with {per_word} takes per word: {np.mean(seconds):.2f} s per "
              f"household of {MEMBERS} (max {max(seconds):.2f} s)")
    if args.json:
        args.json.write_text(json.dumps({"threshold": threshold, "households": report,
                                         "summary": summary,
                                         "enroll_seconds": {k: v for k, v in timings.items()}},
                                        indent=1))
    if args.record:
        record(args, settings, summary, folds, len(report), threshold, smoothing)
    return 0


def record(args: argparse.Namespace, settings: AdaptSettings, summary: dict[str, Any],
           folds: list[int], households: int, threshold: float, smoothing: int) -> None:
    """The settings `collector enroll` adapts the model with, and what they measured."""
    from tinyml_core.models import read_manifest, write_manifest_entry
    from training.report import write_report

    entry = read_manifest(args.models)[args.model]
    takes = " ".join(str(t) for t in args.takes)
    options = "".join(f" --fold {fold}" for fold in folds) + f" --takes {takes}"
    entry["enrollment"] = {
        "settings": asdict(settings),
        "chosen_on": (f"{households} households of {MEMBERS} speakers the fold models never "
                      f"heard (speaker folds {', '.join(map(str, folds))} of {args.folds}), "
                      f"each with one voice that did not enroll"),
        "households": households, "folds_scored": folds, "threshold": threshold,
        "smoothing": smoothing,
        "rows": {name: summary[name] for name in summary if name != "sweep"},
        "command": f"benchmarks/kws_household.py --model {args.model}{options} --record"}
    write_manifest_entry(args.models, args.model, entry)
    write_report(args.models, {})


if __name__ == "__main__":
    sys.exit(main())
