"""Recorded sensor data: Jena-format climate CSV files, WAV clips and MQTT stream recordings.

Used by node replay, the collector's recorder, training and the demo alike, so each format
is parsed once. Every reader turns a problem into a :class:`RecordingError` that names the
file (and the line, for text formats).

A stream recording is JSON lines, one message each: ``{"received_at": s, "topic": ...,
"payload": text}``, or ``"payload_base64"`` instead of ``"payload"`` when the bytes are not
UTF-8, so any message (even a malformed one) is kept exactly.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .errors import TinyMLError

# Column names of the Max Planck Institute's Jena weather-station files.
TIME_COLUMN = "Date Time"
TEMPERATURE_COLUMN = "T (degC)"
HUMIDITY_COLUMN = "rh (%)"
TIME_FORMAT = "%d.%m.%Y %H:%M:%S"
# The files are ISO-8859-1: some unit names in the header carry a non-UTF-8 byte.
CSV_ENCODING = "iso-8859-1"


class RecordingError(TinyMLError):
    """A recording (CSV or WAV file) that cannot be read."""


@dataclass(frozen=True)
class ClimateSeries:
    """Readings in file order: ``times`` in s since the epoch, °C and %RH as float64 arrays."""

    source: str
    times: np.ndarray
    temperature: np.ndarray
    humidity: np.ndarray

    def __len__(self) -> int:
        return len(self.times)


def read_climate_csv(path: Path | str) -> ClimateSeries:
    """Read a CSV in the Jena climate format; columns are found by name, in any order.

    Quoted or space-padded fields are accepted. Timestamps ("DD.MM.YYYY HH:MM:SS") are taken
    as UTC: the station's files carry no zone.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding=CSV_ENCODING) as handle:
            reader = csv.reader(handle, skipinitialspace=True)
            header = [name.strip() for name in next(reader, [])]
            columns = _find_columns(header, path)
            times, temperature, humidity = [], [], []
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue  # blank lines, e.g. at the end of a hand-edited file
                line = reader.line_num
                if len(row) < len(header):
                    raise RecordingError(f"{path}:{line}: {len(row)} fields, header has "
                                         f"{len(header)}")
                cells = [row[index].strip() for index in columns]
                times.append(_parse_time(cells[0], path, line))
                temperature.append(_parse_float(cells[1], TEMPERATURE_COLUMN, path, line))
                humidity.append(_parse_float(cells[2], HUMIDITY_COLUMN, path, line))
    except OSError as exc:
        raise RecordingError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except csv.Error as exc:
        raise RecordingError(f"{path}: not a readable CSV file ({exc})") from None
    if not times:
        raise RecordingError(f"{path}: holds no readings")
    return ClimateSeries(str(path), np.array(times), np.array(temperature), np.array(humidity))


def _find_columns(header: list[str], path: Path) -> list[int]:
    wanted = (TIME_COLUMN, TEMPERATURE_COLUMN, HUMIDITY_COLUMN)
    missing = [name for name in wanted if name not in header]
    if missing:
        raise RecordingError(
            f"{path}: not in the Jena climate format: no column {', '.join(map(repr, missing))}"
            f" (header has {', '.join(map(repr, header[:6]))}{'...' if len(header) > 6 else ''})"
        )
    return [header.index(name) for name in wanted]


def _parse_time(text: str, path: Path, line: int) -> float:
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise RecordingError(f"{path}:{line}: {text[:30]!r} is not a DD.MM.YYYY HH:MM:SS "
                             "timestamp") from None


def _parse_float(text: str, column: str, path: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RecordingError(f"{path}:{line}: {column} {text[:20]!r} is not a number") from None
    if not np.isfinite(value):
        raise RecordingError(f"{path}:{line}: {column} is {text}")
    return value


def read_wav(path: Path | str) -> tuple[int, np.ndarray]:
    """(sample rate in Hz, int16 mono samples) of a 16-bit PCM WAV file."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise RecordingError(f"{path}: file not found") from None
    except (wave.Error, EOFError, OSError) as exc:
        raise RecordingError(f"{path}: not a readable WAV file ({exc})") from None
    if width != 2:
        raise RecordingError(f"{path}: {8 * width}-bit samples; only 16-bit PCM is supported")
    samples = np.frombuffer(frames, dtype="<i2")
    if channels > 1:
        # Mix down rather than refuse: a stereo recording of a word is still that word.
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels)
        samples = samples.mean(axis=1).round().astype(np.int16)
    return rate, samples.astype(np.int16, copy=False)


def write_wav(path: Path | str, sample_rate: int, samples: np.ndarray) -> None:
    """Write int16 mono samples as a 16-bit PCM WAV file."""
    array = np.asarray(samples)
    if array.dtype != np.int16 or array.ndim != 1:
        raise RecordingError(f"{path}: samples must be 1-D int16, not {array.ndim}-D {array.dtype}")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(array.astype("<i2").tobytes())


@dataclass(frozen=True)
class RecordedMessage:
    received_at: float  # s since the epoch, when the recorder got it
    topic: str
    payload: bytes


def recording_line(message: RecordedMessage) -> str:
    """One JSON line of a stream recording (without the newline)."""
    entry: dict[str, object] = {"received_at": round(message.received_at, 6),
                                "topic": message.topic}
    try:
        entry["payload"] = message.payload.decode("utf-8")
    except UnicodeDecodeError:
        entry["payload_base64"] = base64.b64encode(message.payload).decode("ascii")
    return json.dumps(entry, ensure_ascii=False)


def read_recording(path: Path | str) -> Iterator[RecordedMessage]:
    """The messages of a stream recording, in file order (blank lines are skipped)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield _recorded_message(line, path, number)
    except OSError as exc:
        raise RecordingError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise RecordingError(f"{path}: not a UTF-8 JSON-lines recording") from None


def _recorded_message(line: str, path: Path, number: int) -> RecordedMessage:
    where = f"{path}:{number}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordingError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(entry, dict):
        raise RecordingError(f"{where}: a recording line must be a JSON object")
    received_at, topic = entry.get("received_at"), entry.get("topic")
    if isinstance(received_at, bool) or not isinstance(received_at, int | float) \
            or not np.isfinite(received_at):
        raise RecordingError(f"{where}: 'received_at' must be a number of seconds")
    if not isinstance(topic, str) or not topic:
        raise RecordingError(f"{where}: 'topic' must be a non-empty string")
    if isinstance(entry.get("payload"), str):
        payload = entry["payload"].encode("utf-8")
    elif isinstance(entry.get("payload_base64"), str):
        try:
            payload = base64.b64decode(entry["payload_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise RecordingError(f"{where}: 'payload_base64' is not base64") from None
    else:
        raise RecordingError(f"{where}: no 'payload' or 'payload_base64' string")
    return RecordedMessage(float(received_at), topic, payload)
