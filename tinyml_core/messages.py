"""Typed messages and their wire format (docs/protocol.md is the prose version).

Each message is a frozen dataclass that validates itself on construction, with
``encode() -> bytes`` and ``decode(bytes) -> message``. Sensor messages are SenML
packs (RFC 8428, JSON); predictions, errors and availability are small JSON
documents or plain words. Decoding is strict: anything malformed, out of range or
unexpected raises :class:`~tinyml_core.errors.PayloadError` with a readable reason,
and nothing else escapes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Self, TypeAlias

import numpy as np

from .errors import PayloadError
from .topics import (
    CONFIRMED_ROOT,
    DIAGNOSTICS_ROOT,
    ENROLL_ROOT,
    ENROLLED_ROOT,
    ERRORS_ROOT,
    PREDICTIONS_ROOT,
    SENSORS_ROOT,
    STATUS_ROOT,
    PredictionKind,
    SensorKind,
    SensorTopic,
    validate_id,
)

# --- limits -------------------------------------------------------------------------------------
# Timestamps are seconds since the Unix epoch (UTC). Recorded datasets go back to 2009, so the
# floor is 2000-01-01; anything past 2100 is a unit mistake (milliseconds) rather than a date.
MIN_TIME_S = 946_684_800.0
MAX_TIME_S = 4_102_444_800.0
# Physically possible near-surface air (the DHT11 itself reads 0-50 °C).
MIN_TEMPERATURE_C = -80.0
MAX_TEMPERATURE_C = 80.0
MIN_SAMPLE_RATE_HZ = 4_000
MAX_SAMPLE_RATE_HZ = 96_000
MAX_CLIP_SECONDS = 10.0
# Sequence numbers and counters must survive a JSON round trip through any parser (2**53).
MAX_SEQ = 2**53 - 1
# Checked before parsing, so a 10 MB payload costs nothing but a len().
MAX_CLIMATE_PAYLOAD_BYTES = 4_096
MAX_AUDIO_PAYLOAD_BYTES = 2 * 1024 * 1024
MAX_RESULT_PAYLOAD_BYTES = 64 * 1024
MAX_LABEL_COUNT = 64
# A node has at most this many messages sent and not yet confirmed (its confirm_window), so a
# reading it sends again is never more than this many behind its newest: the collector's
# windows keep that many steps to put it in (collector/windows.py).
CONFIRM_WINDOW = 256
MAX_CONFIRMED_RANGES = 64  # tinyml_core.seqranges.MAX_RANGES

SAMPLE_FORMAT = "s16le"  # signed 16-bit little-endian PCM, one channel
UNIT_CELSIUS = "Cel"
UNIT_RELATIVE_HUMIDITY = "%RH"
UNIT_HERTZ = "Hz"
UNIT_SECOND = "s"
UNKNOWN_LABEL = "unknown"
# A keyword model's own classes for "no word" (other speech, noise): never a word said.
NO_WORD_LABELS = frozenset({UNKNOWN_LABEL, "silence"})
# What an audio message holds: a sound event a microphone cut from what it heard (the
# default), or one utterance sent on its own (a button, a wake-word device, `node replay
# --audio-dir`): a collector decides the two with different thresholds.
SOUND_EVENT = "event"
CLIP = "clip"
CAPTURES = (SOUND_EVENT, CLIP)

_JSON: TypeAlias = Any
_LABEL_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_BASE64URL_PATTERN = re.compile(r"[A-Za-z0-9_-]*")
# A node's spool id: made with its spool, so it changes exactly when the node's numbering
# starts again (a new SD card, a deleted spool, each replay).
_SPOOL_PATTERN = re.compile(r"[0-9a-f]{8,32}")


# --- JSON helpers -------------------------------------------------------------------------------
def _reject_constant(name: str) -> float:
    raise PayloadError(f"{name} is not a number JSON allows")


def _no_duplicate_keys(pairs: list[tuple[str, _JSON]]) -> dict[str, _JSON]:
    result: dict[str, _JSON] = {}
    for key, value in pairs:
        if key in result:
            raise PayloadError(f"key {key!r} appears twice")
        result[key] = value
    return result


# Built once: json.loads/json.dumps with options build a new decoder/encoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _parse_json(payload: bytes, max_bytes: int, what: str) -> _JSON:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise PayloadError(f"{what} payload must be bytes, not {type(payload).__name__}")
    if len(payload) == 0:
        raise PayloadError(f"{what} payload is empty")
    if len(payload) > max_bytes:
        raise PayloadError(f"{what} payload is {len(payload)} bytes; the limit is {max_bytes}")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{what} payload is not UTF-8 text (byte {exc.start})") from None
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"{what} payload is not valid JSON: {exc.msg} at {exc.pos}") from None
    except RecursionError:
        raise PayloadError(f"{what} payload is nested too deeply") from None


def _dump_json(document: _JSON) -> bytes:
    return _ENCODER.encode(document).encode("utf-8")


# --- value checks (shared by constructors and decoders) -----------------------------------------
def _number(value: object, name: str, low: float, high: float) -> float:
    if type(value) is float and low <= value <= high:  # the common case, once per field
        return value  # (NaN fails the comparison and takes the path below)
    # bool is an int subclass: True must not pass as 1.0
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise PayloadError(f"must be a number, not {type(value).__name__}", field=name)
    number = float(value)
    if not math.isfinite(number):
        raise PayloadError(f"must be finite, not {number}", field=name)
    if not low <= number <= high:
        raise PayloadError(f"{number:g} is outside [{low:g}, {high:g}]", field=name)
    return number


def _integer(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise PayloadError("must be an integer, not a boolean", field=name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # SenML "v" is a JSON number; 42.0 is a fine sequence number
    if not isinstance(value, int | np.integer):
        raise PayloadError(f"must be an integer, not {value!r}", field=name)
    number = int(value)
    if not low <= number <= high:
        raise PayloadError(f"{number} is outside [{low}, {high}]", field=name)
    return number


def _text(value: object, name: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"must be a string, not {type(value).__name__}", field=name)
    if pattern is not None and not pattern.fullmatch(value):
        raise PayloadError(f"{value[:40]!r} is not allowed here", field=name)
    return value


def _timestamp(value: object, name: str = "time") -> float:
    return _number(value, name, MIN_TIME_S, MAX_TIME_S)


def _node_id(value: object, name: str = "node_id") -> str:
    if not isinstance(value, str):
        raise PayloadError(f"must be a string, not {type(value).__name__}", field=name)
    return validate_id(value)


def _spool_id(value: object, name: str = "spool") -> str:
    return _text(value, name, _SPOOL_PATTERN)


def _optional_spool(value: object) -> str | None:
    return None if value is None else _spool_id(value)


def _spool_record(spool: str | None) -> list[dict[str, _JSON]]:
    return [] if spool is None else [{"n": "spool", "vs": spool}]


def _object(document: _JSON, what: str, required: set[str],
            optional: frozenset[str] | set[str] = frozenset()) -> dict[str, _JSON]:
    if not isinstance(document, dict):
        raise PayloadError(f"{what} must be a JSON object, not {type(document).__name__}")
    missing = required - document.keys()
    if missing:
        raise PayloadError(f"{what} lacks {', '.join(sorted(missing))}")
    unknown = document.keys() - required - optional
    if unknown:
        raise PayloadError(f"{what} has unknown keys {', '.join(sorted(unknown))}")
    return document


# --- SenML --------------------------------------------------------------------------------------
_SENML_RECORD_KEYS = {"bn", "bt", "n", "u", "v", "vs", "vd", "t"}
_SENML_VALUE_KEYS = ("v", "vs", "vd")


@dataclass(frozen=True)
class _SenmlPack:
    """A resolved SenML pack whose records all describe one node at one instant."""

    node_id: str
    time: float
    records: dict[str, dict[str, _JSON]]  # short name -> record

    def value(self, name: str, key: str, unit: str | None = None) -> _JSON:
        record = self.records.get(name)
        if record is None:
            raise PayloadError(f"SenML pack has no '{name}' record")
        if record.get("u") != unit:
            expected = f"unit {unit!r}" if unit else "no unit"
            raise PayloadError(f"'{name}' record must have {expected}, not {record.get('u')!r}")
        present = [k for k in _SENML_VALUE_KEYS if k in record]
        if present != [key]:
            raise PayloadError(f"'{name}' record must carry exactly one value in '{key}'")
        return record[key]

    def expect_names(self, names: set[str],
                     optional: frozenset[str] | set[str] = frozenset()) -> None:
        unknown = self.records.keys() - names - optional
        if unknown:
            raise PayloadError(f"SenML pack has unexpected records {', '.join(sorted(unknown))}")

    def spool(self) -> str | None:
        """The optional ``spool`` record (a node without one numbers as before spool ids)."""
        if "spool" not in self.records:
            return None
        return _spool_id(self.value("spool", "vs"))


def _base_name(node_id: str) -> str:
    return f"{node_id}/"


def _parse_senml(payload: bytes, max_bytes: int, what: str) -> _SenmlPack:
    document = _parse_json(payload, max_bytes, what)
    if not isinstance(document, list) or not document:
        raise PayloadError(f"{what} payload must be a non-empty SenML pack (a JSON array)")
    if len(document) > 16:
        raise PayloadError(f"{what} SenML pack has {len(document)} records; at most 16 expected")
    first = document[0]
    if not isinstance(first, dict):
        raise PayloadError(f"{what} SenML record 0 must be a JSON object")
    base_name = _text(first.get("bn"), "bn")
    if not base_name.endswith("/"):
        raise PayloadError(f"base name {base_name[:40]!r} must be '<node_id>/'", field="bn")
    node_id = validate_id(base_name[:-1])
    base_time = _timestamp(first.get("bt"), "bt")
    records: dict[str, dict[str, _JSON]] = {}
    for index, record in enumerate(document):
        if not isinstance(record, dict):
            raise PayloadError(f"{what} SenML record {index} must be a JSON object")
        unknown = record.keys() - _SENML_RECORD_KEYS
        if unknown:
            raise PayloadError(
                f"SenML record {index} has unsupported fields {', '.join(sorted(unknown))}"
            )
        if index > 0 and ("bn" in record or "bt" in record):
            raise PayloadError(f"SenML record {index} may not change the base name or time")
        if record.get("t", 0) != 0:
            raise PayloadError(f"SenML record {index} has a time offset; all records share bt")
        name = _text(record.get("n"), f"record {index} name")
        if name in records:
            raise PayloadError(f"SenML record '{name}' appears twice")
        records[name] = record
    return _SenmlPack(node_id, base_time, records)


def _encode_base64url(data: bytes) -> str:
    # RFC 8428 section 4.3: "vd" is base64url with the padding omitted.
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode_base64url(text: str) -> bytes:
    if not _BASE64URL_PATTERN.fullmatch(text) or len(text) % 4 == 1:
        raise PayloadError("is not base64url without padding (RFC 8428 'vd')", field="audio")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise PayloadError("is not decodable base64url", field="audio") from None


# --- sensor messages ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ClimateReading:
    """One temperature/humidity reading of a node.

    ``time`` is seconds since the epoch (UTC), ``temperature`` °C, ``humidity`` %RH,
    ``seq`` the node's own counter, so the collector can see gaps and duplicates, and
    ``spool`` the id of the numbering it belongs to (made with the node's spool; None: a node
    from before spool ids).
    """

    node_id: str
    time: float
    seq: int
    temperature: float
    humidity: float
    spool: str | None = None

    kind: ClassVar[SensorKind] = SensorKind.CLIMATE

    def __post_init__(self) -> None:
        validate_id(self.node_id)
        object.__setattr__(self, "time", _timestamp(self.time))
        object.__setattr__(self, "seq", _integer(self.seq, "seq", 0, MAX_SEQ))
        object.__setattr__(
            self,
            "temperature",
            _number(self.temperature, "temperature", MIN_TEMPERATURE_C, MAX_TEMPERATURE_C),
        )
        object.__setattr__(self, "humidity", _number(self.humidity, "humidity", 0.0, 100.0))
        _optional_spool(self.spool)

    def encode(self) -> bytes:
        return _dump_json(
            [
                {
                    "bn": _base_name(self.node_id),
                    "bt": self.time,
                    "n": "temperature",
                    "u": UNIT_CELSIUS,
                    "v": self.temperature,
                },
                {"n": "humidity", "u": UNIT_RELATIVE_HUMIDITY, "v": self.humidity},
                {"n": "seq", "v": self.seq},
                *_spool_record(self.spool),
            ]
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        pack = _parse_senml(payload, MAX_CLIMATE_PAYLOAD_BYTES, "climate")
        pack.expect_names({"temperature", "humidity", "seq"}, optional={"spool"})
        return cls(
            node_id=pack.node_id,
            time=pack.time,
            seq=pack.value("seq", "v"),
            temperature=pack.value("temperature", "v", UNIT_CELSIUS),
            humidity=pack.value("humidity", "v", UNIT_RELATIVE_HUMIDITY),
            spool=pack.spool(),
        )


class _Samples:
    """Signed 16-bit little-endian mono samples (``pcm``) at ``sample_rate``, as numpy."""

    pcm: bytes
    sample_rate: int

    @property
    def samples(self) -> np.ndarray:
        """The samples as a read-only int16 numpy array."""
        return np.frombuffer(self.pcm, dtype="<i2")

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.pcm) / 2 / self.sample_rate

    def _check_samples(self, what: str, name: str) -> None:
        """The rate in range, and whole samples, some, at most MAX_CLIP_SECONDS of them."""
        rate = _integer(self.sample_rate, "sample_rate", MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ)
        object.__setattr__(self, "sample_rate", rate)
        if not isinstance(self.pcm, bytes):
            raise PayloadError("must be bytes of s16le samples", field=name)
        if not self.pcm:
            raise PayloadError(f"{what} holds no samples", field=name)
        if len(self.pcm) % 2:
            raise PayloadError(f"{len(self.pcm)} bytes is not a whole number of 16-bit samples",
                               field=name)
        if self.duration > MAX_CLIP_SECONDS:
            raise PayloadError(f"{what} lasts {self.duration:.2f} s; at most "
                               f"{MAX_CLIP_SECONDS:g} s", field=name)


def _pcm(samples: np.ndarray, name: str) -> bytes:
    """A one-dimensional int16 array as s16le bytes (no silent conversion from float)."""
    array = np.asarray(samples)
    if array.ndim != 1 or array.dtype != np.int16:
        raise PayloadError(f"samples must be a 1-D int16 array, not {array.ndim}-D "
                           f"{array.dtype}", field=name)
    return array.astype("<i2", copy=False).tobytes()


@dataclass(frozen=True)
class AudioClip(_Samples):
    """A mono audio clip recorded by a node.

    ``pcm`` holds signed 16-bit little-endian samples at ``sample_rate`` Hz; ``time`` is
    the clip's start in seconds since the epoch. Use :meth:`from_samples` and
    :attr:`samples` to go to and from numpy.
    """

    node_id: str
    time: float
    seq: int
    sample_rate: int
    pcm: bytes = field(repr=False)
    spool: str | None = None  # as ClimateReading's
    capture: str = SOUND_EVENT  # or CLIP: one utterance sent on its own

    kind: ClassVar[SensorKind] = SensorKind.AUDIO

    def __post_init__(self) -> None:
        validate_id(self.node_id)
        object.__setattr__(self, "time", _timestamp(self.time))
        object.__setattr__(self, "seq", _integer(self.seq, "seq", 0, MAX_SEQ))
        self._check_samples("clip", "audio")
        _optional_spool(self.spool)
        if self.capture not in CAPTURES:
            raise PayloadError(f"{str(self.capture)[:20]!r} is not one of "
                               f"{', '.join(CAPTURES)}", field="capture")

    @classmethod
    def from_samples(
        cls, node_id: str, time: float, seq: int, sample_rate: int, samples: np.ndarray,
        spool: str | None = None, capture: str = SOUND_EVENT,
    ) -> Self:
        """Build a clip from a one-dimensional int16 array (no silent conversion from float)."""
        return cls(node_id, time, seq, sample_rate, _pcm(samples, "audio"), spool, capture)

    def encode(self) -> bytes:
        return _dump_json(
            [
                {
                    "bn": _base_name(self.node_id),
                    "bt": self.time,
                    "n": "audio",
                    "vd": _encode_base64url(self.pcm),
                },
                {"n": "sample_rate", "u": UNIT_HERTZ, "v": self.sample_rate},
                {"n": "sample_format", "vs": SAMPLE_FORMAT},
                {"n": "channels", "v": 1},
                {"n": "duration", "u": UNIT_SECOND, "v": self.duration},
                {"n": "seq", "v": self.seq},
                *_spool_record(self.spool),
                *([] if self.capture == SOUND_EVENT else [{"n": "capture", "vs": self.capture}]),
            ]
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        pack = _parse_senml(payload, MAX_AUDIO_PAYLOAD_BYTES, "audio")
        pack.expect_names({"audio", "sample_rate", "sample_format", "channels", "duration", "seq"},
                          optional={"spool", "capture"})
        capture = _text(pack.value("capture", "vs"), "capture") if "capture" in pack.records \
            else SOUND_EVENT
        sample_format = _text(pack.value("sample_format", "vs"), "sample_format")
        if sample_format != SAMPLE_FORMAT:
            raise PayloadError(f"{sample_format[:20]!r} is not supported; only {SAMPLE_FORMAT!r}",
                               field="sample_format")
        channels = _integer(pack.value("channels", "v"), "channels", 0, 2**31)
        if channels != 1:
            raise PayloadError(f"{channels} channels; only mono (1) is supported", field="channels")
        encoded = _text(pack.value("audio", "vd"), "audio")
        clip = cls(
            node_id=pack.node_id,
            time=pack.time,
            seq=pack.value("seq", "v"),
            sample_rate=pack.value("sample_rate", "v", UNIT_HERTZ),
            pcm=_decode_base64url(encoded),
            spool=pack.spool(),
            capture=capture,
        )
        stated = _number(pack.value("duration", "v", UNIT_SECOND), "duration", 0.0,
                         MAX_CLIP_SECONDS)
        # The stated duration is redundant on purpose: it catches truncated or mislabelled clips.
        if abs(stated - clip.duration) > 1.0 / clip.sample_rate + 1e-9:
            raise PayloadError(
                f"states {stated:g} s but the data holds {clip.duration:g} s "
                f"at {clip.sample_rate} Hz",
                field="duration",
            )
        return clip


SensorMessage: TypeAlias = ClimateReading | AudioClip
_SENSOR_CODECS: dict[SensorKind, type[ClimateReading] | type[AudioClip]] = {
    SensorKind.CLIMATE: ClimateReading,
    SensorKind.AUDIO: AudioClip,
}


def sensor_message_topic(message: SensorMessage) -> str:
    """The topic a sensor message is published on."""
    return str(SensorTopic(message.node_id, message.kind))


def decode_sensor_message(topic: str, payload: bytes) -> SensorMessage:
    """Decode what arrived on ``sensors/<node_id>/<kind>``.

    The node id inside the payload must match the one in the topic, so a node cannot
    speak for another one through a topic it is allowed to use.
    """
    parsed = SensorTopic.parse(topic)
    message = _SENSOR_CODECS[parsed.kind].decode(payload)
    if message.node_id != parsed.node_id:
        raise PayloadError(
            f"payload is from node {message.node_id!r} but was published on {topic!r}",
            field="bn",
        )
    return message


# --- predictions --------------------------------------------------------------------------------
_HEADER_KEYS = ("node_id", "model", "model_version", "input_time", "latency_ms")
_MAX_LATENCY_MS = 3_600_000.0


@dataclass(frozen=True)
class _PredictionHeader:
    """What every prediction states: node, model and version, input time, latency in ms."""

    node_id: str
    model: str
    model_version: str
    input_time: float
    latency_ms: float

    def __post_init__(self) -> None:
        _node_id(self.node_id)
        _text(self.model, "model", _LABEL_PATTERN)
        _text(self.model_version, "model_version")
        object.__setattr__(self, "input_time", _timestamp(self.input_time, "input_time"))
        object.__setattr__(
            self, "latency_ms", _number(self.latency_ms, "latency_ms", 0.0, _MAX_LATENCY_MS)
        )

    def _header_json(self) -> dict[str, _JSON]:
        return {key: getattr(self, key) for key in _HEADER_KEYS}

    @staticmethod
    def _header_from(document: Mapping[str, _JSON]) -> dict[str, _JSON]:
        return {key: document[key] for key in _HEADER_KEYS}


@dataclass(frozen=True)
class ForecastStep:
    """One future step of a forecast: time (s since epoch), °C, %RH."""

    time: float
    temperature: float
    humidity: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", _timestamp(self.time))
        # Model output is not clamped to the sensor's physical range; still finite and sane.
        object.__setattr__(self, "temperature", _number(self.temperature, "temperature", -200, 200))
        object.__setattr__(self, "humidity", _number(self.humidity, "humidity", -100, 200))


@dataclass(frozen=True)
class Forecast(_PredictionHeader):
    """``predictions/<node_id>/forecast``: the next steps after the reading at ``input_time``.

    ``filled_steps`` counts the window's steps that were missing and filled by interpolating
    their neighbours (0: every step was measured; then the key is left out, as before it existed).
    """

    steps: tuple[ForecastStep, ...]
    filled_steps: int = 0

    kind: ClassVar[PredictionKind] = PredictionKind.FORECAST
    UNITS: ClassVar[dict[str, str]] = {
        "time": UNIT_SECOND,
        "temperature": UNIT_CELSIUS,
        "humidity": UNIT_RELATIVE_HUMIDITY,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        steps = tuple(self.steps)
        if not 1 <= len(steps) <= 1000:
            raise PayloadError(f"{len(steps)} steps; expected 1 to 1000", field="steps")
        if not all(isinstance(step, ForecastStep) for step in steps):
            raise PayloadError("must be ForecastStep values", field="steps")
        object.__setattr__(self, "steps", steps)
        _integer(self.filled_steps, "filled_steps", 0, len(steps) + 1000)

    def encode(self) -> bytes:
        steps = [{"time": s.time, "temperature": s.temperature, "humidity": s.humidity}
                 for s in self.steps]
        filled = {"filled_steps": self.filled_steps} if self.filled_steps else {}
        return _dump_json(self._header_json() | filled | {"units": self.UNITS, "steps": steps})

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        document = _parse_json(payload, MAX_RESULT_PAYLOAD_BYTES, "forecast")
        optional = {"filled_steps"} if isinstance(document, dict) and \
            "filled_steps" in document else set()
        document = _object(document, "forecast", {*_HEADER_KEYS, "units", "steps", *optional})
        if document["units"] != cls.UNITS:
            raise PayloadError(f"units must be {cls.UNITS}", field="units")
        raw_steps = document["steps"]
        if not isinstance(raw_steps, list):
            raise PayloadError("must be a list", field="steps")
        steps = tuple(
            ForecastStep(**_object(step, f"step {i}", {"time", "temperature", "humidity"}))
            for i, step in enumerate(raw_steps)
        )
        return cls(**cls._header_from(document), steps=steps,
                   filled_steps=document.get("filled_steps", 0))


@dataclass(frozen=True)
class KeywordResult(_PredictionHeader):
    """``predictions/<node_id>/keyword``: a word heard in a sound event, in the window that
    started at ``input_time``.

    ``label`` is ``"unknown"`` when the collector found no word in the event (other speech,
    noise, silence); ``probabilities`` are those of the window it decided on.
    ``latency_ms`` covers resampling, features and inference; ``inference_ms`` only the model.
    """

    inference_ms: float
    label: str
    probabilities: Mapping[str, float]

    kind: ClassVar[PredictionKind] = PredictionKind.KEYWORD

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(
            self, "inference_ms", _number(self.inference_ms, "inference_ms", 0.0, _MAX_LATENCY_MS)
        )
        if not isinstance(self.probabilities, Mapping) or not self.probabilities:
            raise PayloadError("must be a non-empty mapping of label to probability",
                               field="probabilities")
        if len(self.probabilities) > MAX_LABEL_COUNT:
            raise PayloadError(f"more than {MAX_LABEL_COUNT} labels", field="probabilities")
        probabilities = {
            _text(label, "label", _LABEL_PATTERN): _number(p, f"probabilities.{label}", 0.0, 1.0)
            for label, p in self.probabilities.items()
        }
        # Quantized softmax outputs do not sum to exactly 1; a larger error is a broken model.
        if abs(sum(probabilities.values()) - 1.0) > 0.05:
            raise PayloadError("probabilities must sum to 1", field="probabilities")
        _text(self.label, "label")
        if self.label != UNKNOWN_LABEL and self.label not in probabilities:
            raise PayloadError(f"{self.label!r} is neither a model label nor {UNKNOWN_LABEL!r}",
                               field="label")
        object.__setattr__(self, "probabilities", probabilities)

    @property
    def probability(self) -> float:
        """Probability of the chosen label (0 for ``unknown``)."""
        return self.probabilities.get(self.label, 0.0)

    @property
    def closest(self) -> tuple[str, float]:
        """The word that came closest and its probability: for ``unknown``, what a person asks
        ("unknown, closest go 62 %"); a model's own no-word classes are no word."""
        words = {label: p for label, p in self.probabilities.items()
                 if label not in NO_WORD_LABELS} or dict(self.probabilities)
        word = max(words, key=words.__getitem__)
        return word, words[word]

    def encode(self) -> bytes:
        return _dump_json(
            self._header_json()
            | {
                "inference_ms": self.inference_ms,
                "label": self.label,
                "probability": self.probability,
                "probabilities": dict(self.probabilities),
            }
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        document = _object(
            _parse_json(payload, MAX_RESULT_PAYLOAD_BYTES, "keyword"),
            "keyword result",
            {*_HEADER_KEYS, "inference_ms", "label", "probability", "probabilities"},
        )
        result = cls(
            **cls._header_from(document),
            inference_ms=document["inference_ms"],
            label=document["label"],
            probabilities=document["probabilities"],
        )
        stated = _number(document["probability"], "probability", 0.0, 1.0)
        if stated != result.probability:
            raise PayloadError("does not match probabilities[label]", field="probability")
        return result


PredictionMessage: TypeAlias = Forecast | KeywordResult


# --- availability and errors --------------------------------------------------------------------
class Availability(Enum):
    """Retained payload of ``status/<client_id>``: plain words, as Home Assistant expects."""

    ONLINE = "online"
    OFFLINE = "offline"

    def encode(self) -> bytes:
        return str(self.value).encode("ascii")

    @classmethod
    def decode(cls, payload: bytes) -> Availability:
        try:
            return cls(bytes(payload).decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise PayloadError(
                f"status must be 'online' or 'offline', not {bytes(payload)[:20]!r}"
            ) from None


MAX_ERROR_REASON_CHARS = 500
_PAYLOAD_HEAD_BYTES = 64


@dataclass(frozen=True)
class ErrorRecord:
    """``errors/<node_id>``: one rejected input, and why.

    ``payload_head`` shows the first bytes of what was received (escaped), enough to find it in
    a recording without echoing a hostile payload back onto the broker.
    """

    node_id: str
    time: float
    topic: str
    reason: str
    payload_size: int
    payload_head: str
    field: str | None = None

    def __post_init__(self) -> None:
        validate_id(self.node_id)
        _timestamp(self.time)
        _text(self.topic, "topic")
        _text(self.reason, "reason")
        object.__setattr__(self, "reason", self.reason[:MAX_ERROR_REASON_CHARS])
        object.__setattr__(self, "topic", self.topic[:256])
        _integer(self.payload_size, "payload_size", 0, 2**40)
        _text(self.payload_head, "payload_head")
        if self.field is not None:
            _text(self.field, "field")

    @classmethod
    def for_rejected(
        cls, node_id: str, time: float, topic: str, payload: bytes, error: PayloadError
    ) -> Self:
        text = bytes(payload[:_PAYLOAD_HEAD_BYTES]).decode("ascii", errors="backslashreplace")
        head = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
        return cls(node_id, time, topic, error.reason, len(payload), head, error.field)

    def encode(self) -> bytes:
        return _dump_json(
            {
                "node_id": self.node_id,
                "time": self.time,
                "topic": self.topic,
                "reason": self.reason,
                "field": self.field,
                "payload_size": self.payload_size,
                "payload_head": self.payload_head,
            }
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        document = _object(
            _parse_json(payload, MAX_RESULT_PAYLOAD_BYTES, "error record"),
            "error record",
            {"node_id", "time", "topic", "reason", "field", "payload_size", "payload_head"},
        )
        return cls(**document)


@dataclass(frozen=True)
class Confirmation:
    """``confirmed/<node_id>/<kind>`` (retained): which of a node's messages of one sensor kind
    the collector has taken, as sequence number ranges (``taken``, inclusive, lowest first, at
    most ``MAX_CONFIRMED_RANGES``), with the highest (``seq``), as of ``time``.

    A node keeps what it sent until a confirmation covers it, sends no more than a window
    ahead of the confirmations, and sends again what stays uncovered: a broker that dies
    between its PUBACK and its disk, or drops a message from a full queue, loses it otherwise
    (docs/security.md, "Crashes" and "Flow control"). ``spool`` names the numbering the ranges
    belong to (the node's spool id; None: a node that sends none): a node ignores what was
    confirmed of another numbering.
    """

    node_id: str
    collector_id: str
    kind: str
    seq: int
    taken: tuple[tuple[int, int], ...]
    time: float
    spool: str | None = None

    def __post_init__(self) -> None:
        validate_id(self.node_id)
        validate_id(self.collector_id, "collector id")
        object.__setattr__(self, "kind", _sensor_kind(self.kind))
        _integer(self.seq, "seq", 0, MAX_SEQ)
        object.__setattr__(self, "taken", _ranges(self.taken, "taken"))
        if self.taken and self.taken[-1][1] != self.seq:
            raise PayloadError(f"seq {self.seq} is not the highest of taken "
                               f"({self.taken[-1][1]})")
        object.__setattr__(self, "time", _timestamp(self.time))
        _optional_spool(self.spool)

    def encode(self) -> bytes:
        spool = {} if self.spool is None else {"spool": self.spool}
        return _dump_json({"node_id": self.node_id, "collector_id": self.collector_id,
                           "kind": self.kind, "seq": self.seq,
                           "taken": [list(pair) for pair in self.taken], "time": self.time,
                           **spool})

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        document = _object(_parse_json(payload, MAX_RESULT_PAYLOAD_BYTES, "confirmation"),
                           "confirmation", {"node_id", "collector_id", "kind", "seq", "taken",
                                            "time"}, optional={"spool"})
        if "spool" in document:
            _spool_id(document["spool"])  # present, so not null
        return cls(**document)


def _sensor_kind(value: object) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"kind must be a string, not {type(value).__name__}")
    try:
        return SensorKind(value).value
    except ValueError:
        known = ", ".join(k.value for k in SensorKind)
        raise PayloadError(f"kind must be one of {known}, not {value!r}") from None


def _ranges(value: object, name: str) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint, inclusive [low, high] pairs of sequence numbers."""
    if not isinstance(value, list | tuple) or len(value) > MAX_CONFIRMED_RANGES:
        raise PayloadError(f"{name} must be a list of at most {MAX_CONFIRMED_RANGES} "
                           "[low, high] pairs")
    pairs: list[tuple[int, int]] = []
    for pair in value:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise PayloadError(f"{name} must hold [low, high] pairs, not {pair!r:.40}")
        low = _integer(pair[0], name, 0, MAX_SEQ)
        high = _integer(pair[1], name, low, MAX_SEQ)
        if pairs and low <= pairs[-1][1] + 1:
            raise PayloadError(f"{name} must be sorted, disjoint ranges")
        pairs.append((low, high))
    return tuple(pairs)


@dataclass(frozen=True)
class NodeDiagnostics:
    """``diagnostics/<node_id>`` (retained): how a node is doing, as of ``time``. Counts are
    since the node process started, except the spool's, which the spool file keeps."""

    node_id: str
    time: float
    spool_waiting: int  # messages not yet sent or acknowledged
    unconfirmed: int  # sent, waiting for a collector's confirmation
    spool_dropped: int  # dropped by the spool's caps (clips, readings, unconfirmed), ever
    failed_reads: int  # DHT11 reads that failed after all retries
    sound_events: int
    sound_events_dropped: int  # the microphone's queue was full
    sent: int
    sent_again: int
    # The numbering its messages carry (its spool id) and when it began: a new one means the
    # node started counting again (a new SD card, a deleted spool). None: an older node.
    spool: str | None = None
    spool_created: float | None = None

    _COUNTS: ClassVar[tuple[str, ...]] = (
        "spool_waiting", "unconfirmed", "spool_dropped", "failed_reads", "sound_events",
        "sound_events_dropped", "sent", "sent_again")

    def __post_init__(self) -> None:
        validate_id(self.node_id)
        object.__setattr__(self, "time", _timestamp(self.time))
        for name in self._COUNTS:
            _integer(getattr(self, name), name, 0, MAX_SEQ)
        _optional_spool(self.spool)
        if self.spool_created is not None:
            object.__setattr__(self, "spool_created", _timestamp(self.spool_created,
                                                                 "spool_created"))

    def encode(self) -> bytes:
        spool: dict[str, _JSON] = {} if self.spool is None else {"spool": self.spool}
        if self.spool_created is not None:
            spool["spool_created"] = self.spool_created
        return _dump_json({"node_id": self.node_id, "time": self.time,
                           **{name: getattr(self, name) for name in self._COUNTS}, **spool})

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        document = _object(_parse_json(payload, MAX_RESULT_PAYLOAD_BYTES, "diagnostics"),
                           "diagnostics", {"node_id", "time", *cls._COUNTS},
                           optional={"spool", "spool_created"})
        if "spool" in document:
            _spool_id(document["spool"])
        return cls(**document)


# --- enrollment ---------------------------------------------------------------------------------
MAX_ENROLL_TAKES = 400  # takes in one enrollment (8 words x 3 takes and speech is ~40)
MAX_PERSON_CHARS = 64
UNKNOWN_FOLDER = "_unknown_"  # what is none of the keywords: a take's word, a folder name
# A word of a node's own (``node enroll --word``): it names a Home Assistant event type and a
# device trigger, a folder of takes and a label in results.
OWN_WORD_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,22}[a-z0-9])?")
OWN_WORD_RULE = "1-24 lower-case letters or digits (inner hyphens allowed)"
# (Speech Commands' convention; a person's ordinary speech, in an enrollment)
_SESSION_PATTERN = re.compile(r"[0-9a-f]{8,32}")
_WORD_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,31}")


def _person(value: object) -> str:
    text = _text(value, "person")
    if not 0 < len(text) <= MAX_PERSON_CHARS or not text.isprintable():
        raise PayloadError(f"person must be 1-{MAX_PERSON_CHARS} printable characters",
                           field="person")
    return text


@dataclass(frozen=True)
class EnrollmentTake(_Samples):
    """``enroll/<node_id>``: one take of one person (a keyword said once, or a piece of their
    ordinary speech as ``word`` ``_unknown_``), number ``index`` of the ``count`` takes of one
    enrollment ``session``. The collector adapts once it has all of them, and answers on
    ``enrolled/<node_id>`` (:class:`EnrollmentResult`). ``new_word``: ``word`` is none of the
    model's keywords but one the node is to learn as its own (``node enroll --word``)."""

    node_id: str
    person: str
    session: str
    word: str
    index: int
    count: int
    sample_rate: int
    pcm: bytes = field(repr=False)
    time: float
    new_word: bool = False

    def __post_init__(self) -> None:
        validate_id(self.node_id)
        _person(self.person)
        _text(self.session, "session", _SESSION_PATTERN)
        _text(self.word, "word", _WORD_PATTERN)
        count = _integer(self.count, "count", 1, MAX_ENROLL_TAKES)
        _integer(self.index, "index", 0, count - 1)
        object.__setattr__(self, "time", _timestamp(self.time))
        if not isinstance(self.new_word, bool):
            raise PayloadError("new_word must be true or false", field="new_word")
        if self.new_word and not OWN_WORD_PATTERN.fullmatch(self.word):
            raise PayloadError(f"new word {self.word!r}: a word of a node's own is "
                               f"{OWN_WORD_RULE}", field="word")
        self._check_samples("take", "pcm")

    @classmethod
    def from_samples(cls, node_id: str, person: str, session: str, word: str, index: int,
                     count: int, sample_rate: int, samples: np.ndarray, time: float,
                     new_word: bool = False) -> Self:
        return cls(node_id, person, session, word, index, count, sample_rate,
                   _pcm(samples, "pcm"), time, new_word)

    def encode(self) -> bytes:
        return _dump_json({"node_id": self.node_id, "person": self.person,
                           "session": self.session, "word": self.word, "index": self.index,
                           "count": self.count, "sample_rate": self.sample_rate,
                           "sample_format": SAMPLE_FORMAT,
                           "pcm": _encode_base64url(self.pcm), "time": self.time}
                          | ({"new_word": True} if self.new_word else {}))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        document = _object(_parse_json(payload, MAX_AUDIO_PAYLOAD_BYTES, "enrollment take"),
                           "enrollment take", {"node_id", "person", "session", "word", "index",
                                               "count", "sample_rate", "sample_format", "pcm",
                                               "time"}, {"new_word"})
        if document.pop("sample_format") != SAMPLE_FORMAT:
            raise PayloadError(f"only {SAMPLE_FORMAT!r} takes", field="sample_format")
        try:
            pcm = _decode_base64url(_text(document.pop("pcm"), "pcm"))
        except PayloadError as error:
            raise PayloadError(error.reason, field="pcm") from None
        return cls(pcm=pcm, **document)


@dataclass(frozen=True)
class EnrollmentResult:
    """``enrolled/<node_id>``: what the collector made of an enrollment ``session``: enrolled
    (with the node's new ``model_version``) or not, and why."""

    node_id: str
    collector_id: str
    person: str
    session: str
    enrolled: bool
    reason: str  # what was done, or why not
    takes: int  # keyword takes used
    speech: int  # pieces of ordinary speech used
    people: int  # enrolled on the node now
    model_version: str
    seconds: float  # how long adapting took
    time: float

    def __post_init__(self) -> None:
        validate_id(self.node_id)
        validate_id(self.collector_id, "collector id")
        _person(self.person)
        _text(self.session, "session", _SESSION_PATTERN)
        if not isinstance(self.enrolled, bool):
            raise PayloadError("enrolled must be true or false", field="enrolled")
        _text(self.reason, "reason")
        _text(self.model_version, "model_version")
        for name in ("takes", "speech", "people"):
            _integer(getattr(self, name), name, 0, 10 * MAX_ENROLL_TAKES)
        _number(self.seconds, "seconds", 0.0, 86_400.0)
        object.__setattr__(self, "time", _timestamp(self.time))

    def encode(self) -> bytes:
        return _dump_json({name: getattr(self, name) for name in self.__dataclass_fields__})

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        document = _object(_parse_json(payload, MAX_RESULT_PAYLOAD_BYTES, "enrollment result"),
                           "enrollment result", set(cls.__dataclass_fields__))
        return cls(**document)


# --- any topic ----------------------------------------------------------------------------------
AnyMessage: TypeAlias = (SensorMessage | PredictionMessage | Availability | ErrorRecord
                         | Confirmation | NodeDiagnostics | EnrollmentTake | EnrollmentResult)
_PREDICTION_CODECS: dict[str, Callable[[bytes], PredictionMessage]] = {
    PredictionKind.FORECAST.value: Forecast.decode,
    PredictionKind.KEYWORD.value: KeywordResult.decode,
}


def decode_enrollment(topic: str, payload: bytes) -> EnrollmentTake | EnrollmentResult:
    """A take on ``enroll/<node_id>`` or a result on ``enrolled/<node_id>``; the payload must
    name the topic's node (a node enrolls only its own people: the ACL lets it write only its
    own topic, and this refuses a take that names another)."""
    root, _, node_id = topic.partition("/")
    decoded: EnrollmentTake | EnrollmentResult
    if root == ENROLL_ROOT:
        decoded = EnrollmentTake.decode(payload)
    elif root == ENROLLED_ROOT:
        decoded = EnrollmentResult.decode(payload)
    else:
        raise PayloadError(f"topic {topic[:80]!r} is not an enrollment topic")
    if decoded.node_id != validate_id(node_id):
        raise PayloadError(f"a take or result for node {decoded.node_id!r} on {node_id}'s "
                           "topic: a node enrolls only its own people", field="node_id")
    return decoded


def decode_message(topic: str, payload: bytes) -> AnyMessage:
    """Decode a message from any topic of docs/protocol.md (for recorders and dashboards)."""
    parts: Sequence[str] = topic.split("/")
    root = parts[0]
    if root == STATUS_ROOT and len(parts) == 2:
        validate_id(parts[1], "client id")
        return Availability.decode(payload)
    if root == ERRORS_ROOT and len(parts) == 2:
        return ErrorRecord.decode(payload)
    if root == CONFIRMED_ROOT and len(parts) == 3:
        confirmation = Confirmation.decode(payload)
        if (confirmation.node_id, confirmation.kind) != (validate_id(parts[1]), parts[2]):
            raise PayloadError(f"payload is for {confirmation.node_id!r}'s {confirmation.kind}, "
                               f"topic is {topic!r}")
        return confirmation
    if root == DIAGNOSTICS_ROOT and len(parts) == 2:
        diagnostics = NodeDiagnostics.decode(payload)
        if diagnostics.node_id != validate_id(parts[1]):
            raise PayloadError(f"payload is for node {diagnostics.node_id!r}, topic is {topic!r}")
        return diagnostics
    if root == PREDICTIONS_ROOT and len(parts) == 3 and parts[2] in _PREDICTION_CODECS:
        prediction = _PREDICTION_CODECS[parts[2]](payload)
        if prediction.node_id != validate_id(parts[1]):
            raise PayloadError(f"payload is for node {prediction.node_id!r}, topic is {topic!r}")
        return prediction
    if root == SENSORS_ROOT:
        return decode_sensor_message(topic, payload)
    if root in (ENROLL_ROOT, ENROLLED_ROOT) and len(parts) == 2:
        return decode_enrollment(topic, payload)
    raise PayloadError(f"topic {topic[:80]!r} is not part of the protocol")
