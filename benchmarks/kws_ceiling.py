"""How far a keyword model with no size limit gets on the continuous stream.

    .venv/bin/python benchmarks/kws_ceiling.py [--recipe kws_b_ceiling] [--out data/ceiling]

Trains the recipe of config/recipes.toml (by default kws_b's front end, data and training
with 4x its filters, a fifth block, float weights and no pruning: about 360,000 parameters,
1.3 MB against kws_b's 50 kB limit; 20-40 min on two cores) into ``--out``, unless the model
there was built from the same recipe. Then it measures it as benchmarks/kws_stream.py
measures the shipped models: its threshold chosen on the validation stream (the most keywords
at no more than 5 false accepts an hour), its recall and false accepts on the test stream at
that threshold, beside the shipped kws_b at its own. If a model this large misses a stream
target, a model under the limit, trained from the same data, is not expected to meet it.
Needs the datasets (../shared/data or data/) and the training extra.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector.settings import CollectorOptions, scan_settings  # noqa: E402
from tinyml_core.cli import add_logging_arguments, setup_logging  # noqa: E402
from tinyml_core.errors import ModelLoadError  # noqa: E402
from tinyml_core.models import load_keyword_spotter, read_manifest  # noqa: E402
from training import DATA_DIR, MODELS_DIR  # noqa: E402
from training.negatives import Negatives  # noqa: E402
from training.recipes import RECIPES_PATH, recipe  # noqa: E402
from training.speech import SpeechData  # noqa: E402
from training.stream import (  # noqa: E402
    THRESHOLD_CHOICES,
    capture_events,
    choose_threshold,
    part_stream,
    threshold_table,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Needs mini speech commands and negatives.tar.xz.")
    parser.add_argument("--recipe", default="kws_b_ceiling",
                        help="keyword recipe in --recipes (default kws_b_ceiling)")
    parser.add_argument("--recipes", type=Path, default=RECIPES_PATH)
    parser.add_argument("--out", type=Path, default=DATA_DIR / "ceiling",
                        help="where the model is built and kept (default data/ceiling, "
                             "git-ignored)")
    parser.add_argument("--compare", default="kws_b",
                        help="shipped model printed beside it (default kws_b)")
    parser.add_argument("--max-false-per-hour", type=float, default=5.0)
    parser.add_argument("--no-progress", action="store_true",
                        help="hide progress bars (a log line every tenth of the training "
                             "instead)")
    add_logging_arguments(parser)
    args = parser.parse_args()
    setup_logging(args)
    chosen_recipe = recipe(args.recipe, args.recipes)
    if chosen_recipe.task != "keyword":
        parser.error(f"{args.recipe} is not a keyword recipe")
    negatives = Negatives.load()
    try:
        built = read_manifest(args.out).get(chosen_recipe.name, {})
    except ModelLoadError:
        built = {}
    reuse = built.get("recipe") == chosen_recipe.raw
    # The training part only when the model is to be trained; the streams need the others.
    speech = SpeechData.load(parts=("validation", "test") if reuse else
                             ("train", "validation", "test"), show_progress=not args.no_progress)
    if reuse:
        print(f"{chosen_recipe.name}: built earlier from the same recipe, in {args.out}")
    else:
        from training import kws

        started = time.perf_counter()
        print(f"training {chosen_recipe.name} ({kws.describe_recipe(chosen_recipe)}) into "
              f"{args.out}", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        entry = kws.build(chosen_recipe, speech, args.out, not args.no_progress, negatives)
        from tinyml_core.models import write_manifest_entry

        write_manifest_entry(args.out, chosen_recipe.name, entry)
        print(kws.summary_line(chosen_recipe.name, entry)
              + f" ({(time.perf_counter() - started) / 60:.0f} min)", flush=True)
        built = entry
    streams = {part: part_stream(speech, negatives, part) for part in ("validation", "test")}
    events = {part: capture_events(stream) for part, stream in streams.items()}
    scan = scan_settings(CollectorOptions())  # as the collector scans, threshold swept
    print(f"\n{'model':<16} {'parameters':>10} {'bytes':>9} {'split':>7} {'threshold':>9} "
          f"{'validation':>17} {'test stream':>17}")
    for models_dir, name, entry in ((args.out, chosen_recipe.name, built),
                                    (MODELS_DIR, args.compare,
                                     read_manifest(MODELS_DIR)[args.compare])):
        validation = threshold_table(streams["validation"], events["validation"], models_dir,
                                     name, THRESHOLD_CHOICES, scan)
        chosen = choose_threshold(validation, args.max_false_per_hour)
        if chosen is None:
            print(f"{name:<16} no threshold stays within {args.max_false_per_hour:g} false "
                  "accepts an hour on the validation stream")
            continue
        [test] = threshold_table(streams["test"], events["test"], models_dir, name,
                                 (chosen.threshold,), scan)
        shipped = load_keyword_spotter(models_dir, name).contract.default_threshold
        note = "" if models_dir == args.out or abs(shipped - chosen.threshold) < 1e-9 else \
            f" (ships {shipped:.2f})"
        print(f"{name:<16} {entry['parameters']:>10,} {entry['size_bytes']:>9,} "
              f"{entry['metrics']['accuracy']:>7.2%} {chosen.threshold:>9.2f} "
              f"{chosen.recall:>8.1%} {chosen.false_per_hour:>5.1f}/h "
              f"{test.recall:>8.1%} {test.false_per_hour:>5.1f}/h{note}")
    print("\nrecall and false accepts per hour; the threshold is chosen on validation, the test "
          "stream is measured at it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
