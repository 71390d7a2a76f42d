"""``python -m training.build forecast_a|forecast_b|kws_a|kws_b|kws_c|kws_e|all``

Trains each model from its recipe (config/recipes.toml), compresses it, writes
``models/<name>.tflite.zlib`` and its manifest entry, measures the shipped file on the test
split through the collector's interpreter, checks the recipe's constraints, and refreshes
the report (models/REPORT.md and its figures). Exits 1 when a constraint is not met.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyml_core.cli import add_logging_arguments, run_main, setup_logging
from tinyml_core.models import write_manifest_entry

from . import MODELS_DIR
from .recipes import RECIPES_PATH, Recipe, load_recipes

log = logging.getLogger("training.build")

FORECASTERS = ("forecast_a", "forecast_b")
KEYWORD_MODELS = ("kws_a", "kws_b", "kws_c")
# On the pretrained speech embedding (its two files come from a pinned wheel).
EMBEDDING_MODELS = ("kws_e",)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.build", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=(*FORECASTERS, *KEYWORD_MODELS, *EMBEDDING_MODELS,
                                           "forecast", "kws", "all"),
                        help="model to build; 'forecast', 'kws' or 'all' for several")
    parser.add_argument("--models", type=Path, default=MODELS_DIR,
                        help="output folder for the models and manifest.json (default: models/)")
    parser.add_argument("--recipes", type=Path, default=RECIPES_PATH,
                        help="recipes file (default: config/recipes.toml)")
    data = parser.add_argument_group("data")
    data.add_argument("--climate-csv", type=Path, action="append", metavar="FILE",
                      help="climate CSV in the Jena format (repeatable; default: the MPI "
                           "Jena roof files from data/climate or ../shared/data/climate)")
    data.add_argument("--jena", nargs="?", const="download", metavar="PATH",
                      help="use the canonical Jena file: a local .csv/.zip, or download it "
                           "(checked and cached) when no PATH is given")
    data.add_argument("--speech-dir", type=Path,
                      help="mini speech commands folder (<word>/*.wav); default: data/ "
                           "extracted from the archive, or a download")
    data.add_argument("--negatives-dir", type=Path,
                      help="what is not a keyword (words/<word>/*.wav, noise/*.wav); default: "
                           "data/negatives, extracted from ../shared/data/negatives.tar.xz")
    tune = parser.add_argument_group("a node's own room")
    tune.add_argument("--from-recording", type=Path, metavar="REC",
                      help="fine-tune the forecaster on one node's history: a `collector "
                           "record` file or a Jena-format CSV; writes <model>.<node> only when "
                           "it beats the shipped model on the recording's held-out tail")
    tune.add_argument("--node-id", help="the node the recording is of (needed for a CSV, or a "
                                        "recording of several nodes)")
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs (smoke tests)")
    parser.add_argument("--seed", type=int,
                        help="override the recipe's seed (the manifest records it): another "
                             "training of the same recipe, to see how much a number moves")
    parser.add_argument("--no-baselines", action="store_true",
                        help="skip training the published recipes beside the models")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_logging_arguments(parser)
    return parser.parse_args(argv)


def targets(target: str) -> tuple[str, ...]:
    return {"all": (*FORECASTERS, *KEYWORD_MODELS, *EMBEDDING_MODELS), "forecast": FORECASTERS,
            "kws": (*KEYWORD_MODELS, *EMBEDDING_MODELS)}.get(target, (target,))


def with_epochs(recipe: Recipe, epochs: int | None) -> Recipe:
    if epochs is None:
        return recipe
    from dataclasses import replace

    from .recipes import Pruning

    pruning = recipe.pruning
    if pruning.enabled:
        pruning = Pruning(pruning.initial_sparsity, pruning.final_sparsity,
                          min(pruning.begin_epoch, max(0, epochs - 1)), epochs)
    select_after = min(epochs, int(recipe.train.get("select_after_epoch", 0)))
    train = recipe.train | {"epochs": epochs, "select_after_epoch": select_after}
    return replace(recipe, train=train, pruning=pruning)


def check_constraints(recipe: Recipe, entry: dict[str, Any]) -> list[str]:
    """One line per constraint that does not hold (empty: all met)."""
    failed = []
    metrics = entry["metrics"]
    for key, limit in recipe.constraints.items():
        if key == "max_bytes":
            value = entry["size_bytes"]
            ok = value < limit
        elif key.endswith("_mae"):
            value = metrics["mae"][key.removesuffix("_mae")]
            ok = value < limit
        elif key == "min_accuracy":
            value = metrics["accuracy"]
            ok = value > limit
        else:
            raise ValueError(f"{recipe.name}: unknown constraint {key!r}")
        if not ok:
            failed.append(f"{recipe.name}: {key} is {value:.4g}, the limit is {limit:g}")
    return failed


def with_seed(recipe: Recipe, seed: int | None) -> Recipe:
    if seed is None:
        return recipe
    from dataclasses import replace

    return replace(recipe, seed=seed, raw=recipe.raw | {"seed": seed})


def build_one(name: str, recipes: dict[str, Recipe], args: argparse.Namespace,
              datasets: dict[str, Any]) -> list[str]:
    recipe = with_seed(with_epochs(recipes[name], args.epochs), args.seed)
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if recipe.task == "forecast":
        from . import forecast as task
        if "climate" not in datasets:
            datasets["climate"] = forecast_data(args)
        data = datasets["climate"]
    else:
        from . import kws as task  # type: ignore[no-redef]
        if "speech" not in datasets:
            datasets["speech"] = task.SpeechData.load(args.speech_dir,
                                                      show_progress=not args.no_progress)
        data = datasets["speech"]
        if recipe.open_set and "negatives" not in datasets:
            from .negatives import Negatives

            datasets["negatives"] = Negatives.load(args.negatives_dir)
        extra["negatives"] = datasets.get("negatives")
    log.info("building %s (%s)", name, task.describe_recipe(recipe))
    entry = task.build(recipe, data, args.models, show_progress=not args.no_progress, **extra)
    if recipe.baseline and not args.no_baselines:
        baseline = with_epochs(recipes[recipe.baseline], args.epochs)
        log.info("training the baseline %s (%s)", baseline.name, task.describe_recipe(baseline))
        with tempfile.TemporaryDirectory() as scratch:
            base = task.build(baseline, data, Path(scratch), show_progress=not args.no_progress,
                              **(extra if baseline.open_set else {}))
        entry["baselines"] = {"published": task.baseline_summary(base)}
    if recipe.task == "keyword":
        from .latency import measure

        entry["latency"] = measure(args.models, name, runs=100)
    entry["constraints"] = recipe.constraints
    failed = check_constraints(recipe, entry)
    entry["constraints_met"] = not failed
    entry["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entry["build_seconds"] = round(time.perf_counter() - started, 1)
    from .tf import versions

    entry["versions"] = versions()
    write_manifest_entry(args.models, name, entry)
    print(task.summary_line(name, entry), flush=True)
    for line in failed:
        log.error("constraint not met: %s", line)
    return failed


def forecast_data(args: argparse.Namespace) -> Any:
    from . import climate
    from .forecast import ClimateData

    files = list(args.climate_csv or [])
    if args.jena:
        files.append(climate.jena_csv(None if args.jena == "download" else Path(args.jena)))
    return ClimateData.load(files or climate.default_climate_files())


def fine_tune_command(args: argparse.Namespace, recipes: dict[str, Recipe]) -> int:
    from tinyml_core.errors import ConfigError
    from tinyml_core.topics import validate_id

    from .forecast import fine_tune
    from .recording import load_recording

    if args.target not in FORECASTERS:
        raise ConfigError(f"--from-recording fine-tunes one forecaster ({', '.join(FORECASTERS)}),"
                          f" not {args.target!r}")
    recording = load_recording(args.from_recording, args.node_id)
    if recording.node_id is None:
        raise ConfigError("a CSV does not say which node it is from: give --node-id")
    name = f"{args.target}.{validate_id(recording.node_id)}"
    if len(name) > 32:
        raise ConfigError(f"{name!r} is longer than a model name may be (32 characters): use "
                          "a shorter --node-id")
    recipe = with_seed(with_epochs(recipes[args.target], args.epochs), args.seed)
    log.info("fine-tuning %s on %s: %d steps in %d segments", args.target,
             args.from_recording, recording.steps, len(recording.segments))
    result = fine_tune(recipe, forecast_data(args), recording, args.models, name,
                       show_progress=not args.no_progress)
    before, after = result["before"], result["after"]
    print(f"{name}: on the recording's last 20 % ({result['tail_windows']} windows; trained on "
          f"{result['train_windows']}), MAE and skill over persistence:")
    for feature, unit in (("temperature", "°C"), ("humidity", "%RH")):
        print(f"  {feature:<12} shipped {before['mae'][feature]:.3f} {unit} "
              f"({before['skill'][feature]:+.1%}), tuned {after['mae'][feature]:.3f} {unit} "
              f"({after['skill'][feature]:+.1%}), persistence "
              f"{after['persistence'][feature]:.3f} {unit}")
    if not result["fits"]:
        print(f"the tuned model has {result['size_bytes']} bytes, over the recipe's limit: "
              f"nothing written, keep {args.target}")
        return 1
    if not result["better"]:
        print(f"the tuned model is not better on both: nothing written, keep {args.target}")
        return 0
    print(f"wrote {args.models / (name + '.tflite.zlib')} ({result['size_bytes']} bytes) and its "
          f"manifest entry; use it for the node with [collector] node_models = "
          f"[\"{recording.node_id}={name}\"]")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args)
    recipes = load_recipes(args.recipes)
    args.models.mkdir(parents=True, exist_ok=True)
    if args.from_recording is not None:
        return fine_tune_command(args, recipes)
    failed: list[str] = []
    datasets: dict[str, Any] = {}
    started = time.perf_counter()
    for name in targets(args.target):
        failed += build_one(name, recipes, args, datasets)
    from .report import write_report

    write_report(args.models, datasets)
    log.info("built %s in %.1f min; report: %s", ", ".join(targets(args.target)),
             (time.perf_counter() - started) / 60, args.models / "REPORT.md")
    if failed:
        print(f"{len(failed)} constraint(s) not met:", *failed, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
