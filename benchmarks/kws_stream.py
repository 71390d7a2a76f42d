"""Keyword spotting on a continuous stream, as a microphone on a node hears it.

    .venv/bin/python benchmarks/kws_stream.py [--model kws_b | --all] [--part test]

Builds a stream at a fixed seed from real clips (training/stream.py): every keyword clip
of the split part once, the held-back other words (never trained on) alone and run
together into phrases, and bursts of the held-back tails of the noise recordings, 1.5-3.5 s
apart over a quiet room tone. The node's capture cuts it into sound events at its default
settings; the collector's keyword path (scan, smoothing, threshold, one result per
utterance) answers each. Prints recall and false accepts per hour over a range of
thresholds, the model's default threshold marked, and how often held-back single clips of
other words and noise get a keyword label; then two rows of what a home says: the held-back
confusable words ("on", "off") sent alone, and the part's running speech (Debian's Asterisk
prompts, where every keyword result is false). ``--part validation`` builds the stream from the
validation split and negatives: each model's default threshold is chosen there, never on the
test part (``--part validation --choose-threshold --record`` stores it in the manifest, where
the collector reads it). Needs the datasets (../shared/data or data/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import wave
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector.settings import KEYWORD_MODELS, CollectorOptions, scan_settings  # noqa: E402
from tinyml_core.keywords import ScanSettings, find_keywords, threshold_in_force  # noqa: E402
from tinyml_core.messages import UNKNOWN_LABEL  # noqa: E402
from tinyml_core.models import load_keyword_spotter  # noqa: E402
from training.climate import DataError  # noqa: E402
from training.evaluate import evaluate_negatives  # noqa: E402
from training.negatives import Negatives  # noqa: E402
from training.running_speech import talk_stream  # noqa: E402
from training.speech import SpeechData  # noqa: E402
from training.stream import (  # noqa: E402
    RATE,
    THRESHOLD_CHOICES,
    StreamResult,
    capture_events,
    choose_threshold,
    part_stream,
    print_table,
    run_stream,
    threshold_table,
)

THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


# Words a home says that share sounds with a keyword ("off" and "up", "on" and "no"); the
# negatives hold only these two, and only 4 clips of them by held-back speakers.
CONFUSABLE = ("on", "off")


def confusable_words(spotter: Any, negatives: Negatives, part: str, base: ScanSettings
                     ) -> dict[str, str]:
    """Each held-back clip of a confusable word sent alone, as the collector decides one (at
    the model's clip threshold): {"off #1": what it answered, ...}."""
    out: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for name, (rate, clip) in zip(negatives.word_names[part], negatives.words[part],
                                  strict=True):
        if name in CONFUSABLE:
            counts[name] += 1
            detections, _ = find_keywords(spotter, clip, rate, base, clip=True)
            out[f"{name} #{counts[name]}"] = max(detections, key=lambda d: d.score).label
    return out


def record_default(models: Path, model: str, chosen: StreamResult, args: argparse.Namespace,
                   hours: float) -> None:
    """Store the chosen threshold in the model's manifest entry (the collector's default)."""
    from tinyml_core.models import read_manifest, write_manifest_entry

    entry = read_manifest(models)[model]
    entry["default_threshold"] = {
        "value": chosen.threshold, "recall": round(chosen.recall, 4),
        "false_accepts_per_hour": round(chosen.false_per_hour, 2),
        "chosen_on": f"validation stream (seed {args.seed}, {hours * 60:.1f} min): the most "
                     f"keywords found at <= {args.max_false_per_hour:g} false accepts an hour",
        "command": "benchmarks/kws_stream.py --all --part validation --choose-threshold "
                   "--record"}
    write_manifest_entry(models, model, entry)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Needs mini speech commands and negatives.tar.xz.")
    parser.add_argument("--model", default=CollectorOptions().keyword_model,
                        help="keyword model (default: the collector's, %(default)s)")
    parser.add_argument("--all", action="store_true",
                        help="every keyword model the collector knows")
    parser.add_argument("--part", choices=("validation", "test"), default="test",
                        help="split part the stream is built from (default test)")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gate", type=float, metavar="DBFS",
                        help="the node's gate_dbfs (default: the node's default)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS)
    parser.add_argument("--choose-threshold", action="store_true",
                        help="with --part validation: find each model's default threshold "
                             "(the most keywords found within --max-false-per-hour; 0.40-0.96 "
                             "in steps of 0.02); with --record, store it in the manifest")
    parser.add_argument("--max-false-per-hour", type=float, default=5.0,
                        help="false-accept budget for --choose-threshold (default 5)")
    parser.add_argument("--save-wav", type=Path, metavar="FILE",
                        help="also write the stream as a WAV (for `node replay --microphone`)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the numbers as JSON")
    parser.add_argument("--record", action="store_true",
                        help="store each model's table in its manifest entry and refresh "
                             "models/REPORT.md")
    args = parser.parse_args()
    if args.choose_threshold and args.part != "validation":
        parser.error("--choose-threshold needs --part validation: a default is never chosen "
                     "on the test part")
    started = time.perf_counter()
    speech = SpeechData.load(parts=(args.part,), show_progress=False)
    negatives = Negatives.load()
    stream = part_stream(speech, negatives, args.part, args.seed)
    kinds = Counter(item.kind for item in stream.placed)
    payloads = capture_events(stream, gate_dbfs=args.gate)
    print(f"stream ({args.part} part, seed {args.seed}): {stream.hours * 60:.1f} min, "
          + ", ".join(f"{count} {kind}s" for kind, count in sorted(kinds.items()))
          + f"; the node's capture cut {len(payloads)} sound events "
          f"({time.perf_counter() - started:.0f} s to build)")
    if args.save_wav:
        with wave.open(str(args.save_wav), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            for page in stream.pages():
                out.writeframes(page.tobytes())
        print(f"wrote {args.save_wav}")
    try:  # a household talking: real running speech, none of it a keyword
        talk = talk_stream(tuple(speech.labels), args.part,
                           negatives.noise_audio(args.part, RATE), args.seed)
    except (DataError, OSError) as error:
        talk = None
        print(f"no running speech: {error}")
    options = CollectorOptions()
    report = {}
    for model in (KEYWORD_MODELS if args.all else (args.model,)):
        spotter = load_keyword_spotter(args.models, model)
        base = scan_settings(options)
        default = threshold_in_force(base, spotter)
        print(f"\n{model} ({len(spotter.labels)} outputs: {', '.join(spotter.labels)})")
        swept = THRESHOLD_CHOICES if args.choose_threshold else args.thresholds
        thresholds = sorted({*swept, default})
        rows = threshold_table(stream, payloads, args.models, model, thresholds, base)
        print_table(rows, default)
        if args.choose_threshold:
            chosen = choose_threshold(rows, args.max_false_per_hour)
            if chosen is None:
                print(f"no threshold keeps {model} within {args.max_false_per_hour:g} false "
                      "accepts an hour: its default is left as it is")
            else:
                print(f"chosen: {chosen.threshold:.2f} (finds {chosen.recall:.1%} at "
                      f"{chosen.false_per_hour:.1f} false accepts an hour)")
                if args.record:
                    record_default(args.models, model, chosen, args, stream.hours)
        singles = evaluate_negatives(args.models, model, negatives, part=args.part)
        print(f"single held-back clips given a keyword label: other words "
              f"{singles['words_as_keyword']:.1%} of {singles['word_clips']}, noise "
              f"{singles['noise_as_keyword']:.1%} of {singles['noise_clips']}")
        report[model] = {"stream": [row.row() for row in rows], "singles": singles}
        confusable = confusable_words(spotter, negatives, args.part, base)
        if confusable:
            taken = [f"{clip} as {said}" for clip, said in confusable.items()
                     if said != UNKNOWN_LABEL]
            print(f"confusable words ({', '.join(CONFUSABLE)} held back by speaker: "
                  f"{len(confusable)} clips), each sent alone: {len(taken)} given a keyword"
                  + (f" ({', '.join(taken)})" if taken else "")
                  + " (a count: the negatives hold no more)")
            report[model]["confusable_words"] = {
                "clips": len(confusable), "given_a_keyword": len(taken),
                "answers": list(confusable.items())}
        if talk is not None:  # every keyword result in running speech is false
            heard = run_stream(talk[1], args.models, model, replace(base, threshold=default))
            said = Counter(r.label for r in heard if r.label != UNKNOWN_LABEL)
            per_hour = sum(said.values()) / talk[0].hours
            print(f"running speech (the {args.part} part's Asterisk prompts, "
                  f"{talk[0].hours * 60:.1f} min) at {default:.2f}: {sum(said.values())} "
                  f"keyword results, {per_hour:.1f} an hour"
                  + (f" ({', '.join(f'{w} {n}' for w, n in said.most_common())})"
                     if said else ""))
            report[model]["running_speech"] = {
                "minutes": round(talk[0].hours * 60, 1), "threshold": default,
                "keyword_results": sum(said.values()), "per_hour": round(per_hour, 2),
                "by_word": dict(said)}
        if args.record and not args.choose_threshold:  # the table the report shows
            from tinyml_core.models import read_manifest, write_manifest_entry

            entry = read_manifest(args.models)[model]
            entry["stream"] = {"part": args.part, "seed": args.seed,
                               "minutes": round(stream.hours * 60, 1),
                               "events": len(payloads), "default_threshold": default,
                               "rows": report[model]["stream"],
                               "command": "benchmarks/kws_stream.py --all --record"}
            write_manifest_entry(args.models, model, entry)
    if args.record:
        from training.report import write_report

        write_report(args.models, {})
    if args.json:
        args.json.write_text(json.dumps({"part": args.part, "seed": args.seed,
                                         "minutes": round(stream.hours * 60, 1),
                                         "events": len(payloads), "models": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
