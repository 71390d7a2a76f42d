"""``python -m training.evaluate MODEL ...``: measure a shipped model on your own data.

Forecasters on climate CSVs in the Jena format (MAE per feature next to persistence),
keyword models on a folder of ``<word>/*.wav`` at any sample rate (accuracy, per-class
recall, confusion matrix, also as PNG). Needs no TensorFlow: numpy, the TFLite runtime
and the shared loader, exactly what the collector runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinyml_core.cli import add_logging_arguments, run_main, setup_logging
from tinyml_core.messages import UNKNOWN_FOLDER
from tinyml_core.models import (
    KeywordSpotter,
    load_forecaster,
    load_keyword_spotter,
    read_manifest,
)

from . import MODELS_DIR, climate
from .negatives import Negatives, silence_clips
from .sensors import Sensor, load_sensors, sensor
from .speech import read_clip

log = logging.getLogger("training.evaluate")


def evaluate_forecaster(models_dir: Path, name: str, files: Sequence[Path],
                        sensor: Sensor | None = None, reads_per_step: int | None = None,
                        dropped: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """MAE per feature over every window of ``files`` (no split), next to persistence.

    With a ``sensor``, the inputs are what it would report (its resolution); the targets stay
    as recorded, and persistence repeats the sensor's last reading. With ``reads_per_step``,
    each step's input is what the collector makes of that many reads of the sensor (each
    with its noise, rounded, a share ``dropped`` lost, the rest averaged; seeded by
    ``seed``): a node reading every 10 s gives 60 a 10-minute step, 1 is the harshest case."""
    forecaster = load_forecaster(models_dir, name)
    steps = forecaster.contract.steps
    parts = climate.load_segments(files, forecaster.contract.step_s)
    inputs, labels = climate.windows(parts, steps, forecaster.contract.window)
    end_times = climate.window_end_times(parts, steps, forecaster.contract.window)
    if not len(inputs):
        raise climate.DataError(f"no gap-free run of {forecaster.contract.window + steps} "
                                f"readings in {', '.join(map(str, files))}")
    reads = {}
    if reads_per_step is not None:
        read_as = sensor or load_sensors()["none"]
        inputs = read_as.collected(inputs, np.random.default_rng(seed),
                                   (reads_per_step, reads_per_step), dropped)
        reads = {"reads_per_step": reads_per_step, "dropped": dropped, "seed": seed}
    elif sensor is not None:
        inputs = sensor.quantize(inputs)
    return {"model": name, "windows": len(inputs), "sensor": sensor.name if sensor else "none",
            **reads,
            **climate.against_persistence(forecaster.predict(inputs, end_times), inputs, labels)}


def evaluate_clips(models_dir: Path, name: str, clips: Sequence[tuple[int, np.ndarray]],
                   targets: np.ndarray, show_progress: bool = False,
                   spotter: KeywordSpotter | None = None) -> dict[str, Any]:
    """Accuracy, per-class recall and confusion matrix of the shipped file (or ``spotter``,
    e.g. an enrolled node's) on ``clips``."""
    from tqdm.auto import tqdm

    spotter = spotter or load_keyword_spotter(models_dir, name)
    batch = np.stack([spotter.features(clip, rate) for rate, clip in
                      tqdm(clips, desc=f"evaluate {name}", unit="clip", leave=False,
                           disable=not show_progress)])
    predicted = spotter.classify_features(batch).argmax(axis=1)
    count = len(spotter.labels)
    confusion = np.zeros((count, count), dtype=int)
    np.add.at(confusion, (np.asarray(targets), predicted), 1)
    recall = {label: float(confusion[i, i] / confusion[i].sum())
              for i, label in enumerate(spotter.labels) if confusion[i].sum()}
    return {"model": name, "clips": len(targets),
            "accuracy": float(np.trace(confusion) / max(1, len(targets))),
            "recall": recall, "confusion": confusion.tolist()}


def predicted_labels(spotter: KeywordSpotter, clips: Sequence[tuple[int, np.ndarray]]
                     ) -> np.ndarray:
    """The most probable label's index for each clip."""
    batch = np.stack([spotter.features(clip, rate) for rate, clip in clips])
    predicted: np.ndarray = spotter.classify_features(batch).argmax(axis=1)
    return predicted


def keyword_rate(spotter: KeywordSpotter, clips: Sequence[tuple[int, np.ndarray]]) -> float:
    """Fraction of ``clips`` whose most probable label is a keyword."""
    if not clips:
        return float("nan")
    labels = np.array(spotter.labels)[predicted_labels(spotter, clips)]
    return float(np.isin(labels, spotter.contract.keywords).mean())


def evaluate_negatives(models_dir: Path, name: str, negatives: Negatives,
                       crops_per_recording: int = 100, seed: int = 0,
                       part: str = "test") -> dict[str, Any]:
    """How often the held-back negatives (never trained on) get a keyword label: each other
    word's clips, and one-second crops of each noise recording's held-back tail at levels
    from -50 to -20 dBFS (what passes a node's gate)."""
    spotter = load_keyword_spotter(models_dir, name)
    keywords = np.isin(np.array(spotter.labels), spotter.contract.keywords)
    rate = 16000
    rng = np.random.default_rng(seed)
    recordings, noise_clips = [], []
    for recording, samples in negatives.noise_audio(part, rate):
        crops = silence_clips([(recording, samples)], crops_per_recording, rate, rng,
                              (-50.0, -20.0))
        recordings += [recording] * len(crops)
        noise_clips += [(rate, crop) for crop in crops]
    # Each clip classified once; the rates per word and per recording are read from that.
    word_labels = predicted_labels(spotter, negatives.words[part])
    noise_labels = predicted_labels(spotter, noise_clips)

    def keyword_share(labels: np.ndarray, groups: list[str]) -> dict[str, float]:
        named = np.array(groups)
        return {group: float(keywords[labels[named == group]].mean())
                for group in sorted(set(groups))}

    size = len(spotter.labels)
    return {
        "words_as_keyword": float(keywords[word_labels].mean()),
        "noise_as_keyword": float(keywords[noise_labels].mean()),
        "word_clips": len(word_labels), "noise_clips": len(noise_labels),
        "per_word": keyword_share(word_labels, negatives.word_names[part]),
        "per_noise": keyword_share(noise_labels, recordings),
        # What each got, per label: the unknown and silence rows of the confusion matrix.
        "words_predicted": np.bincount(word_labels, minlength=size).tolist(),
        "noise_predicted": np.bincount(noise_labels, minlength=size).tolist(),
    }


NOISE_FOLDER = "_background_noise_"  # longer recordings of the room, for --stream


def read_folder(folder: Path) -> list[tuple[int, np.ndarray]]:
    return [read_clip(path) for path in sorted(folder.glob("*.wav"))]


def speech_folder(speech_dir: Path, labels: Sequence[str]
                  ) -> tuple[list[tuple[int, np.ndarray]], np.ndarray]:
    """Clips of every ``<label>/*.wav`` under ``speech_dir``; other folders are skipped
    (``_unknown_`` and ``_background_noise_`` are read by :func:`other_sounds`)."""
    if not speech_dir.is_dir():
        raise climate.DataError(f"{speech_dir}: not a folder")
    clips, targets = [], []
    for folder in sorted(p for p in speech_dir.iterdir() if p.is_dir()):
        if folder.name in (UNKNOWN_FOLDER, NOISE_FOLDER):
            continue
        if folder.name not in labels:
            log.warning("skipping %s: not one of the model's labels", folder)
            continue
        found = read_folder(folder)
        clips += found
        targets += [labels.index(folder.name)] * len(found)
    if not clips:
        raise climate.DataError(f"{speech_dir}: no <word>/*.wav with a word in "
                                f"{', '.join(labels)}")
    return clips, np.array(targets)


def other_sounds(speech_dir: Path) -> tuple[list[tuple[int, np.ndarray]],
                                            list[tuple[str, np.ndarray]]]:
    """``_unknown_/*.wav`` clips, and ``_background_noise_/*.wav`` at 16 kHz (float)."""
    from tinyml_core.frontend import resample, to_float

    unknown = read_folder(speech_dir / UNKNOWN_FOLDER)
    noise = [(f"noise {index}", resample(to_float(clip), rate, 16000)) for index, (rate, clip)
             in enumerate(read_folder(speech_dir / NOISE_FOLDER))]
    return unknown, noise


FALSE_ACCEPT_BUDGET = 5.0  # per hour, as the shipped defaults are chosen
MIN_HOURS_TO_CHOOSE = 0.5  # shorter, a single false accept decides the choice


def stream_on_folder(models_dir: Path, name: str, clips: Sequence[tuple[int, np.ndarray]],
                     targets: np.ndarray, labels: Sequence[str],
                     unknown: Sequence[tuple[int, np.ndarray]],
                     noise: list[tuple[str, np.ndarray]], seed: int = 0,
                     spotter: KeywordSpotter | None = None) -> None:
    """The folder's clips as one continuous stream through the node's capture and the
    collector's decision (training/stream.py); prints recall and false accepts per hour."""
    from collector.settings import CollectorOptions, scan_settings
    from tinyml_core.keywords import threshold_in_force
    from tinyml_core.models import load_keyword_spotter

    from .stream import (
        RATE,
        THRESHOLD_CHOICES,
        build_stream,
        capture_events,
        choose_threshold,
        print_table,
        threshold_table,
    )

    if not noise:  # a quiet room: faint white noise
        noise = [("white noise", np.random.default_rng(seed).normal(0, 0.1, 60 * RATE)
                  .astype(np.float32))]
    keywords = [(labels[target], rate, clip) for (rate, clip), target in
                zip(clips, targets, strict=True)]
    stream = build_stream(keywords, unknown, noise, seed=seed)
    payloads = capture_events(stream)
    options = CollectorOptions()
    print(f"\nstream: {stream.hours * 60:.1f} min of {len(keywords)} keywords, {len(unknown)} "
          f"other sounds from {UNKNOWN_FOLDER}/ and noise bursts, 1.5-3.5 s apart; "
          f"{len(payloads)} sound events")
    base = scan_settings(options)
    spotter = spotter or load_keyword_spotter(models_dir, name)
    default = threshold_in_force(base, spotter)
    shown = {0.4, 0.5, 0.6, 0.7, 0.8, 0.9, default}
    rows = threshold_table(stream, payloads, models_dir, name,
                           sorted(shown | set(THRESHOLD_CHOICES)), base, spotter)
    print_table([row for row in rows if row.threshold in shown], default)
    chosen = choose_threshold(rows, FALSE_ACCEPT_BUDGET)
    print()
    if stream.hours < MIN_HOURS_TO_CHOOSE:
        print(f"{stream.hours * 60:.1f} min are too short to choose a threshold for "
              f"{FALSE_ACCEPT_BUDGET:g} false accepts an hour (one false accept here is "
              f"{1 / stream.hours:.0f} an hour); {MIN_HOURS_TO_CHOOSE * 60:.0f} minutes of "
              "recordings or more say more")
    elif chosen is None:
        print(f"no threshold keeps this stream within {FALSE_ACCEPT_BUDGET:g} false accepts an "
              "hour (a longer recording, or more of it in _unknown_/, says more)")
    else:
        print(f"on this stream the most keywords at no more than {FALSE_ACCEPT_BUDGET:g} false "
              f"accepts an hour: threshold {chosen.threshold:.2f} ({chosen.recall:.1%} found, "
              f"{chosen.false_per_hour:.1f} an hour); to use it, set keyword_threshold = "
              f"{chosen.threshold:.2f} in [collector]")


def print_forecast(result: dict[str, Any]) -> None:
    reads = (f" ({result['reads_per_step']} reads a step averaged, {result['dropped']:.0%} "
             f"lost, seed {result['seed']})" if "reads_per_step" in result else "")
    print(f"{result['model']} on {result['windows']} windows, inputs as {result['sensor']} "
          f"reads them{reads}, targets as recorded")
    print(f"{'MAE':<12}{'model':>10}{'persistence':>14}{'skill':>9}")
    for feature, unit in (("temperature", "°C"), ("humidity", "%RH")):
        print(f"{feature:<12}{result['mae'][feature]:>8.3f} {unit:<3}"
              f"{result['persistence'][feature]:>10.3f} {unit:<3}"
              f"{result['skill'][feature]:>+8.1%}")


def print_keyword(result: dict[str, Any], labels: Sequence[str]) -> None:
    print(f"{result['model']}: accuracy {result['accuracy']:.2%} on {result['clips']} clips")
    width = max(len(label) for label in labels) + 2
    print("recall: " + ", ".join(f"{k} {v:.1%}" for k, v in result["recall"].items()))
    print("confusion (rows: true, columns: predicted)")
    print(" " * width + "".join(f"{label[:6]:>7}" for label in labels))
    for label, row in zip(labels, result["confusion"], strict=True):
        if sum(row):  # no row for a class without clips (unknown, silence)
            print(f"{label:<{width}}" + "".join(f"{count:>7}" for count in row))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate",
                                     description=__doc__.split("\n\n")[1])
    parser.add_argument("model", help="model name in the manifest, e.g. forecast_a or kws_b")
    parser.add_argument("--models", type=Path, default=MODELS_DIR,
                        help="folder with manifest.json (default: models/)")
    parser.add_argument("--climate-csv", type=Path, action="append", metavar="FILE",
                        help="climate CSV in the Jena format (repeatable), for forecasters")
    parser.add_argument("--sensor", default="none", metavar="NAME",
                        help="forecasters: feed the inputs as this sensor reads them (its "
                             "resolution, config/sensors.toml: none, dht11, dht22); targets "
                             "stay as recorded (default: none)")
    parser.add_argument("--reads-per-step", type=int, metavar="N",
                        help="forecasters: each step's input averaged from N reads of --sensor, "
                             "each with its noise and resolution, as the collector averages a "
                             "node's reads (a node reading every 10 s: 60 a 10-minute step; "
                             "1: the harshest case); default: one exact read")
    parser.add_argument("--dropped", type=float, default=0.0, metavar="P",
                        help="with --reads-per-step: the share of reads lost (failed reads; "
                             "at least one a step is kept; default 0)")
    parser.add_argument("--seed", type=int, default=0,
                        help="with --reads-per-step: the noise's seed (default 0)")
    parser.add_argument("--speech-dir", type=Path,
                        help="keyword models: folder of <word>/*.wav; clips in _unknown_/ are "
                             "none of the words (how often they get one is reported)")
    parser.add_argument("--stream", action="store_true",
                        help="keyword models: also lay the folder's clips end to end as one "
                             "continuous stream (noise from _background_noise_/*.wav if there) "
                             "through the node's capture and the collector's decision: recall "
                             "and false accepts per hour over thresholds")
    parser.add_argument("--enrolled", type=Path, metavar="FILE",
                        help="keyword models: answer as an enrolled node does, with its layer "
                             "from this collector enrollment file (its enrollment_path); "
                             "needs --node")
    parser.add_argument("--node", metavar="NODE_ID", help="the enrolled node, with --enrolled")
    parser.add_argument("--confusion-png", type=Path,
                        metavar="FILE",
                        help="also save the confusion matrix as a picture (PNG) here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    if args.reads_per_step is not None and args.reads_per_step < 1:
        parser.error(f"--reads-per-step {args.reads_per_step}: a step has at least one read")
    if not 0.0 <= args.dropped < 1.0:
        parser.error(f"--dropped {args.dropped}: a share of reads in [0, 1)")
    if args.dropped and args.reads_per_step is None:
        parser.error("--dropped needs --reads-per-step")
    return args


def enrolled_spotter(args: argparse.Namespace) -> KeywordSpotter:
    """The model answering with ``--node``'s layer from ``--enrolled``."""
    from collector.enrollment.store import Enrollments, adaptation_models, enrolled_spotters

    if not (args.enrolled and args.node):
        raise climate.DataError("--enrolled FILE and --node NODE_ID go together")
    try:
        store = Enrollments.load(args.enrolled)
    except (OSError, ValueError) as error:
        raise climate.DataError(f"{args.enrolled}: {error}") from None
    if args.node not in store.nodes:
        raise climate.DataError(f"{args.node} is not enrolled in {args.enrolled} "
                                f"({', '.join(sorted(store.nodes)) or 'nobody is'})")
    try:
        spotter, anchors = adaptation_models(args.models, args.model)
    except ValueError as error:
        raise climate.DataError(str(error)) from None
    own, refused = enrolled_spotters(store, spotter, anchors)
    if args.node in refused:
        raise climate.DataError(refused[args.node])
    log.info("answering as %s does: %d people enrolled", args.node,
             len(store.nodes[args.node].people))
    return own[args.node]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args)
    entry = read_manifest(args.models).get(args.model)
    if entry is None:
        raise climate.DataError(f"{args.model}: not in {args.models}/manifest.json")
    if entry.get("task") == "forecast":
        if not args.climate_csv:
            raise climate.DataError("a forecaster needs --climate-csv FILE")
        chosen = sensor(args.sensor)
        result = evaluate_forecaster(args.models, args.model, args.climate_csv,
                                     None if chosen.name == "none" else chosen,
                                     args.reads_per_step, args.dropped, args.seed)
        if args.json:
            print(json.dumps(result))
        else:
            print_forecast(result)
        return 0
    if not args.speech_dir:
        raise climate.DataError("a keyword model needs --speech-dir DIR")
    labels = entry["output"]["labels"]
    spotter = enrolled_spotter(args) if args.enrolled or args.node else \
        load_keyword_spotter(args.models, args.model)
    clips, targets = speech_folder(args.speech_dir, labels)
    result = evaluate_clips(args.models, args.model, clips, targets,
                            show_progress=not args.json, spotter=spotter)
    unknown, noise = other_sounds(args.speech_dir)
    if unknown:
        result["unknown_as_keyword"] = keyword_rate(spotter, unknown)
        result["unknown_clips"] = len(unknown)
    if args.json:
        print(json.dumps({key: result[key] for key in ("model", "clips", "accuracy", "recall",
                                                       "unknown_as_keyword", "unknown_clips")
                          if key in result}))
    else:
        print_keyword(result, labels)
        if unknown:
            print(f"{UNKNOWN_FOLDER}: {result['unknown_as_keyword']:.1%} of {len(unknown)} clips "
                  "given a keyword label")
    if args.stream:
        stream_on_folder(args.models, args.model, clips, targets, labels, unknown, noise,
                         spotter=spotter)
    if args.confusion_png is None:
        return 0
    from .report import pyplot, save_confusion_png

    plt = pyplot()
    if plt is None:
        log.warning("matplotlib is not installed: no confusion matrix PNG")
        return 0

    save_confusion_png(np.array(result["confusion"]), labels,
                       f"{args.model}: {result['accuracy']:.2%} on {result['clips']} clips",
                       args.confusion_png, plt)
    log.info("confusion matrix saved to %s", args.confusion_png)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
