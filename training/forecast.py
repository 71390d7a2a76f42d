"""Forecasters: build, train, compress and measure one recipe on climate windows.

Every model takes a window of readings in physical units (normalisation is its first
layer, with statistics of the training part) and returns future readings in °C and %RH.
What is reported is measured on the test split by the shipped file itself: the zlib'd
.tflite loaded through tinyml_core.models, the collector's loader and interpreter.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyml_core.models import FORECAST_TASK, load_forecaster, time_of_day, write_manifest_entry

from . import climate
from .compress import apply_pruning, kernel_sparsity, pruning_callbacks, ship, strip_pruning
from .progress import EpochProgress
from .recipes import Pruning, Recipe
from .sensors import load_sensors, sensor
from .tf import keras, seed_everything

log = logging.getLogger(__name__)

AVERAGED_READS = 60  # a node reading every 10 s, one 10-minute step


@dataclass(frozen=True)
class ClimateData:
    """Windows of each split part, with the files and statistics they came from."""

    files: list[Path]
    parts: dict[str, list[climate.Segment]]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def load(cls, files: list[Path]) -> ClimateData:
        parts = climate.split_segments(climate.load_segments(files))
        if not all(parts[name] for name in climate.PARTS):
            raise climate.DataError("too few readings for a 70/20/10 split")
        mean, std = climate.normalization(parts["train"])
        return cls(files, parts, mean, std)

    def windows(self, part: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
        return climate.windows(self.parts[part], steps)

    def end_times(self, part: str, steps: int) -> np.ndarray:
        return climate.window_end_times(self.parts[part], steps)

    def describe(self) -> dict[str, Any]:
        counts = {name: int(sum(len(s) for s in self.parts[name])) for name in climate.PARTS}
        return {"files": climate.describe(self.files), "split": "chronological 70/20/10 by "
                "reading count; windows never span a time gap or a split boundary",
                "readings": counts,
                "test_period": [_iso(self.parts["test"][0].start_time),
                                _iso(self.parts["test"][-1].start_time
                                     + (len(self.parts["test"][-1]) - 1) * climate.STEP_S)]}


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def uses_time_of_day(recipe: Recipe) -> bool:
    return bool(recipe.model.get("time_of_day", False))


def input_rows(recipe: Recipe) -> int:
    return climate.WINDOW + (1 if uses_time_of_day(recipe) else 0)


def model_inputs(recipe: Recipe, windows: np.ndarray, end_times: np.ndarray) -> np.ndarray:
    """What the network sees: the readings, then a row with the last one's time of day when
    the recipe asks for it (the collector's loader adds it the same way: tinyml_core.models)."""
    if not uses_time_of_day(recipe):
        return windows
    return np.concatenate([windows, time_of_day(end_times)], axis=1)


def input_statistics(recipe: Recipe, mean: np.ndarray, std: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per flattened input: the readings' training statistics for each row; sin and cos of a
    uniform time of day have mean 0 and standard deviation 1/√2."""
    flat_mean, flat_std = np.tile(mean, climate.WINDOW), np.tile(std, climate.WINDOW)
    if not uses_time_of_day(recipe):
        return flat_mean, flat_std
    return np.r_[flat_mean, 0.0, 0.0], np.r_[flat_std, 2**-0.5, 2**-0.5]


def build_model(recipe: Recipe, mean: np.ndarray, std: np.ndarray,
                folded: bool = False) -> keras.Model:
    """The recipe's architecture with its width multiplier applied.

    ``folded`` builds the export form of a residual MLP: the normalisation is folded into
    the first layer's weights (see :func:`fold_normalization`), which saves two ops.
    """
    steps, features = recipe.steps, len(climate.FEATURES)
    architecture = recipe.model.get("architecture")
    units = max(1, int(int(recipe.model.get("units", 128)) * recipe.width))
    rows = input_rows(recipe)
    inputs = keras.Input((rows, features), name="window")
    if architecture == "residual_mlp":
        # Output = last reading + learnt change: training starts from persistence and the
        # network only learns the trend.
        flat_mean, flat_std = input_statistics(recipe, mean, std)
        flat = keras.layers.Flatten(name="flat")(inputs)
        normalized = flat if folded else keras.layers.Normalization(
            mean=flat_mean, variance=flat_std**2, name="normalize")(flat)
        hidden = keras.layers.Dense(units, activation="relu", name="dense_0")(normalized)
        change = keras.layers.Dense(steps * features, name="head")(hidden)
        change = keras.layers.Reshape((steps, features), name="change")(change)
        last = keras.layers.Cropping1D((climate.WINDOW - 1, rows - climate.WINDOW),
                                       name="last")(inputs)
        outputs = keras.layers.Add(name="forecast")([last, change])
        return keras.Model(inputs, outputs, name=recipe.name)
    if uses_time_of_day(recipe):
        raise ValueError(f"{recipe.name}: time_of_day needs the residual_mlp architecture")
    normalized = keras.layers.Normalization(axis=-1, mean=mean, variance=std**2,
                                            name="normalize")(inputs)
    if architecture == "mlp":
        hidden = keras.layers.Flatten()(normalized)
        for index in range(2):
            hidden = keras.layers.Dense(units, activation="relu", name=f"dense_{index}")(hidden)
    elif architecture == "cnn":
        hidden = keras.layers.Conv1D(units, 3, activation="relu", name="conv")(normalized)
        hidden = keras.layers.Flatten()(hidden)
        hidden = keras.layers.Dense(units, activation="relu", name="dense_0")(hidden)
    else:
        raise ValueError(f"{recipe.name}: unknown forecast architecture {architecture!r}")
    flat_out = keras.layers.Dense(steps * features, name="head")(hidden)
    outputs = keras.layers.Reshape((steps, features), name="forecast")(flat_out)
    return keras.Model(inputs, outputs, name=recipe.name)


def fold_normalization(recipe: Recipe, model: keras.Model, mean: np.ndarray,
                       std: np.ndarray) -> keras.Model:
    """The same function without the normalisation layer: W' = W/σ, b' = b − (μ/σ)·W."""
    if recipe.model.get("architecture") != "residual_mlp":
        return model
    folded = build_model(recipe, mean, std, folded=True)
    mean_flat, std_flat = input_statistics(recipe, mean, std)
    for layer in folded.layers:
        weights = model.get_layer(layer.name).get_weights() if layer.weights else []
        if layer.name == "dense_0":
            kernel, bias = weights
            weights = [kernel / std_flat[:, None], bias - (mean_flat / std_flat) @ kernel]
        if weights:
            layer.set_weights(weights)
    return folded


class SensorAugmented(keras.utils.Sequence):  # type: ignore[misc]
    """Training batches in which, every epoch, a fresh ``fraction`` of the windows look as the
    collector would average them from the recipe's sensor (``augment`` in the recipe: sensor,
    fraction, readings_per_step, dropped; each window with a random share of the sensor's
    noise, from none to all of it); the rest stay as recorded."""

    def __init__(self, recipe: Recipe, windows: np.ndarray, end_times: np.ndarray,
                 labels: np.ndarray) -> None:
        super().__init__()
        settings = recipe.augment
        self.recipe, self.windows, self.end_times, self.labels = recipe, windows, end_times, labels
        self.sensor = sensor(str(settings["sensor"]))
        self.fraction = float(settings.get("fraction", 0.5))
        low, high = settings.get("readings_per_step", (1, 30))
        self.readings_per_step = (int(low), int(high))
        self.dropped = float(settings.get("dropped", 0.1))
        self.batch_size = int(recipe.train.get("batch_size", 32))
        self.rng = np.random.default_rng(recipe.seed)
        self.on_epoch_end()

    def on_epoch_end(self) -> None:
        order = self.rng.permutation(len(self.windows))
        windows = self.windows[order].copy()
        chosen = self.rng.random(len(windows)) < self.fraction
        windows[chosen] = self.sensor.collected(
            windows[chosen], self.rng, self.readings_per_step, self.dropped,
            noise_scale=self.rng.random(int(chosen.sum())))
        self.x = model_inputs(self.recipe, windows, self.end_times[order])
        self.y = self.labels[order]

    def __len__(self) -> int:
        return -(-len(self.windows) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        batch = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[batch], self.y[batch]


def train(recipe: Recipe, data: ClimateData, show_progress: bool = True
          ) -> tuple[keras.Model, dict[str, Any]]:
    seed_everything(recipe.seed)
    x_train, y_train = data.windows("train", recipe.steps)
    x_val, y_val = data.windows("validation", recipe.steps)
    x_val = model_inputs(recipe, x_val, data.end_times("validation", recipe.steps))
    batch = int(recipe.train.get("batch_size", 32))
    epochs = int(recipe.train.get("epochs", 20))
    steps_per_epoch = -(-len(x_train) // batch)
    model = apply_pruning(build_model(recipe, data.mean, data.std), recipe.pruning,
                          steps_per_epoch)
    model.compile(optimizer=keras.optimizers.Adam(float(recipe.train.get("learning_rate", 1e-3))),
                  loss=str(recipe.train.get("loss", "mse")))
    started = time.perf_counter()
    callbacks = [*pruning_callbacks(recipe.pruning),
                 EpochProgress(recipe.name, epochs, show_progress)]
    train_times = data.end_times("train", recipe.steps)
    if recipe.augment.get("sensor"):
        history = model.fit(SensorAugmented(recipe, x_train, train_times, y_train),
                            epochs=epochs, validation_data=(x_val, y_val), verbose=0,
                            callbacks=callbacks)
    else:
        history = model.fit(model_inputs(recipe, x_train, train_times), y_train,
                            batch_size=batch, epochs=epochs, validation_data=(x_val, y_val),
                            verbose=0, shuffle=True, callbacks=callbacks)
    seconds = time.perf_counter() - started
    model = strip_pruning(model)
    return model, {"training_seconds": round(seconds, 1), "epochs": epochs,
                   "final_val_loss": float(history.history["val_loss"][-1]),
                   "kernel_sparsity": round(kernel_sparsity(model), 3)}


def manifest_entry(recipe: Recipe, data: ClimateData) -> dict[str, Any]:
    time_features = ["time_of_day"] if uses_time_of_day(recipe) else []
    return {
        "task": FORECAST_TASK,
        "input": {"window": climate.WINDOW, "step_s": climate.STEP_S,
                  "features": list(climate.FEATURES), "units": ["Cel", "%RH"],
                  "time_features": time_features,
                  "shape": [1, input_rows(recipe), len(climate.FEATURES)],
                  "dtype": "float32",
                  "normalization": {"mean": [round(float(v), 6) for v in data.mean],
                                    "std": [round(float(v), 6) for v in data.std],
                                    "applied": "inside the model: feed physical units"}},
        "output": {"steps": recipe.steps, "step_s": climate.STEP_S,
                   "features": list(climate.FEATURES), "units": ["Cel", "%RH"],
                   "shape": [1, recipe.steps, len(climate.FEATURES)], "dtype": "float32"},
    }


def build(recipe: Recipe, data: ClimateData, out_dir: Path, show_progress: bool = True
          ) -> dict[str, Any]:
    """Train, compress, write ``out_dir/<name>.tflite.zlib``; measure it on the test split.

    Returns the manifest entry (without the write): contract, metrics, size, provenance.
    """
    model, training = train(recipe, data, show_progress)
    model = fold_normalization(recipe, model, data.mean, data.std)
    x_train, _ = data.windows("train", recipe.steps)
    x_train = model_inputs(recipe, x_train, data.end_times("train", recipe.steps))
    entry = ship(recipe, model, x_train, out_dir, manifest_entry(recipe, data))
    metrics = evaluate(out_dir, recipe.name, data, recipe.steps)
    return entry | {"metrics": metrics, "training": training, "seed": recipe.seed,
                    "recipe": recipe.raw, "data": data.describe()}


def evaluate(models_dir: Path, name: str, data: ClimateData, steps: int) -> dict[str, Any]:
    """MAE of the shipped file on the test split, next to persistence: with the inputs as
    recorded, and as each sensor of config/sensors.toml reads them (targets as recorded)."""
    forecaster = load_forecaster(models_dir, name)
    x_test, y_test = data.windows("test", steps)
    end_times = data.end_times("test", steps)

    def measured(inputs: np.ndarray) -> dict[str, Any]:
        return climate.against_persistence(forecaster.predict(inputs, end_times), inputs, y_test)

    result = {"split": "test", "windows": len(x_test)} | measured(x_test)
    result["sensors"] = {}
    for name, reading in load_sensors().items():
        if name == "none":
            continue
        # One read per step (the worst case), and what the collector really averages from a
        # node reading every 10 s (60 reads per step, a tenth of them failed).
        result["sensors"][name] = measured(reading.quantize(x_test))
        averaged = reading.collected(x_test, np.random.default_rng(0),
                                     (AVERAGED_READS, AVERAGED_READS), dropped=0.1)
        result["sensors"][f"{name}, {AVERAGED_READS} reads averaged"] = measured(averaged)
    return result


def describe_recipe(recipe: Recipe) -> str:
    return (f"{recipe.model.get('architecture')}, width {recipe.width:g}, pruning "
            f"{recipe.pruning.describe()}, {recipe.quantization.mode}")


def baseline_summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {"recipe": entry["recipe"], "mae": entry["metrics"]["mae"],
            "size_bytes": entry["size_bytes"], "tensor_types": entry["tensor_types"],
            "training_seconds": entry["training"]["training_seconds"],
            "kernel_sparsity": entry["training"]["kernel_sparsity"]}


def summary_line(name: str, entry: dict[str, Any]) -> str:
    metrics = entry["metrics"]
    mae, base = metrics["mae"], metrics["persistence"]
    line = (f"{name}: MAE T {mae['temperature']:.3f} °C (persistence "
            f"{base['temperature']:.3f}), RH {mae['humidity']:.3f} % (persistence "
            f"{base['humidity']:.3f}), {entry['size_bytes']} bytes, "
            f"{metrics['windows']} test windows")
    dht11 = metrics.get("sensors", {}).get("dht11")
    if dht11:
        line += (f"; skill over persistence as recorded T {metrics['skill']['temperature']:+.1%}"
                 f" RH {metrics['skill']['humidity']:+.1%}, DHT11 inputs T "
                 f"{dht11['skill']['temperature']:+.1%} RH {dht11['skill']['humidity']:+.1%}")
    return line


# ---------------------------------------------------------------- a node's own room


FINE_TUNE_SPLIT = (0.7, 0.1, 0.2)  # the recording's own chronological split: tail held out


def fine_tune(recipe: Recipe, data: ClimateData, recording: Any, models_dir: Path,
              name: str, show_progress: bool = True) -> dict[str, Any]:
    """Train the recipe as shipped, then go on training on the recording's first 70 % (pruning
    held at its final sparsity, a fifth of the learning rate); measure the shipped model and the
    tuned one on the recording's last 20 %. Writes ``models_dir/<name>.tflite.zlib`` and its
    manifest entry only when the tuned model is better on both features and within the recipe's
    size limit; returns the result."""
    parts = climate.split_segments(recording.segments, FINE_TUNE_SPLIT)
    x_train, y_train = climate.windows(parts["train"], recipe.steps)
    x_val, y_val = climate.windows(parts["validation"], recipe.steps)
    x_tail, y_tail = climate.windows(parts["test"], recipe.steps)
    if min(len(x_train), len(x_val), len(x_tail)) == 0:
        raise climate.DataError(f"{recording.path}: too few gap-free steps in one of the "
                                "recording's parts (70/10/20) to fine-tune and measure")

    def times(part: str) -> np.ndarray:
        return climate.window_end_times(parts[part], recipe.steps)

    base, _ = train(recipe, data, show_progress)
    tuned_recipe = dataclasses.replace(recipe, name=name)
    epochs = int(recipe.train.get("fine_tune_epochs", 30))
    batch = int(recipe.train.get("batch_size", 32))
    final = recipe.pruning.final_sparsity
    hold = Pruning(final, final, 0, epochs) if recipe.pruning.enabled else recipe.pruning
    model = apply_pruning(base, hold, -(-len(x_train) // batch))
    model.compile(optimizer=keras.optimizers.Adam(
        float(recipe.train.get("learning_rate", 1e-3)) / 5),
        loss=str(recipe.train.get("loss", "mse")))
    model.fit(model_inputs(recipe, x_train, times("train")), y_train, batch_size=batch,
              epochs=epochs, verbose=0, shuffle=True,
              validation_data=(model_inputs(recipe, x_val, times("validation")), y_val),
              callbacks=[*pruning_callbacks(hold),
                         EpochProgress(f"{name} (fine-tune)", epochs, show_progress)])
    model = fold_normalization(recipe, strip_pruning(model), data.mean, data.std)

    def measured(forecaster_dir: Path, model_name: str) -> dict[str, Any]:
        forecaster = load_forecaster(forecaster_dir, model_name)
        return climate.against_persistence(forecaster.predict(x_tail, times("test")), x_tail,
                                           y_tail)

    before = measured(models_dir, recipe.name)
    with tempfile.TemporaryDirectory() as scratch:
        entry = ship(tuned_recipe, model, model_inputs(recipe, x_train, times("train")),
                     Path(scratch), manifest_entry(recipe, data))
        after = measured(Path(scratch), name)
        better = all(after["mae"][f] < before["mae"][f] for f in climate.FEATURES)
        fits = entry["size_bytes"] < recipe.constraints.get("max_bytes", float("inf"))
        result = {"model": name, "base_model": recipe.name, "tail_windows": len(x_tail),
                  "train_windows": len(x_train), "before": before, "after": after,
                  "better": better, "fits": fits, "recording": recording.describe(),
                  "size_bytes": entry["size_bytes"]}
        if better and fits:
            shutil.copy2(Path(scratch) / entry["file"], models_dir / entry["file"])
            write_manifest_entry(models_dir, name, entry | {
                "base_model": recipe.name, "metrics": {"recording_tail": after,
                                                       "shipped_on_tail": before},
                "recording": result["recording"], "training": {"fine_tune_epochs": epochs},
                "seed": recipe.seed, "recipe": recipe.raw, "data": data.describe()})
    return result
