"""Forecasters: build, train, compress and measure one recipe on climate windows.

Every model takes a window of readings in physical units (normalisation is its first
layer, with statistics of the training part) and returns future readings in °C and %RH.
What is reported is measured on the test split by the shipped file itself: the zlib'd
.tflite loaded through tinyml_core.models, the collector's loader and interpreter.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyml_core.models import FORECAST_TASK, load_forecaster

from . import climate
from .compress import apply_pruning, kernel_sparsity, pruning_callbacks, ship, strip_pruning
from .progress import EpochProgress
from .recipes import Recipe
from .tf import keras, seed_everything

log = logging.getLogger(__name__)


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


def build_model(recipe: Recipe, mean: np.ndarray, std: np.ndarray,
                folded: bool = False) -> keras.Model:
    """The recipe's architecture with its width multiplier applied.

    ``folded`` builds the export form of a residual MLP: the normalisation is folded into
    the first layer's weights (see :func:`fold_normalization`), which saves two ops.
    """
    steps, features = recipe.steps, len(climate.FEATURES)
    architecture = recipe.model.get("architecture")
    units = max(1, int(int(recipe.model.get("units", 128)) * recipe.width))
    inputs = keras.Input((climate.WINDOW, features), name="window")
    if architecture == "residual_mlp":
        # Output = last reading + learnt change: training starts from persistence and the
        # network only learns the trend.
        flat = keras.layers.Flatten(name="flat")(inputs)
        normalized = flat if folded else keras.layers.Normalization(
            mean=np.tile(mean, climate.WINDOW), variance=np.tile(std**2, climate.WINDOW),
            name="normalize")(flat)
        hidden = keras.layers.Dense(units, activation="relu", name="dense_0")(normalized)
        change = keras.layers.Dense(steps * features, name="head")(hidden)
        change = keras.layers.Reshape((steps, features), name="change")(change)
        last = keras.layers.Cropping1D((climate.WINDOW - 1, 0), name="last")(inputs)
        outputs = keras.layers.Add(name="forecast")([last, change])
        return keras.Model(inputs, outputs, name=recipe.name)
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
    mean_flat, std_flat = np.tile(mean, climate.WINDOW), np.tile(std, climate.WINDOW)
    for layer in folded.layers:
        weights = model.get_layer(layer.name).get_weights() if layer.weights else []
        if layer.name == "dense_0":
            kernel, bias = weights
            weights = [kernel / std_flat[:, None], bias - (mean_flat / std_flat) @ kernel]
        if weights:
            layer.set_weights(weights)
    return folded


def train(recipe: Recipe, data: ClimateData, show_progress: bool = True
          ) -> tuple[keras.Model, dict[str, Any]]:
    seed_everything(recipe.seed)
    x_train, y_train = data.windows("train", recipe.steps)
    x_val, y_val = data.windows("validation", recipe.steps)
    batch = int(recipe.train.get("batch_size", 32))
    epochs = int(recipe.train.get("epochs", 20))
    steps_per_epoch = -(-len(x_train) // batch)
    model = apply_pruning(build_model(recipe, data.mean, data.std), recipe.pruning,
                          steps_per_epoch)
    model.compile(optimizer=keras.optimizers.Adam(float(recipe.train.get("learning_rate", 1e-3))),
                  loss=str(recipe.train.get("loss", "mse")))
    started = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=batch, epochs=epochs,
                        validation_data=(x_val, y_val), verbose=0, shuffle=True,
                        callbacks=[*pruning_callbacks(recipe.pruning),
                                   EpochProgress(recipe.name, epochs, show_progress)])
    seconds = time.perf_counter() - started
    model = strip_pruning(model)
    return model, {"training_seconds": round(seconds, 1), "epochs": epochs,
                   "final_val_loss": float(history.history["val_loss"][-1]),
                   "kernel_sparsity": round(kernel_sparsity(model), 3)}


def manifest_entry(recipe: Recipe, data: ClimateData) -> dict[str, Any]:
    return {
        "task": FORECAST_TASK,
        "input": {"window": climate.WINDOW, "step_s": climate.STEP_S,
                  "features": list(climate.FEATURES), "units": ["Cel", "%RH"],
                  "shape": [1, climate.WINDOW, len(climate.FEATURES)], "dtype": "float32",
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
    entry = ship(recipe, model, x_train, out_dir, manifest_entry(recipe, data))
    metrics = evaluate(out_dir, recipe.name, data, recipe.steps)
    return entry | {"metrics": metrics, "training": training, "seed": recipe.seed,
                    "recipe": recipe.raw, "data": data.describe()}


def evaluate(models_dir: Path, name: str, data: ClimateData, steps: int) -> dict[str, Any]:
    """MAE of the shipped file on the test split, next to persistence."""
    forecaster = load_forecaster(models_dir, name)
    x_test, y_test = data.windows("test", steps)
    predictions = forecaster.predict(x_test)
    return {"split": "test", "windows": len(x_test),
            "mae": climate.mae_per_feature(predictions, y_test),
            "persistence": climate.mae_per_feature(climate.persistence(x_test, steps), y_test)}


def describe_recipe(recipe: Recipe) -> str:
    return (f"{recipe.model.get('architecture')}, width {recipe.width:g}, pruning "
            f"{recipe.pruning.describe()}, {recipe.quantization.mode}")


def baseline_summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {"recipe": entry["recipe"], "mae": entry["metrics"]["mae"],
            "size_bytes": entry["size_bytes"], "tensor_types": entry["tensor_types"],
            "training_seconds": entry["training"]["training_seconds"],
            "kernel_sparsity": entry["training"]["kernel_sparsity"]}


def summary_line(name: str, entry: dict[str, Any]) -> str:
    mae, base = entry["metrics"]["mae"], entry["metrics"]["persistence"]
    return (f"{name}: MAE T {mae['temperature']:.3f} °C (persistence "
            f"{base['temperature']:.3f}), RH {mae['humidity']:.3f} % (persistence "
            f"{base['humidity']:.3f}), {entry['size_bytes']} bytes, "
            f"{entry['metrics']['windows']} test windows")
