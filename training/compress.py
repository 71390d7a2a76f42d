"""The compression steps every recipe shares: magnitude pruning, PTQ and zlib.

- width multiplier: applied by the model builders (fewer units/filters per layer);
- magnitude pruning: tfmot's prune_low_magnitude with a PolynomialDecay schedule, on every
  Dense and Conv layer (tfmot cannot prune depthwise kernels);
- post-training quantization: "int8_weights" (dynamic range), "float16" weights, or
  "int8_full" with a representative dataset (float input and output kept);
- zlib level 9 on the .tflite bytes: the shipped file.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tinyml_core.models import MODEL_SUFFIX, file_sha256, write_manifest_entry

from .recipes import Pruning, Quantization, Recipe
from .tf import keras, tf, tfmot

PRUNABLE = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D)


def apply_pruning(model: keras.Model, pruning: Pruning, steps_per_epoch: int) -> keras.Model:
    """Wrap the prunable layers; the schedule runs between the recipe's begin and end epoch."""
    if not pruning.enabled:
        return model
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=pruning.initial_sparsity, final_sparsity=pruning.final_sparsity,
        begin_step=pruning.begin_epoch * steps_per_epoch,
        end_step=max(pruning.end_epoch, pruning.begin_epoch + 1) * steps_per_epoch)

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, PRUNABLE) and not isinstance(layer, keras.layers.DepthwiseConv2D):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return keras.models.clone_model(model, clone_function=wrap)


def pruning_callbacks(pruning: Pruning) -> list[keras.callbacks.Callback]:
    return [tfmot.sparsity.keras.UpdatePruningStep()] if pruning.enabled else []


def strip_pruning(model: keras.Model) -> keras.Model:
    return tfmot.sparsity.keras.strip_pruning(model)


def kernel_sparsity(model: keras.Model) -> float:
    """Fraction of zero weights over all kernels (Dense, Conv, depthwise)."""
    zeros = total = 0
    for layer in model.layers:
        for weight in layer.weights:
            if "kernel" in weight.name:
                values = weight.numpy()
                zeros += int(np.sum(values == 0))
                total += values.size
    return zeros / total if total else 0.0


def to_tflite(model: keras.Model, quantization: Quantization,
              representative: Callable[[], Iterator[list[np.ndarray]]] | None = None) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    mode = quantization.mode
    if mode != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8_full":
        if representative is None:
            raise ValueError("int8_full quantization needs a representative dataset")
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return bytes(converter.convert())


def representative_dataset(inputs: np.ndarray, count: int, seed: int
                           ) -> Callable[[], Iterator[list[np.ndarray]]]:
    """Calibration samples drawn from the training inputs only."""
    chosen = np.random.default_rng(seed).choice(len(inputs), min(count, len(inputs)),
                                                replace=False)

    def generate() -> Iterator[list[np.ndarray]]:
        for index in chosen:
            yield [inputs[index: index + 1].astype(np.float32)]

    return generate


def zlib_compress(tflite: bytes) -> bytes:
    return zlib.compress(tflite, 9)


def tensor_types(tflite: bytes) -> dict[str, int]:
    """Count of constant tensors by dtype: shows what a quantization really stored."""
    from tinyml_core.models import interpreter_class

    interpreter = interpreter_class()(model_content=tflite)
    counts: Counter[str] = Counter()
    for detail in interpreter.get_tensor_details():
        try:
            interpreter.get_tensor(detail["index"])
        except ValueError:
            continue
        if detail["shape"].size and np.prod(detail["shape"]) > 1:
            counts[np.dtype(detail["dtype"]).name] += 1
    return dict(counts)


def strip_metadata(tflite: bytes) -> bytes:
    """Drop what the runtime does not read: tensor and subgraph names, signatures and the
    converter's metadata. On models of a few hundred weights this is a third of the file."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    flatbuffer_utils.strip_strings(model)
    dropped = {entry.buffer for entry in (model.metadata or [])}
    model.metadata = None
    for index in dropped:  # keep buffer indices stable, empty the metadata's content
        model.buffers[index].data = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def ship(recipe: Recipe, model: keras.Model, calibration_inputs: np.ndarray, out_dir: Path,
         contract: dict[str, Any]) -> dict[str, Any]:
    """Quantize, strip and zlib ``model``; write ``out_dir/<name>.tflite.zlib`` and its
    manifest entry (``contract`` plus file facts) so the collector's loader can measure it."""
    representative = representative_dataset(calibration_inputs,
                                            recipe.quantization.calibration_samples, recipe.seed)
    tflite = strip_metadata(to_tflite(model, recipe.quantization, representative))
    compressed = zlib_compress(tflite)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{recipe.name}{MODEL_SUFFIX}").write_bytes(compressed)
    entry = contract | {
        "file": f"{recipe.name}{MODEL_SUFFIX}", "size_bytes": len(compressed),
        "tflite_bytes": len(tflite), "sha256": file_sha256(compressed),
        "tensor_types": tensor_types(tflite), "parameters": int(model.count_params()),
    }
    write_manifest_entry(out_dir, recipe.name, entry)
    return entry
