"""Models as the collector and the evaluators see them: models/manifest.json plus .tflite.zlib.

The manifest is the contract between training and inference. Loading a model checks it
end to end (the file's sha256 and size, zlib, that the interpreter accepts it, that its
input and output shapes are the manifest's) and hides which TFLite runtime is installed:
LiteRT (``ai-edge-litert``) first, then ``tflite_runtime``. Every failure is a
:class:`~tinyml_core.errors.ModelLoadError` that names the model and the reason.

Forecasters take windows in physical units (the normalisation is inside the model) and
return °C and %RH; keyword spotters take a clip at any rate and run the shared front end.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

from .errors import ModelLoadError, TinyMLError
from .frontend import FrontEnd, MfccParams, fit_length, resample, to_float

if TYPE_CHECKING:
    from .embedding import EmbeddingParams, SpeechEmbedding

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
MODEL_SUFFIX = ".tflite.zlib"
FORECAST_TASK = "forecast"
KEYWORD_TASK = "keyword"
DEFAULT_KEYWORD_THRESHOLD = 0.7  # for a keyword model whose manifest entry chose none
DEFAULT_KEYWORD_SMOOTHING = 3  # windows averaged, likewise
# A tiny model's manifest never needs more; a larger file is not ours.
MAX_MANIFEST_BYTES = 1_000_000
MAX_MODEL_BYTES = 10_000_000

ContractT = TypeVar("ContractT")


def interpreter_class() -> Any:
    """The TFLite Interpreter class of whichever runtime is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ModelLoadError(
                "no TFLite runtime: install the collector extra (pip install "
                "'tinyml-mqtt[collector]', which brings ai-edge-litert) or tflite-runtime"
            ) from None
    return Interpreter


def runtime_name() -> str:
    return str(interpreter_class().__module__.split(".")[0])


# ---------------------------------------------------------------- manifest


def read_manifest(models_dir: Path | str) -> dict[str, dict[str, Any]]:
    """All manifest entries by model name; a missing or malformed manifest raises."""
    path = Path(models_dir) / MANIFEST_NAME
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ModelLoadError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no model manifest (build models with "
                             "`python -m training.build all`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise ModelLoadError(f"{path}: not a format-{MANIFEST_FORMAT} model manifest")
    models = document.get("models")
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise ModelLoadError(f"{path}: 'models' must map names to entries")
    return models


def write_manifest_entry(models_dir: Path | str, name: str, entry: dict[str, Any]) -> None:
    """Add or replace one entry, keeping the others; the file is replaced atomically."""
    directory = Path(models_dir)
    try:
        models = read_manifest(directory)
    except ModelLoadError:
        if (directory / MANIFEST_NAME).exists():
            raise
        models = {}
    models[name] = entry
    document = {"format": MANIFEST_FORMAT, "models": dict(sorted(models.items()))}
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".manifest-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(temporary, 0o644)  # mkstemp makes it private; the manifest is for everyone
    os.replace(temporary, directory / MANIFEST_NAME)


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- contracts


TIME_FEATURES = ("time_of_day",)  # what a forecaster may ask for besides the readings


def time_of_day(end_times: np.ndarray) -> np.ndarray:
    """[N] times of each window's last reading → [N, 1, 2]: sin and cos of its UTC time of day
    (the daily cycle of temperature and humidity), one more row after the readings."""
    angle = (np.asarray(end_times, np.float64) % 86_400.0) / 86_400.0 * 2 * np.pi
    return np.stack([np.sin(angle), np.cos(angle)], axis=-1)[:, None, :].astype(np.float32)


@dataclass(frozen=True)
class ForecastContract:
    """Input: ``window`` readings ``step_s`` apart, features in ``features`` order, physical
    units; with ``time_features`` = ("time_of_day",) one more row: sin and cos of the last
    reading's time of day, added by :meth:`Forecaster.predict`. Output: ``steps`` future
    readings, same features and units."""

    window: int
    step_s: float
    features: tuple[str, ...]
    steps: int
    time_features: tuple[str, ...] = ()

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> ForecastContract:
        time_features = tuple(entry["input"].get("time_features", ()))
        unknown = [name for name in time_features if name not in TIME_FEATURES]
        if unknown:
            raise KeyError(f"time_features {unknown}")
        return cls(window=int(entry["input"]["window"]), step_s=float(entry["input"]["step_s"]),
                   features=tuple(entry["input"]["features"]),
                   steps=int(entry["output"]["steps"]), time_features=time_features)

    @property
    def input_rows(self) -> int:
        return self.window + len(self.time_features)


@dataclass(frozen=True)
class KeywordContract:
    """Input: the front end's frames (MFCCs, or the pretrained speech embedding's vectors),
    standardised per coefficient with ``mean``/``std`` (training-split statistics). Output:
    the probability of each label; an open-set model also names the labels that mean "no
    keyword" (``unknown`` speech, ``silence``)."""

    front_end: MfccParams | EmbeddingParams
    mean: np.ndarray
    std: np.ndarray
    labels: tuple[str, ...]
    not_keywords: tuple[str, ...] = ()
    # Smoothed probability a word needs unless the collector sets one: chosen on a validation
    # stream (benchmarks/kws_stream.py --choose-threshold); 0.7 for a manifest without one.
    default_threshold: float = DEFAULT_KEYWORD_THRESHOLD
    # Windows averaged before the threshold, chosen with it (benchmarks/kws_strangers.py).
    default_smoothing: int = DEFAULT_KEYWORD_SMOOTHING
    # The threshold for one utterance sent on its own (an audio message's capture "clip"):
    # tried once, not ten windows a second, so it may be lower; the stream's when none chosen.
    clip_threshold: float = DEFAULT_KEYWORD_THRESHOLD

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(label for label in self.labels if label not in self.not_keywords)

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> KeywordContract:
        front_end = front_end_params(entry["input"]["front_end"])
        normalization = entry["input"]["normalization"]
        mean = np.array(normalization["mean"], dtype=np.float32)
        std = np.array(normalization["std"], dtype=np.float32)
        if mean.shape != std.shape != (front_end.num_coefficients,) or not (std > 0).all():
            raise ValueError("normalization needs one mean and one positive std per coefficient")
        labels = tuple(entry["output"]["labels"])
        not_keywords = tuple(entry["output"].get("not_keywords", ()))
        if not set(not_keywords) <= set(labels):
            raise ValueError("not_keywords must be labels of the model")
        chosen = entry.get("default_threshold", {})
        if not isinstance(chosen, dict):
            raise ValueError("default_threshold must be a table with a value")
        threshold = chosen.get("value", DEFAULT_KEYWORD_THRESHOLD)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
                or not 0 < threshold <= 1:
            raise ValueError(f"default_threshold {threshold!r} is not a probability in (0, 1]")
        clip = entry.get("default_clip_threshold", {"value": threshold})
        clip_threshold = clip.get("value", threshold) if isinstance(clip, dict) else None
        if isinstance(clip_threshold, bool) or not isinstance(clip_threshold, int | float) \
                or not 0 < clip_threshold <= 1:
            raise ValueError(f"default_clip_threshold {clip_threshold!r} is not a probability "
                             "in (0, 1]")
        smoothing = entry.get("default_smoothing", {})
        windows = smoothing.get("value", DEFAULT_KEYWORD_SMOOTHING) \
            if isinstance(smoothing, dict) else None
        if isinstance(windows, bool) or not isinstance(windows, int) or not 1 <= windows <= 20:
            raise ValueError(f"default_smoothing {windows!r} is not 1-20 windows")
        return cls(front_end=front_end, mean=mean, std=std, labels=labels,
                   not_keywords=not_keywords, default_threshold=float(threshold),
                   default_smoothing=windows, clip_threshold=float(clip_threshold))


# ---------------------------------------------------------------- interpreter


# Printed by the runtime (to the process's stderr, past Python's logging) the first time it
# gives an interpreter its XNNPACK delegate: a notice, not news, in every command's output.
RUNTIME_NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


@contextlib.contextmanager
def _runtime_notice_hidden() -> Iterator[None]:
    """Hold what is written to file descriptor 2 meanwhile and pass it on without
    ``RUNTIME_NOTICE`` (everything else, e.g. a runtime error, another thread's log line,
    still arrives)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr to speak of (closed, or not a file)
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            passed = [line for line in held.read().splitlines(keepends=True)
                      if line.strip() != RUNTIME_NOTICE]
            if passed:
                os.write(2, b"".join(passed))


@dataclass(frozen=True)
class Prototypes:
    """Words as a household said them: the embeddings of their enrolled takes, each with its
    label. A window whose embedding is close to one of a word's takes (cosine similarity,
    both centred on ``center``, the model's mean embedding) gets that word's logit raised by
    up to ``lift``: nothing at ``floor`` or below, ``lift`` at 1. Every keyword's logit is
    lowered by ``keyword_penalty`` first, so that a word nobody enrolled needs more of the
    model's own confidence than before, and one said as the household says it less. With
    ``rivals`` (what is no keyword: noise, other words, the household's other speech), a
    window lifts a word only by as much as it is closer to the word's take than to every
    rival: a take that also sounds a little like the room lifts the word, not the room.
    ``exclusive``: each word's takes also rival every other word's."""

    center: np.ndarray  # [D]
    vectors: np.ndarray  # [P, D], centred and of unit length
    labels: np.ndarray  # [P] label indices
    keywords: np.ndarray  # [K] label indices the penalty applies to
    lift: float
    floor: float
    keyword_penalty: float
    rivals: np.ndarray | None = None  # [R, D], centred and of unit length
    exclusive: bool = False

    @classmethod
    def of(cls, embeddings: np.ndarray, labels: np.ndarray, keywords: Sequence[int],
           center: np.ndarray, lift: float, floor: float, keyword_penalty: float,
           not_words: np.ndarray | None = None, exclusive: bool = False) -> Prototypes:
        """From takes' embeddings [P, D] and their labels (only keyword labels are kept),
        with ``not_words`` [M, D], embeddings of noise and other speech, as the rivals."""
        if not 0 <= floor < 1:
            raise ValueError(f"a prototype floor is a similarity in [0, 1), not {floor}")
        keep = np.flatnonzero(np.isin(labels, keywords))
        keep = keep[np.argsort(labels[keep], kind="stable")]  # each word's takes together
        rivals = _unit(not_words, center) if not_words is not None and len(not_words) else None
        return cls(np.asarray(center, np.float32), _unit(embeddings[keep], center),
                   np.asarray(labels[keep], np.int64), np.asarray(keywords, np.int64),
                   float(lift), float(floor), float(keyword_penalty), rivals, exclusive)

    def offsets(self, embeddings: np.ndarray, labels: int) -> np.ndarray:
        """What to add to the logits [N, labels] of these embeddings [N, D]."""
        out = np.zeros((len(embeddings), labels), np.float32)
        out[:, self.keywords] -= self.keyword_penalty
        if not len(self.vectors):
            return out
        unit = _unit(embeddings, self.center)
        similarity = unit @ self.vectors.T  # [N, P]
        # The vectors are sorted by label: the closest take of each word in one pass.
        starts = np.flatnonzero(np.r_[True, self.labels[1:] != self.labels[:-1]])
        closest = np.maximum.reduceat(similarity, starts, axis=1)  # [N, words enrolled]
        bar: np.ndarray | float = self.floor
        if self.rivals is not None and len(self.rivals):
            bar = np.maximum(self.floor, (unit @ self.rivals.T).max(axis=1, keepdims=True))
        if self.exclusive and closest.shape[1] > 1:
            # Each word's takes also rival every other word's.
            ordered = np.sort(closest, axis=1)
            first, second = ordered[:, -1:], ordered[:, -2:-1]
            bar = np.maximum(bar, np.where(closest >= first, second, first))
        out[:, self.labels[starts]] += \
            self.lift * np.maximum(0.0, closest - bar) / (1 - self.floor)
        return out


@dataclass(frozen=True)
class OwnWords:
    """Words of a node's own (``node enroll --word``), which the model was never taught: the
    household's takes of them as templates of the model's input (the pretrained speech
    embedding's frames, [frames, coefficients] each). A window's likeness to a word is its
    best cosine similarity to one of the word's takes, over all frame offsets within
    ``max_shift`` (a word said a little earlier or later in the window). The probability is
    made so that likeness ``floor`` gives ``threshold`` (the model's default, where the
    collector accepts a word), ``slope`` logits more for each 1.0 of likeness beyond it.
    Why the input and not the last layer's: the last layer was trained to answer every word
    that is no keyword alike (``unknown``), so it hardly tells one such word from another;
    the pretrained embedding does (benchmarks/kws_new_word.py)."""

    words: tuple[str, ...]
    templates: np.ndarray  # [T, frames, coefficients] float32
    labels: np.ndarray  # [T] index into ``words``
    floor: float
    threshold: float
    slope: float = 40.0
    max_shift: int = 3

    def __post_init__(self) -> None:
        if self.templates.ndim != 3 or self.labels.shape != (len(self.templates),) \
                or not set(np.unique(self.labels)) <= set(range(len(self.words))):
            raise ValueError(f"own words: {self.templates.shape} templates with labels "
                             f"{self.labels.shape} for {len(self.words)} words")
        if not 0 < self.floor < 1 or not 0 < self.threshold < 1:
            raise ValueError(f"own words: floor {self.floor} and threshold {self.threshold} "
                             "must be in (0, 1)")

    def likeness(self, features: np.ndarray) -> np.ndarray:
        """[N, words]: each window's best likeness to each word's takes."""
        windows = np.asarray(features, np.float32)
        frames = windows.shape[1]
        if windows.shape[1:] != self.templates.shape[1:]:
            raise ValueError(f"own words: windows of {windows.shape[1:]} against templates "
                             f"of {self.templates.shape[1:]}")
        best = np.full((len(windows), len(self.templates)), -1.0, np.float32)
        for shift in range(-min(self.max_shift, frames - 1), min(self.max_shift, frames - 1) + 1):
            a = windows[:, max(0, shift):frames + min(0, shift)]  # the window, moved
            b = self.templates[:, max(0, -shift):frames + min(0, -shift)]
            dot = np.einsum("nfc,tfc->nt", a, b)
            norms = np.sqrt(np.einsum("nfc,nfc->n", a, a))[:, None] \
                * np.sqrt(np.einsum("tfc,tfc->t", b, b))[None, :]
            np.maximum(best, dot / (norms + 1e-9), out=best)
        out = np.full((len(windows), len(self.words)), -1.0, np.float32)
        for index in range(len(self.words)):
            mine = self.labels == index
            if mine.any():
                out[:, index] = best[:, mine].max(axis=1)
        return out

    def logits(self, model_logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        """[N, words] to put beside the model's logits [N, labels]: each word's softmax
        probability then comes out as its likeness says, the model's labels sharing the rest."""
        likeness = self.likeness(features)
        odds = self.slope * (likeness - self.floor) + np.log(self.threshold
                                                             / (1 - self.threshold))
        top = model_logits.max(axis=1, keepdims=True)
        rest = top + np.log(np.exp(model_logits - top).sum(axis=1, keepdims=True))
        # Each own word against the model's labels alone (several own words rarely meet).
        out: np.ndarray = (rest + odds).astype(np.float32)
        return out


def _unit(embeddings: np.ndarray, center: np.ndarray) -> np.ndarray:
    centred = np.asarray(embeddings, np.float32) - center
    unit: np.ndarray = centred / (np.linalg.norm(centred, axis=1, keepdims=True) + 1e-9)
    return unit.astype(np.float32)


@dataclass(frozen=True)
class ClassifierHead:
    """A classifier's last layer in float: embeddings [N, D] → probabilities [N, labels].
    The logits are clipped to what the quantized model's own logits can hold, so the
    shipped head, read out of the model, gives the model's own probabilities (an int8
    model's largest logit is often only 2-3). An enrolled node's head adds, after the clip,
    what its household's takes say and what the model's own anchors say (``prototypes``)."""

    weights: np.ndarray  # [labels, D]
    bias: np.ndarray  # [labels]
    logit_range: tuple[float, float] = (-np.inf, np.inf)
    prototypes: tuple[Prototypes, ...] = ()
    own_words: OwnWords | None = None  # a node's own words: labels after the model's

    @property
    def words(self) -> tuple[str, ...]:
        return self.own_words.words if self.own_words is not None else ()

    def logits(self, embeddings: np.ndarray, features: np.ndarray | None = None
               ) -> np.ndarray:
        """[N, labels] from the embeddings [N, D]; with own words, a column more for each,
        from the model's input ``features`` [N, frames, coefficients]."""
        raw = np.asarray(embeddings, np.float32) @ self.weights.T + self.bias
        clipped: np.ndarray = np.clip(raw, *self.logit_range)
        for prototypes in self.prototypes:
            clipped += prototypes.offsets(embeddings, len(self.bias))
        if self.own_words is None:
            return clipped
        if features is None:
            raise ValueError("a head with words of its own needs the model's input features")
        return np.concatenate([clipped, self.own_words.logits(clipped, features)], axis=1)

    def probabilities(self, embeddings: np.ndarray, features: np.ndarray | None = None
                      ) -> np.ndarray:
        logits = self.logits(embeddings, features)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        out: np.ndarray = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        return out


def _dequantized(tensor: dict[str, Any], values: np.ndarray) -> np.ndarray:
    """A tensor's values in float (per-tensor or per-channel on the first axis)."""
    if values.dtype == np.float32:
        return values.astype(np.float32)
    quantization = tensor["quantization_parameters"]
    scales = np.asarray(quantization["scales"], np.float32)
    zero_points = np.asarray(quantization["zero_points"], np.float32)
    if scales.size > 1:  # per channel, along the first axis (weights, bias)
        shape = (-1,) + (1,) * (values.ndim - 1)
        scales, zero_points = scales.reshape(shape), zero_points.reshape(shape)
    return ((values.astype(np.float32) - zero_points) * scales).astype(np.float32)


class TfliteModel:
    """One interpreter; ``predict`` takes a float32 batch and returns the float32 output.

    With ``embedding=True`` it also reads out the classifier's last layer (``head``) and
    ``embed`` gives the layer's input (the model's embedding of a window): the interpreter
    then keeps every intermediate tensor, which costs memory, so only models that need it
    (an enrolled node's keyword model) are made so."""

    def __init__(self, model_bytes: bytes, name: str = "model", num_threads: int = 1,
                 embedding: bool = False, input_shape: Sequence[int] | None = None) -> None:
        self.name = name
        # Inputs of any shape (the speech embedding's mel model takes any number of samples;
        # it is allocated for ``input_shape`` first, as its stored [1, 1] cannot be).
        self.flexible = input_shape is not None
        options = {"experimental_preserve_all_tensors": True} if embedding else {}
        try:
            with _runtime_notice_hidden(), warnings.catch_warnings():
                # LiteRT warns that keeping every tensor is for debugging; here it is the point.
                warnings.simplefilter("ignore", UserWarning)
                self._interpreter = interpreter_class()(model_content=model_bytes,
                                                        num_threads=num_threads, **options)
                if input_shape is not None:
                    self._interpreter.resize_tensor_input(
                        self._interpreter.get_input_details()[0]["index"], list(input_shape))
                self._interpreter.allocate_tensors()
        except TinyMLError:
            raise
        except Exception as exc:  # the runtimes raise ValueError/RuntimeError with details
            raise ModelLoadError(f"{name}: the TFLite runtime refused it ({exc})") from None
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"])
        self.output_shape = tuple(int(d) for d in self._output["shape"])
        self._batch = self.input_shape[0]
        self.last_invoke_ms = 0.0
        self.head: ClassifierHead | None = None
        self._embedding: dict[str, Any] | None = None
        if embedding:
            self._embedding, self.head = self._find_head()

    def _find_head(self) -> tuple[dict[str, Any], ClassifierHead]:
        """The fully connected layer behind the output (through softmax and dequantize): the
        op with an activation [1, D], weights [labels, D] and a bias [labels]."""
        interpreter = self._interpreter
        tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
        producers = {out: op for op in interpreter._get_ops_details() for out in op["outputs"]}
        labels = self.output_shape[-1]
        index = self._output["index"]
        for _ in range(4):  # dequantize, softmax, quantize: one input each
            op = producers.get(index)
            if op is None:
                break
            inputs = [i for i in op["inputs"] if i >= 0]
            shapes = {i: tuple(int(d) for d in tensors[i]["shape"]) for i in inputs}
            if len(inputs) == 1:
                index = inputs[0]
                continue
            weights = [i for i in inputs if len(shapes[i]) == 2 and shapes[i][0] == labels]
            bias = [i for i in inputs if shapes[i] == (labels,)]
            activation = [i for i in inputs if i not in weights + bias]
            if len(weights) == 1 and len(bias) <= 1 and len(activation) == 1:
                w = _dequantized(tensors[weights[0]], interpreter.get_tensor(weights[0]))
                b = (_dequantized(tensors[bias[0]], interpreter.get_tensor(bias[0]))
                     if bias else np.zeros(labels, np.float32))
                logits = tensors[index]
                low, high = -np.inf, np.inf
                if logits["dtype"] in (np.int8, np.uint8):
                    scale, zero = logits["quantization"]
                    info = np.iinfo(logits["dtype"])
                    low, high = (info.min - zero) * scale, (info.max - zero) * scale
                return tensors[activation[0]], ClassifierHead(w, b, (float(low), float(high)))
            break
        raise ModelLoadError(f"{self.name}: no fully connected last layer found (an "
                             "embedding is read from the input of the classifier's last layer)")

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """The embedding [N, D] of each input (the input of the last layer)."""
        if self._embedding is None:
            raise ModelLoadError(f"{self.name}: made without embedding=True")
        self.predict(batch)
        values = self._interpreter.get_tensor(self._embedding["index"])
        return _dequantized(self._embedding, values).reshape(len(batch), -1)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.shape[1:] != self.input_shape[1:] and not self.flexible:
            raise ModelLoadError(f"{self.name}: input of shape {batch.shape[1:]}, the model "
                                 f"takes {self.input_shape[1:]}")
        if len(batch) != self._batch or (self.flexible and batch.shape != self.input_shape):
            self.input_shape = tuple(int(d) for d in batch.shape)
            self._interpreter.resize_tensor_input(self._input["index"], batch.shape)
            self._interpreter.allocate_tensors()
            self._input = self._interpreter.get_input_details()[0]
            self._output = self._interpreter.get_output_details()[0]
            self._batch = len(batch)
        started = time.perf_counter()
        self._interpreter.set_tensor(self._input["index"], batch)
        self._interpreter.invoke()
        output = self._interpreter.get_tensor(self._output["index"])
        self.last_invoke_ms = (time.perf_counter() - started) * 1000
        return np.array(output, dtype=np.float32)


def load_model_bytes(models_dir: Path | str, name: str,
                     entry: dict[str, Any] | None = None) -> bytes:
    """The decompressed .tflite of ``name`` after checking its size and sha256."""
    directory = Path(models_dir)
    entry = entry if entry is not None else _entry(directory, name)
    path, compressed = checked_file(directory, name, "model", entry.get("file"), MODEL_SUFFIX,
                                     MAX_MODEL_BYTES, entry.get("sha256"))
    try:
        return zlib.decompress(compressed)
    except zlib.error as exc:
        raise ModelLoadError(f"{name}: {path} is not zlib data ({exc})") from None


def checked_file(directory: Path, name: str, what: str, file_name: object, suffix: str,
                  max_bytes: int, sha256: object) -> tuple[Path, bytes]:
    """The bytes of a file a manifest entry names (a plain name in ``directory`` ending in
    ``suffix``), refused unless its size and sha256 are what the manifest says."""
    if not isinstance(file_name, str) or "/" in file_name or not file_name.endswith(suffix):
        raise ModelLoadError(f"{name}: manifest names no valid {what} file ({file_name!r})")
    path = directory / file_name
    try:
        if path.stat().st_size > max_bytes:
            raise ModelLoadError(f"{name}: {path} is larger than {max_bytes} bytes")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"{name}: {what} file {path} is missing") from None
    except OSError as exc:
        raise ModelLoadError(f"{name}: {path} cannot be read ({exc.strerror})") from None
    digest = file_sha256(data)
    if digest != sha256:
        raise ModelLoadError(f"{name}: {path} has sha256 {digest[:12]}…, the manifest says "
                             f"{str(sha256)[:12]}…; refusing a changed {what}")
    return path, data


def _entry(directory: Path, name: str) -> dict[str, Any]:
    models = read_manifest(directory)
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise ModelLoadError(f"{name}: not in {directory / MANIFEST_NAME} (it has {known})")
    return models[name]


def _check_shape(name: str, what: str, actual: Sequence[int], expected: Sequence[int]) -> None:
    if tuple(actual[1:]) != tuple(expected):
        raise ModelLoadError(f"{name}: the model's {what} shape is {tuple(actual[1:])}, the "
                             f"manifest's contract says {tuple(expected)}")


def _contract(name: str, entry: dict[str, Any], task: str, role: str,
              parse: Callable[[dict[str, Any]], ContractT]) -> ContractT:
    if entry.get("task") != task:
        raise ModelLoadError(f"{name}: a {entry.get('task')!r} model, not a {role}")
    try:
        return parse(entry)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{name}: manifest input/output contract is incomplete "
                             f"({exc})") from None


class Forecaster:
    """A forecasting model: windows of readings in, future readings out (physical units)."""

    def __init__(self, name: str, entry: dict[str, Any], model: TfliteModel) -> None:
        self.contract = _contract(name, entry, FORECAST_TASK, "forecaster",
                                  ForecastContract.from_entry)
        contract = self.contract
        features = len(contract.features)
        _check_shape(name, "input", model.input_shape, (contract.input_rows, features))
        _check_shape(name, "output", model.output_shape, (contract.steps, features))
        self.name, self.entry, self.model = name, entry, model

    def predict(self, windows: np.ndarray, end_times: np.ndarray | None = None) -> np.ndarray:
        """[N, window, features] (and the [N] times of each window's last reading, for a model
        that uses the time of day) → [N, steps, features]; relative humidity kept within
        0-100 % (a model extrapolating a rising trend near saturation would say 100.2 %)."""
        contract = self.contract
        if contract.time_features:
            if end_times is None:
                raise ValueError(f"{self.name} needs the time of each window's last reading")
            windows = np.concatenate([np.asarray(windows, np.float32), time_of_day(end_times)],
                                     axis=1)
        predicted: np.ndarray = self.model.predict(windows)
        if "humidity" in self.contract.features:
            index = self.contract.features.index("humidity")
            np.clip(predicted[..., index], 0.0, 100.0, out=predicted[..., index])
        return predicted


class Scan(NamedTuple):
    """A clip scanned with one-second windows (:meth:`KeywordSpotter.scan`)."""

    offsets: np.ndarray  # window starts in s
    probabilities: np.ndarray  # [windows, labels]
    inference_ms: float  # the interpreter's time over all windows


class KeywordSpotter:
    """A keyword model with its front end: a clip at any rate in, label probabilities out.

    The front end is of either kind: MFCCs computed here, or the pretrained speech
    embedding (``front_end``, made by :func:`load_keyword_spotter` from its files)."""

    def __init__(self, name: str, entry: dict[str, Any], model: TfliteModel,
                 head: ClassifierHead | None = None,
                 front_end: FrontEnd | SpeechEmbedding | None = None) -> None:
        self.contract = _contract(name, entry, KEYWORD_TASK, "keyword spotter",
                                  KeywordContract.from_entry)
        params = self.contract.front_end
        if front_end is None:
            if not isinstance(params, MfccParams):
                raise ModelLoadError(f"{name}: its front end ({params.kind}) is loaded from "
                                     "its files: use load_keyword_spotter")
            front_end = FrontEnd(params)
        self.front_end: FrontEnd | SpeechEmbedding = front_end
        _check_shape(name, "input", model.input_shape, self.contract.front_end.feature_shape)
        _check_shape(name, "output", model.output_shape, (len(self.contract.labels),))
        if head is not None and (model.head is None
                                 or head.weights.shape != model.head.weights.shape):
            raise ModelLoadError(f"{name}: a head of shape {head.weights.shape} does not fit "
                                 "this model (it needs the model made with embedding=True)")
        if head is not None and head.own_words is not None \
                and head.own_words.templates.shape[1:] != self.contract.front_end.feature_shape:
            raise ModelLoadError(f"{name}: words of its own with templates of "
                                 f"{head.own_words.templates.shape[1:]} do not fit this model's "
                                 f"input {self.contract.front_end.feature_shape}")
        self.name, self.entry, self.model = name, entry, model
        # A node's own words (enrolled) answer as keywords, after the model's labels.
        self.own_words: tuple[str, ...] = head.words if head is not None else ()
        self.labels: tuple[str, ...] = (*self.contract.labels, *self.own_words)
        self.keywords: tuple[str, ...] = (*self.contract.keywords, *self.own_words)
        self.head = head  # a node's own last layer in place of the model's (enrollment)

    def with_head(self, head: ClassifierHead | None) -> KeywordSpotter:
        """The same model and front end answering with ``head`` (None: the model's own)."""
        return KeywordSpotter(self.name, self.entry, self.model, head, self.front_end)

    def features(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """The model's input for one clip: its standardised frames."""
        frames = self.front_end(samples, sample_rate)
        standardized: np.ndarray = (frames - self.contract.mean) / self.contract.std
        return standardized

    def classify_features(self, features: np.ndarray) -> np.ndarray:
        """[N, frames, coefficients] → [N, labels] probabilities."""
        if self.head is None:
            return self.model.predict(features)
        return self.head.probabilities(self.model.embed(features), features)

    def embed_features(self, features: np.ndarray) -> np.ndarray:
        """[N, frames, coefficients] → [N, D]: what the last layer sees (needs a model made
        with embedding=True)."""
        return self.model.embed(features)

    def scan(self, samples: np.ndarray, sample_rate: int, hop_s: float = 0.1) -> Scan:
        """Window start offsets, [windows, labels] probabilities and inference time for a clip
        of any length: one-second windows every ``hop_s`` (rounded to whole frames), the last one
        ending at the clip's end; a clip shorter than a window is zero-padded to one.

        The clip is resampled once and its MFCCs computed once: a window's frames are exactly
        those the front end gives for that second of the resampled clip (a second resampled
        on its own differs at its edges, where the filter would see past the cut)."""
        offsets, windows = self.windows(samples, sample_rate, hop_s)
        rows, inference_ms = [], 0.0
        for window in windows:
            rows.append(self.classify_features(window[None])[0])
            inference_ms += self.model.last_invoke_ms
        return Scan(offsets, np.stack(rows), inference_ms)

    def windows(self, samples: np.ndarray, sample_rate: int, hop_s: float = 0.1
                ) -> tuple[np.ndarray, np.ndarray]:
        """The one-second windows :meth:`scan` classifies: their start offsets in s and their
        features [windows, frames, coefficients]."""
        params = self.contract.front_end
        audio = resample(to_float(samples), sample_rate, params.sample_rate)
        if len(audio) < params.clip_samples:
            audio = fit_length(audio, params.clip_samples, params.centered)
        frames = (self.front_end.frames(audio) - self.contract.mean) / self.contract.std
        hop = max(1, round(hop_s * params.sample_rate / params.frame_step))
        last = len(frames) - params.num_frames
        starts = list(range(0, last + 1, hop))
        if starts[-1] != last:
            starts.append(last)
        offsets = np.array(starts, dtype=np.float64) * params.frame_step / params.sample_rate
        return offsets, np.stack([frames[start:start + params.num_frames] for start in starts])

    def classify(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Probabilities of every label for one clip (int16 or float audio)."""
        probabilities: np.ndarray = self.classify_features(
            self.features(samples, sample_rate)[None])[0]
        return probabilities


def load_forecaster(models_dir: Path | str, name: str, num_threads: int = 1) -> Forecaster:
    entry = _entry(Path(models_dir), name)
    model = TfliteModel(load_model_bytes(models_dir, name, entry), name, num_threads)
    return Forecaster(name, entry, model)


def load_keyword_spotter(models_dir: Path | str, name: str, num_threads: int = 1,
                         embedding: bool = False) -> KeywordSpotter:
    """A keyword model with its front end; ``embedding=True`` also makes it able to answer
    with another last layer (:meth:`KeywordSpotter.with_head`)."""
    entry = _entry(Path(models_dir), name)
    model = TfliteModel(load_model_bytes(models_dir, name, entry), name, num_threads,
                        embedding)
    params = _contract(name, entry, KEYWORD_TASK, "keyword spotter",
                       KeywordContract.from_entry).front_end
    if isinstance(params, MfccParams):
        return KeywordSpotter(name, entry, model)
    from .embedding import load_speech_embedding

    return KeywordSpotter(name, entry, model, front_end=load_speech_embedding(models_dir, params))


def front_end_params(data: dict[str, Any]) -> MfccParams | EmbeddingParams:
    """A manifest's (or recipe's) front end: MFCCs, or ``kind = "speech_embedding"``."""
    if data.get("kind", "mfcc") == "mfcc":
        return MfccParams.from_dict({k: v for k, v in data.items() if k != "kind"})
    from .embedding import EmbeddingParams

    return EmbeddingParams.from_dict(data)


ANCHORS_SUFFIX = ".anchors.npz"
MAX_ANCHORS_BYTES = 5_000_000


def load_anchors(models_dir: Path | str, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The keyword model's anchors, if its manifest entry names them: embeddings [N, D]
    (float32) of windows of its own training data and their labels [N] (``python -m
    training.anchors``), checked against the manifest's sha256 and its model's file. An
    enrolled node's layer is fitted beside them, so it goes on answering what its takes do
    not show (noise, other words) as the shipped model does."""
    directory = Path(models_dir)
    entry = _entry(directory, name)
    anchors = entry.get("anchors")
    if anchors is None:
        return None
    if not isinstance(anchors, dict):
        raise ModelLoadError(f"{name}: manifest's anchors are not a table")
    path, data = checked_file(directory, name, "anchors", anchors.get("file"), ANCHORS_SUFFIX,
                               MAX_ANCHORS_BYTES, anchors.get("sha256"))
    if anchors.get("model_sha256") != entry.get("sha256"):
        raise ModelLoadError(f"{name}: {path} was made for another build of the model")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            if "codes" in archive:  # an int8 model's: its levels, and a code per value
                embeddings = archive["levels"].astype(np.float32)[archive["codes"]]
            else:
                embeddings = archive["embeddings"].astype(np.float32)
            targets = archive["targets"].astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelLoadError(f"{name}: {path} is not an anchors archive ({exc})") from None
    labels = len(entry["output"]["labels"])
    if embeddings.ndim != 2 or targets.shape != (len(embeddings),) \
            or not np.isfinite(embeddings).all() or targets.min(initial=0) < 0 \
            or targets.max(initial=0) >= labels:
        raise ModelLoadError(f"{name}: {path} holds anchors of the wrong shape or labels")
    return embeddings, targets


def model_version(entry: dict[str, Any]) -> str:
    """``<manifest format>+<first 8 hex digits of the file's sha256>``, as predictions state."""
    return f"{MANIFEST_FORMAT}+{str(entry.get('sha256', ''))[:8]}"
