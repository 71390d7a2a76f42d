"""``python -m training.speakers kws_b [--folds 5] [--fold K ...]``: accuracy on new voices.

The fixed test split shares speakers with the training split (741 of its 800 clips are by
a speaker the model trained on), which flatters every number measured on it. Here the
training split is cut into ``--folds`` parts by speaker (the part of the file name before
``_nohash_``, hashed); each fold's model trains on the other parts with the model's own
recipe and is measured on the speakers it never heard, and on the test split beside it, so
the difference is the speakers' alone (same model, same training data). A fold costs one
training run of the recipe (kws_b: about 25 minutes on 2 cores, kws_b_ceiling about an hour).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from collector.settings import KEYWORD_MODELS
from tinyml_core.cli import add_logging_arguments, run_main, setup_logging
from tinyml_core.errors import ConfigError

from .negatives import speaker
from .recipes import load_recipes, recipe
from .speech import SpeechData, split_paths

log = logging.getLogger("training.speakers")


def fold_of(speaker_id: str, folds: int) -> int:
    return zlib.crc32(speaker_id.encode()) % folds


def fold_data(data: SpeechData, fold: int, folds: int) -> SpeechData:
    """The training split without fold ``fold``'s speakers; that fold as the test part."""
    speakers = [speaker(path) for path in split_paths(data.root, "train")]
    held_out = np.array([fold_of(s, folds) == fold for s in speakers])
    clips, targets = data.clips["train"], data.targets["train"]
    return SpeechData(data.root, data.labels,
                      {"train": [c for c, out in zip(clips, held_out, strict=True) if not out],
                       "validation": data.clips["validation"],
                       "test": [c for c, out in zip(clips, held_out, strict=True) if out]},
                      {"train": targets[~held_out], "validation": data.targets["validation"],
                       "test": targets[held_out]})


def fold_dir(keep: Path, name: str, fold: int, folds: int) -> Path:
    """Where a kept fold model lives: a models folder of its own (manifest and file)."""
    return keep / name / f"fold{fold}of{folds}"


def recipe_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a TOML value (``room_probability=0.5``, ``peak_dbfs=[-40, 0]``)."""
    import tomllib

    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: not KEY=VALUE")
    try:
        return key.strip(), tomllib.loads(f"value = {value}")["value"]
    except tomllib.TOMLDecodeError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not TOML ({error})") from None


# Each household take goes into training this many times (freshly augmented every epoch), so
# that a few hundred takes among five thousand clips count for more than one clip each.
HOUSEHOLD_COPIES = 4


def with_household_takes(split: SpeechData, data: SpeechData, fold: int, folds: int,
                         per_word: int) -> SpeechData:
    """``split`` with the fold's households' enrollment takes (training/households.py) in its
    training part: the most a model can make of them, the ceiling of enrolling."""
    from .households import enrolled_takes

    takes = enrolled_takes(data, fold, folds, per_word) * HOUSEHOLD_COPIES
    log.info("fold %d: %d household takes (%d per word at most, %d copies) added to training",
             fold, len(takes) // HOUSEHOLD_COPIES, per_word, HOUSEHOLD_COPIES)
    return SpeechData(split.root, split.labels,
                      split.clips | {"train": split.clips["train"] + [c for _, c in takes]},
                      split.targets | {"train": np.concatenate([
                          split.targets["train"],
                          np.array([data.labels.index(w) for w, _ in takes], dtype=int)])})


def keyword_recipes() -> list[str]:
    """The keyword recipes folds can be made of: the shipped models and, for the strangers'
    ceiling, kws_b_ceiling (benchmarks/kws_ceiling.py)."""
    return [name for name, chosen in load_recipes().items() if chosen.task == "keyword"]


def run_fold(name: str, data: SpeechData, fold: int, folds: int, epochs: int | None,
             show_progress: bool, keep: Path | None = None,
             augment: dict[str, Any] | None = None, seed: int | None = None,
             household_takes: int = 0, open_set: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    from dataclasses import replace

    from .build import with_epochs
    from .evaluate import evaluate_clips
    from .kws import build
    from .negatives import Negatives

    # Trying augmentation, open-set data or another seed on the folds before it goes into a
    # recipe.
    chosen = with_epochs(recipe(name), epochs).with_settings(augment, open_set)
    chosen = replace(chosen, seed=chosen.seed if seed is None else seed)
    negatives = Negatives.load() if chosen.open_set else None
    split = fold_data(data, fold, folds)
    trained_alone = len(split.clips["train"])
    if household_takes:
        split = with_household_takes(split, data, fold, folds, household_takes)
    added = len(split.clips["train"]) - trained_alone
    with tempfile.TemporaryDirectory() as scratch:
        out = fold_dir(keep, name, fold, folds) if keep else Path(scratch)
        entry = build(chosen, split, out, show_progress, negatives=negatives)
        on_test = evaluate_clips(out, name, data.clips["test"], data.targets["test"])
        if keep:
            from tinyml_core.models import write_manifest_entry
            write_manifest_entry(out, name, entry | {"speaker_fold": {
                "fold": fold, "folds": folds, "held_out": "speakers with fold_of(speaker, "
                "folds) == fold (training.speakers.fold_of)", "seed": chosen.seed,
                "augment": chosen.augment, "open_set": chosen.open_set,
                "household_takes": {"per_word": household_takes, "copies": HOUSEHOLD_COPIES,
                                    "clips_added": added} if household_takes else None}})
    return {"fold": fold, "train_clips": len(split.clips["train"]),
            "new_speaker_clips": len(split.clips["test"]),
            "new_speakers": entry["metrics"]["accuracy"], "test_split": on_test["accuracy"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.speakers",
                                     description=__doc__.split("\n\n")[1])
    parser.add_argument("model", choices=keyword_recipes(), metavar="RECIPE",
                        help="a keyword recipe of config/recipes.toml: "
                             + ", ".join(keyword_recipes()))
    parser.add_argument("--folds", type=int, default=5, help="speaker folds (default 5)")
    parser.add_argument("--fold", type=int, action="append", metavar="K",
                        help="run only these folds (0-based, repeatable; default: all)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (smoke tests)")
    parser.add_argument("--speech-dir", type=Path, help="mini speech commands folder")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--record", action="store_true",
                        help="store the result in the model's manifest entry and refresh "
                             "models/REPORT.md")
    parser.add_argument("--models", type=Path, default=None,
                        help="folder with manifest.json, for --record (default: models/)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep each fold's model in DIR/<model>/fold<K>of<N>/ (for the "
                             "strangers' stream benchmark, benchmarks/kws_strangers.py)")
    parser.add_argument("--augment", type=recipe_setting, action="append", default=[],
                        metavar="KEY=VALUE",
                        help="change one setting of the recipe's augment table for these "
                             "folds (a TOML value; repeatable), e.g. room_probability=0.5")
    parser.add_argument("--open-set", type=recipe_setting, action="append", default=[],
                        metavar="KEY=VALUE",
                        help="change one setting of an open-set recipe's open_set table for "
                             "these folds, e.g. phrase_windows_per_epoch=800")
    parser.add_argument("--seed", type=int, help="train with this seed, not the recipe's")
    parser.add_argument("--household-takes", type=int, default=0, metavar="N",
                        help="also train on the fold's households' enrollment takes (up to N "
                             "a word, as benchmarks/kws_household.py enrolls them): the "
                             "ceiling of enrolling; its new-speaker accuracy is then no "
                             "stranger's")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    if args.record and args.model not in KEYWORD_MODELS:
        parser.error(f"--record stores a shipped model's folds; {args.model} does not ship")
    if args.record and (args.augment or args.open_set or args.seed is not None
                        or args.household_takes):
        parser.error("--record keeps the shipped recipe's folds: without --augment, "
                     "--open-set, --seed or --household-takes")
    try:  # a misspelt setting would train the recipe unchanged
        recipe(args.model).with_settings(dict(args.augment), dict(args.open_set))
    except ConfigError as error:
        parser.error(str(error))
    setup_logging(args)
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    folds = args.fold or list(range(args.folds))
    if any(not 0 <= k < args.folds for k in folds):
        parser.error(f"--fold must be within 0..{args.folds - 1}")
    data = SpeechData.load(args.speech_dir, show_progress=not args.no_progress)
    rows = []
    for fold in folds:
        log.info("fold %d of %d: training %s without its speakers", fold + 1, args.folds,
                 args.model)
        row = run_fold(args.model, data, fold, args.folds, args.epochs, not args.no_progress,
                       args.keep, dict(args.augment), args.seed, args.household_takes,
                       dict(args.open_set))
        rows.append(row)
        print(f"fold {fold}: new speakers {row['new_speakers']:.2%} on "
              f"{row['new_speaker_clips']} clips, test split {row['test_split']:.2%} "
              f"(trained on {row['train_clips']} clips)", flush=True)
    new = float(np.mean([r["new_speakers"] for r in rows]))
    test = float(np.mean([r["test_split"] for r in rows]))
    print(f"{args.model}, {len(rows)} of {args.folds} folds: new speakers {new:.2%}, "
          f"test split {test:.2%} (difference {(new - test) * 100:+.2f} points)")
    result = {"model": args.model, "folds": args.folds, "rows": rows, "new_speakers": new,
              "test_split": test}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.record:
        record(args.models, args.model, rows, args.folds)
    return 0


def record(models_dir: Path | None, name: str, rows: list[dict[str, Any]], folds: int) -> None:
    """Keep the folds in the manifest entry (rows of earlier runs for other folds too)."""
    from tinyml_core.models import read_manifest, write_manifest_entry

    from . import MODELS_DIR
    from .report import write_report

    directory = models_dir or MODELS_DIR
    entry = read_manifest(directory)[name]
    earlier = entry.get("speaker_folds", {})
    kept = {row["fold"]: row for row in earlier.get("rows", [])
            if earlier.get("folds") == folds}
    kept.update({row["fold"]: row for row in rows})
    merged = [kept[fold] for fold in sorted(kept)]
    entry["speaker_folds"] = {
        "folds": folds, "rows": merged,
        "new_speakers": float(np.mean([r["new_speakers"] for r in merged])),
        "test_split": float(np.mean([r["test_split"] for r in merged])),
        "command": f"python -m training.speakers {name} --folds {folds} --record"}
    write_manifest_entry(directory, name, entry)
    write_report(directory, {})


if __name__ == "__main__":
    sys.exit(run_main(main))
