"""Keyword spotting: data, DS-CNN, augmentation, compression and measurement of one recipe.

Features come from tinyml_core.frontend (the collector's own front end) and are
standardised with training-split statistics stored in the manifest, which the collector's
loader applies too. Augmentation (time shift, noise, SpecAugment-style masks) touches the
training split only; the model is selected on the validation split and the test split is
measured once, by the shipped .tflite.zlib through the collector's loader.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tinyml_core.frontend import FrontEnd, MfccParams, fit_length, resample, to_float
from tinyml_core.models import KEYWORD_TASK
from tinyml_core.recordings import RecordingError, read_wav

from . import DATA_DIR, SHARED_DATA_DIR
from .climate import DataError, cache_dir
from .compress import apply_pruning, kernel_sparsity, pruning_callbacks, ship, strip_pruning
from .evaluate import evaluate_clips
from .progress import EpochProgress
from .recipes import Recipe
from .tf import keras, seed_everything

log = logging.getLogger(__name__)

SPLIT_DIR = Path(__file__).resolve().parent / "kws_split"
SPLIT_FILES = {"train": "kws_train_split.txt", "validation": "kws_val_split.txt",
               "test": "kws_test_split.txt"}
DATASET_NAME = "mini_speech_commands"
DATASET_URL = "http://storage.googleapis.com/download.tensorflow.org/data/mini_speech_commands.zip"
LOCAL_ARCHIVES = (SHARED_DATA_DIR / "mini_speech_commands.tar.xz",)
SOURCE_RATE = 16000


def labels() -> list[str]:
    return (SPLIT_DIR / "labels.txt").read_text().split()


# ---------------------------------------------------------------- data


def find_dataset(speech_dir: Path | None) -> Path:
    """The <word>/*.wav folder: given, already extracted into data/, extracted from a local
    archive, or downloaded (its sha256 recorded on first download and checked after)."""
    if speech_dir is not None:
        if not speech_dir.is_dir():
            raise DataError(f"{speech_dir}: not a folder of <word>/*.wav")
        return speech_dir
    extracted = DATA_DIR / DATASET_NAME
    if extracted.is_dir():
        return extracted
    for archive in LOCAL_ARCHIVES:
        if archive.exists():
            log.info("extracting %s into data/", archive)
            with tarfile.open(archive) as bundle:
                bundle.extractall(DATA_DIR, filter="data")
            return extracted
    archive = cache_dir() / f"{DATASET_NAME}.zip"
    if not archive.exists():
        log.info("downloading %s", DATASET_URL)
        try:
            with urllib.request.urlopen(DATASET_URL, timeout=60) as response:
                data = response.read()
        except OSError as exc:
            raise DataError(f"cannot download {DATASET_URL} ({exc}); pass --speech-dir DIR "
                            "(a folder of <word>/*.wav)") from None
        archive.parent.mkdir(parents=True, exist_ok=True)
        archive.write_bytes(data)
        archive.with_name(archive.name + ".sha256").write_text(
            hashlib.sha256(data).hexdigest() + "\n")
    record = archive.with_name(archive.name + ".sha256")
    if record.exists() and hashlib.sha256(archive.read_bytes()).hexdigest() != \
            record.read_text().strip():
        raise DataError(f"{archive}: checksum differs from the recorded one; delete it")
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(DATA_DIR)
    shutil.rmtree(DATA_DIR / "__MACOSX", ignore_errors=True)
    return extracted


def split_paths(root: Path, part: str) -> list[Path]:
    names = (SPLIT_DIR / SPLIT_FILES[part]).read_text().split()
    return [root / name.removeprefix(f"./data/{DATASET_NAME}/") for name in names]


def read_clip(path: Path) -> tuple[int, np.ndarray]:
    try:
        return read_wav(path)
    except RecordingError as exc:
        raise DataError(f"dataset clip unusable: {exc}") from None


@dataclass
class SpeechData:
    """Raw clips of each split part (int16, their own rate) and their label indices."""

    root: Path
    labels: list[str]
    clips: dict[str, list[tuple[int, np.ndarray]]]
    targets: dict[str, np.ndarray]

    @classmethod
    def load(cls, speech_dir: Path | None = None, parts: tuple[str, ...] = tuple(SPLIT_FILES),
             show_progress: bool = True) -> SpeechData:
        root = find_dataset(speech_dir)
        names = labels()
        clips: dict[str, list[tuple[int, np.ndarray]]] = {}
        targets: dict[str, np.ndarray] = {}
        for part in parts:
            paths = split_paths(root, part)
            clips[part] = [read_clip(path) for path in
                           tqdm(paths, desc=f"read {part}", unit="clip", leave=False,
                                disable=not show_progress)]
            targets[part] = np.array([names.index(path.parent.name) for path in paths])
        return cls(root, names, clips, targets)

    def audio(self, part: str, params: MfccParams) -> np.ndarray:
        """[N, clip samples] float32 at the model's rate, padded/cropped as the front end does."""
        return np.stack([fit_length(resample(to_float(clip), rate, params.sample_rate),
                                    params.clip_samples) for rate, clip in self.clips[part]])

    def describe(self) -> dict[str, Any]:
        return {"dataset": "mini speech commands (Speech Commands, Pete Warden, Google, "
                           "CC BY 4.0)",
                "split": "fixed 6400/800/800 split, training/kws_split/",
                "clips": {part: len(items) for part, items in self.clips.items()}}


# ---------------------------------------------------------------- features


def features(front_end: FrontEnd, audio: np.ndarray) -> np.ndarray:
    return np.stack([front_end.mfcc(clip) for clip in audio])


def standardize(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((values - mean) / std).astype(np.float32)


def augment(audio: np.ndarray, settings: dict[str, Any], rng: np.random.Generator,
            sample_rate: int) -> np.ndarray:
    """Random time shift (zero fill) and white noise at a random level, per clip."""
    out = audio.copy()
    max_shift = int(float(settings.get("time_shift_s", 0.0)) * sample_rate)
    if max_shift:
        for index, shift in enumerate(rng.integers(-max_shift, max_shift + 1, len(out))):
            out[index] = np.roll(out[index], shift)
            if shift > 0:
                out[index, :shift] = 0
            elif shift < 0:
                out[index, shift:] = 0
    noise = float(settings.get("noise_max", 0.0))
    if noise:
        chance = float(settings.get("noise_probability", 0.8))
        levels = rng.uniform(0, noise, (len(out), 1)) * (rng.random((len(out), 1)) < chance)
        out += (rng.standard_normal(out.shape) * levels).astype(np.float32)
    return out


def spec_augment(batch: np.ndarray, settings: dict[str, Any],
                 rng: np.random.Generator) -> np.ndarray:
    """Zero (= the mean, after standardisation) random bands of frames and of coefficients."""
    out = batch.copy()
    frames, coefficients = out.shape[1:]
    for _ in range(int(settings.get("time_masks", 0))):
        widths = rng.integers(0, int(settings.get("time_mask_max", 1)) + 1, len(out))
        starts = rng.integers(0, frames, len(out))
        for index, (start, width) in enumerate(zip(starts, widths, strict=True)):
            out[index, start:start + width, :] = 0
    for _ in range(int(settings.get("coefficient_masks", 0))):
        widths = rng.integers(0, int(settings.get("coefficient_mask_max", 1)) + 1, len(out))
        starts = rng.integers(1, coefficients, len(out))
        for index, (start, width) in enumerate(zip(starts, widths, strict=True)):
            out[index, :, start:start + width] = 0
    return out


class AugmentedFeatures(keras.utils.Sequence):  # type: ignore[misc]
    """Training batches; every epoch draws fresh augmentation of the audio."""

    def __init__(self, audio: np.ndarray, targets: np.ndarray, front_end: FrontEnd,
                 mean: np.ndarray, std: np.ndarray, recipe: Recipe) -> None:
        super().__init__()
        self.audio, self.targets, self.front_end = audio, targets, front_end
        self.mean, self.std, self.recipe = mean, std, recipe
        self.batch_size = int(recipe.train.get("batch_size", 100))
        self.rng = np.random.default_rng(recipe.seed)
        self.on_epoch_end()

    def on_epoch_end(self) -> None:
        order = self.rng.permutation(len(self.audio))
        audio = augment(self.audio[order], self.recipe.augment, self.rng,
                        self.front_end.params.sample_rate)
        values = standardize(features(self.front_end, audio), self.mean, self.std)
        self.x = spec_augment(values, self.recipe.augment, self.rng)
        self.y = self.targets[order]

    def __len__(self) -> int:
        return -(-len(self.audio) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        window = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[window], self.y[window]


# ---------------------------------------------------------------- model


def build_model(recipe: Recipe, shape: tuple[int, int], classes: int) -> keras.Model:
    """DS-CNN (Zhang et al., "Hello Edge"; MLPerf Tiny's KWS model) with a width multiplier."""
    model_cfg = recipe.model
    filters = max(4, int(int(model_cfg.get("filters", 64)) * recipe.width))
    blocks = int(model_cfg.get("blocks", 4))
    dropout = float(model_cfg.get("dropout", 0.0))
    kernel = tuple(model_cfg.get("first_kernel", (10, 4)))
    stride = tuple(model_cfg.get("first_stride", (2, 2)))
    regularizer = keras.regularizers.l2(float(recipe.train.get("weight_decay", 0.0)) or 0.0)
    inputs = keras.Input(shape, name="mfcc")
    x = keras.layers.Reshape((*shape, 1))(inputs)
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                            kernel_regularizer=regularizer, name="conv_0")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    for block in range(1, blocks + 1):
        x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                         name=f"depthwise_{block}")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_regularizer=regularizer,
                                name=f"pointwise_{block}")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(classes, name="logits")(x)
    outputs = keras.layers.Softmax(name="probabilities")(x)
    return keras.Model(inputs, outputs, name=recipe.name)


def describe_recipe(recipe: Recipe) -> str:
    return (f"{recipe.model.get('architecture', 'ds_cnn')}, width {recipe.width:g}, pruning "
            f"{recipe.pruning.describe()}, {recipe.quantization.mode}")


@dataclass
class _Prepared:
    front_end: FrontEnd
    train_audio: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    x_val: np.ndarray


def _prepare(recipe: Recipe, data: SpeechData) -> _Prepared:
    assert recipe.front_end is not None
    front_end = FrontEnd(recipe.front_end)
    train_audio = data.audio("train", recipe.front_end)
    clean = features(front_end, train_audio)
    mean, std = clean.mean(axis=(0, 1)), clean.std(axis=(0, 1))
    x_val = standardize(features(front_end, data.audio("validation", recipe.front_end)), mean, std)
    return _Prepared(front_end, train_audio, mean, std, x_val)


def train(recipe: Recipe, data: SpeechData, prepared: _Prepared, show_progress: bool = True
          ) -> tuple[keras.Model, dict[str, Any]]:
    seed_everything(recipe.seed)
    assert recipe.front_end is not None
    sequence = AugmentedFeatures(prepared.train_audio, data.targets["train"], prepared.front_end,
                                 prepared.mean, prepared.std, recipe)
    epochs = int(recipe.train.get("epochs", 30))
    model = build_model(recipe, recipe.front_end.feature_shape, len(data.labels))
    model = apply_pruning(model, recipe.pruning, len(sequence))
    rate = float(recipe.train.get("learning_rate", 0.01))
    schedule = keras.optimizers.schedules.CosineDecay(rate, epochs * len(sequence), alpha=0.01)
    smoothing = float(recipe.train.get("label_smoothing", 0.0))
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=smoothing),
                  metrics=["accuracy"])
    one_hot_val = keras.utils.to_categorical(data.targets["validation"], len(data.labels))
    best = _BestOnValidation(int(recipe.train.get("select_after_epoch", 0)))
    started = time.perf_counter()
    model.fit(_OneHot(sequence, len(data.labels)), epochs=epochs, verbose=0,
              validation_data=(prepared.x_val, one_hot_val),
              callbacks=[*pruning_callbacks(recipe.pruning), best,
                         EpochProgress(recipe.name, epochs, show_progress)])
    seconds = time.perf_counter() - started
    if best.weights is not None:
        model.set_weights(best.weights)
    model = strip_pruning(model)
    return model, {"training_seconds": round(seconds, 1), "epochs": epochs,
                   "selected_epoch": best.epoch, "val_accuracy": round(best.accuracy, 4),
                   "kernel_sparsity": round(kernel_sparsity(model), 3)}


class _OneHot(keras.utils.Sequence):  # type: ignore[misc]
    def __init__(self, inner: AugmentedFeatures, classes: int) -> None:
        super().__init__()
        self.inner, self.classes = inner, classes

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.inner[index]
        return x, keras.utils.to_categorical(y, self.classes)

    def on_epoch_end(self) -> None:
        self.inner.on_epoch_end()


class _BestOnValidation(keras.callbacks.Callback):  # type: ignore[misc]
    """Keep the weights of the best validation epoch once pruning has reached its target."""

    def __init__(self, after_epoch: int) -> None:
        super().__init__()
        self.after_epoch = after_epoch
        self.accuracy, self.epoch, self.weights = -1.0, -1, None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        accuracy = float((logs or {}).get("val_accuracy", 0.0))
        if epoch + 1 >= self.after_epoch and accuracy >= self.accuracy:
            self.accuracy, self.epoch = accuracy, epoch + 1
            self.weights = self.model.get_weights()


# ---------------------------------------------------------------- build and measure


def manifest_entry(recipe: Recipe, data: SpeechData, mean: np.ndarray,
                   std: np.ndarray) -> dict[str, Any]:
    assert recipe.front_end is not None
    shape = list(recipe.front_end.feature_shape)
    return {
        "task": KEYWORD_TASK,
        "input": {"front_end": recipe.front_end.to_dict(), "shape": [1, *shape],
                  "dtype": "float32", "audio": "mono, any sample rate (resampled), "
                  "zero-padded or cropped to clip_seconds",
                  "normalization": {"mean": [round(float(v), 5) for v in mean],
                                    "std": [round(float(v), 5) for v in std],
                                    "applied": "by the loader: (mfcc - mean) / std"}},
        "output": {"labels": data.labels, "shape": [1, len(data.labels)], "dtype": "float32",
                   "meaning": "probability of each label (softmax)"},
    }


def build(recipe: Recipe, data: SpeechData, out_dir: Path, show_progress: bool = True
          ) -> dict[str, Any]:
    prepared = _prepare(recipe, data)
    model, training = train(recipe, data, prepared, show_progress)
    calibration = standardize(features(prepared.front_end, prepared.train_audio[:2000]),
                              prepared.mean, prepared.std)
    entry = ship(recipe, model, calibration, out_dir,
                 manifest_entry(recipe, data, prepared.mean, prepared.std))
    metrics = evaluate_clips(out_dir, recipe.name, data.clips["test"], data.targets["test"],
                             show_progress)
    metrics["split"] = "test"
    return entry | {"metrics": metrics, "training": training, "seed": recipe.seed,
                    "recipe": recipe.raw, "data": data.describe()}


def baseline_summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {"recipe": entry["recipe"], "accuracy": entry["metrics"]["accuracy"],
            "size_bytes": entry["size_bytes"],
            "training_seconds": entry["training"]["training_seconds"]}


def summary_line(name: str, entry: dict[str, Any]) -> str:
    return (f"{name}: accuracy {entry['metrics']['accuracy']:.2%} on "
            f"{entry['metrics']['clips']} test clips, {entry['size_bytes']} bytes "
            f"({entry['training']['kernel_sparsity']:.0%} zero weights)")



