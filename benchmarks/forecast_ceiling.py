"""How much skill over persistence the forecasters' inputs allow at all, beside the shipped models.

    .venv/bin/python benchmarks/forecast_ceiling.py [--window 6] [--reads-per-step 60]
        [--dropped 0.1] [--json FILE]

A forecaster sees the last ``window`` readings (6, ten minutes apart: the contract) and the
time. How far can any model get from that? For each horizon (forecast_a: the next 3 steps,
forecast_b: the next 9) and each input condition (as recorded, 0.01 degree; as one DHT11 read
per step reports it, whole degrees and percent; as the collector averages ``--reads-per-step``
DHT11 reads, each with its noise, the node's default of one every 10 s giving 60; one read
per step with its noise, the harshest case), on the test split of the MPI Jena roof files,
this prints the skill over persistence (1 - MAE / persistence MAE; persistence from the same
inputs, targets as recorded) of:

- a linear model: least squares on the changes from the last reading, the last reading, and
  sin/cos of the time of day and of the day of the year;
- a large MLP on the same features: 2 x 256 units (about 70,000 weights; the shipped
  forecast_a has 174), L1 loss, trained for that condition alone with early stopping on the
  validation split: an estimate of the ceiling, not a model to ship;
- the shipped model (models/), one network for both conditions.

``--window 36`` shows what six hours of readings would allow (not the contract). Needs the
climate files (data/climate or ../shared/data/climate). About 2 minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tinyml_core.errors import TinyMLError  # noqa: E402
from tinyml_core.models import load_forecaster  # noqa: E402
from training import climate  # noqa: E402
from training.ceiling import large_mlp, linear  # noqa: E402
from training.sensors import sensor  # noqa: E402

HORIZONS = {"forecast_a": 3, "forecast_b": 9}


def skill(predicted: np.ndarray, inputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return climate.against_persistence(predicted, inputs, labels)["skill"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=climate.WINDOW,
                        help=f"past readings the ceiling models see (default {climate.WINDOW}, "
                             "the contract; the shipped models always see 6)")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reads-per-step", type=int, default=60, metavar="N",
                        help="DHT11 reads the collector averages a step, as `training.evaluate "
                             "--reads-per-step` feeds them (default 60: the node's 10 s "
                             "period in a 10-minute step)")
    parser.add_argument("--dropped", type=float, default=0.0, metavar="P",
                        help="share of those reads lost (default 0)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the numbers as JSON")
    args = parser.parse_args()
    started = time.perf_counter()
    from training.forecast import ClimateData  # TensorFlow: after --help

    data = ClimateData.load(climate.default_climate_files())
    dht11 = sensor("dht11")
    if args.reads_per_step < 1 or not 0 <= args.dropped < 1:
        parser.error("--reads-per-step is at least 1 and --dropped in [0, 1)")

    def reads(count: int) -> Callable[[np.ndarray], np.ndarray]:
        def collected(values: np.ndarray) -> np.ndarray:
            rng = np.random.default_rng(args.seed)  # the same reads for every model
            return dht11.collected(values, rng, (count, count), args.dropped)
        return collected

    conditions = {"as recorded": lambda v: v, "DHT11, one read per step": dht11.quantize,
                  f"DHT11, {args.reads_per_step} reads a step": reads(args.reads_per_step),
                  "DHT11, one noisy read": reads(1)}
    print(f"skill over persistence on the test split ({args.window} past readings for the "
          "linear and large models; the target of issue 15 is +20 %)")
    print(f"{'model':<11}{'inputs':<26}{'linear T':>9}{'RH':>7}{'large T':>9}{'RH':>7}"
          f"{'shipped T':>11}{'RH':>7}")
    report: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for name, steps in HORIZONS.items():
        def part(which: str, steps: int = steps) -> tuple[np.ndarray, ...]:
            x, y = climate.windows(data.parts[which], steps, args.window)
            return x, climate.window_end_times(data.parts[which], steps, args.window), y

        train, validation, test = part("train"), part("validation"), part("test")
        try:
            forecaster = load_forecaster(args.models, name)
        except TinyMLError as error:  # a models folder without it: show the ceiling alone
            print(f"({name} not loaded from {args.models}: {error})")
            forecaster = None
        x6, y6 = data.windows("test", steps)
        report[name] = {}
        for condition, reading in conditions.items():
            seen = [reading(x) for x in (train[0], validation[0], test[0])]
            row = {"linear": skill(linear((seen[0], train[1], train[2]), (seen[2], test[1]),
                                          steps), seen[2], test[2]),
                   "large": skill(large_mlp((seen[0], train[1], train[2]),
                                            (seen[1], validation[1], validation[2]),
                                            (seen[2], test[1]), steps, args.seed),
                                  seen[2], test[2])}
            if forecaster is not None:
                x_seen = reading(x6)
                row["shipped"] = skill(forecaster.predict(x_seen, data.end_times("test", steps)),
                                       x_seen, y6)
            report[name][condition] = row
            cells = [f"{row[k]['temperature']:>+{width}.1%}{row[k]['humidity']:>+7.1%}"
                     for k, width in (("linear", 9), ("large", 9), ("shipped", 11)) if k in row]
            print(f"{name:<11}{condition:<26}{''.join(cells)}", flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"window": args.window, "seed": args.seed,
                                         "reads_per_step": args.reads_per_step,
                                         "dropped": args.dropped, "skill": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
