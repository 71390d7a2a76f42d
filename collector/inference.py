"""What the collector does with one message, without MQTT: decode, align, infer, answer.

:class:`Inference` takes (topic, payload) and returns the messages to publish: forecasts
when a node's window of aligned readings is full, a keyword result per clip, an error
record for anything that does not follow docs/protocol.md. It never raises on bad input,
and its memory is bounded: one window per node, for at most ``max_nodes`` nodes.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyml_core.errors import ModelLoadError, PayloadError
from tinyml_core.messages import (
    UNKNOWN_LABEL,
    AudioClip,
    ClimateReading,
    ErrorRecord,
    Forecast,
    ForecastStep,
    KeywordResult,
    decode_sensor_message,
)
from tinyml_core.models import (
    Forecaster,
    KeywordSpotter,
    load_forecaster,
    load_keyword_spotter,
    model_version,
)
from tinyml_core.topics import (
    PredictionKind,
    SensorKind,
    errors_topic,
    matches,
    prediction_topic,
    reporting_node_id,
    sensor_filter,
    validate_id,
)

from .ratelimit import NodeRateLimit
from .settings import CollectorOptions, parse_partition

log = logging.getLogger(__name__)

MAX_NODES = 10_000
# A flood of bad input must not flood the log: at most this many "rejected" lines a minute
# (every rejection still gets its error record and is counted in the stats line).
REJECTIONS_LOGGED_PER_MINUTE = 20
CLIMATE_FILTER = sensor_filter(SensorKind.CLIMATE)


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    retain: bool = False
    is_error: bool = False


class RejectionLog:
    """Logs rejected input, at most ``limit`` lines per ``period_s``; then says how many it
    left out."""

    def __init__(self, limit: int = REJECTIONS_LOGGED_PER_MINUTE, period_s: float = 60.0) -> None:
        self.limit, self.period_s = limit, period_s
        self.period_start = -math.inf
        self.logged = self.suppressed = 0

    def rejected(self, topic: str, size: int, error: PayloadError) -> None:
        now = time.monotonic()
        if now - self.period_start >= self.period_s:
            if self.suppressed:
                log.warning("%d more rejected payloads were not logged", self.suppressed)
            self.period_start, self.logged, self.suppressed = now, 0, 0
        if self.logged < self.limit:
            self.logged += 1
            log.warning("rejected %s (%d bytes): %s", topic[:120], size, error)
            if self.logged == self.limit:
                log.warning("more than %d rejected payloads this minute: logging no more of "
                            "them until the next (see errors/# for each one)", self.limit)
        else:
            self.suppressed += 1


@dataclass
class StepWindow:
    """One node's readings aligned to a model step.

    Step k covers (k·step − step, k·step] and is stamped k·step. Readings in one step are
    averaged; a step is complete when a reading of a later step arrives, or at once when a
    reading falls exactly on its end (as recorded 10-minute data does). A missing step
    empties the window: a forecast never rests on a gap.
    """

    step_s: float
    size: int
    values: deque[tuple[float, float, float]] = field(default_factory=deque)
    open_step: int | None = None
    open_sum: list[float] = field(default_factory=lambda: [0.0, 0.0])
    open_count: int = 0
    closed_step: int | None = None
    late: int = 0

    def add(self, time_s: float, temperature: float, humidity: float) -> bool:
        """Add a reading; True when a step was completed (the window may then be full)."""
        step = math.ceil(time_s / self.step_s - 1e-9)
        if (self.closed_step is not None and step <= self.closed_step) or \
                (self.open_step is not None and step < self.open_step):
            self.late += 1  # out of order or a redelivery: its step is already averaged
            return False
        completed = self.open_step is not None and step > self.open_step and self._close()
        self.open_step = step
        self.open_sum[0] += temperature
        self.open_sum[1] += humidity
        self.open_count += 1
        if math.isclose(time_s, step * self.step_s, abs_tol=1e-6):
            completed = self._close()
        return completed

    def _close(self) -> bool:
        assert self.open_step is not None and self.open_count
        if self.closed_step is not None and self.open_step != self.closed_step + 1:
            self.values.clear()  # a missing step breaks the window
        self.values.append((self.open_step * self.step_s, self.open_sum[0] / self.open_count,
                            self.open_sum[1] / self.open_count))
        while len(self.values) > self.size:
            self.values.popleft()
        self.closed_step = self.open_step
        self.open_step, self.open_sum, self.open_count = None, [0.0, 0.0], 0
        return True

    @property
    def full(self) -> bool:
        return len(self.values) == self.size

    def array(self) -> np.ndarray:
        return np.array([[t, h] for _, t, h in self.values], dtype=np.float32)[None]

    @property
    def last_time(self) -> float:
        return self.values[-1][0]

    def to_json(self) -> dict[str, Any]:
        """What a restarted collector needs to carry on: the averaged steps with their times,
        and the step still being averaged."""
        return {"step_s": self.step_s, "size": self.size,
                "values": [list(value) for value in self.values],
                "closed_step": self.closed_step, "open_step": self.open_step,
                "open_sum": list(self.open_sum), "open_count": self.open_count}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepWindow:
        """The inverse of :meth:`to_json`; ValueError when ``data`` is not a consistent window."""
        try:
            window = cls(float(data["step_s"]), int(data["size"]))
            closed, opened = data["closed_step"], data["open_step"]
            values = [(float(t), float(temperature), float(humidity))
                      for t, temperature, humidity in data["values"]]
            open_sum = [float(x) for x in data["open_sum"]]
            open_count = int(data["open_count"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a window: {error!r}") from None
        numbers = [x for value in values for x in value] + open_sum + [window.step_s]
        if not all(math.isfinite(x) for x in numbers) or window.step_s <= 0:
            raise ValueError("a window holds a non-finite number")
        if not (closed is None or type(closed) is int) or \
                not (opened is None or type(opened) is int):
            raise ValueError("step numbers are not integers")
        if len(values) > window.size or len(open_sum) != 2 or \
                (opened is None) != (open_count == 0) or open_count < 0:
            raise ValueError("the window's counts do not fit together")
        if values and (closed is None or any(
                not math.isclose(t, (closed - len(values) + 1 + i) * window.step_s)
                for i, (t, _, _) in enumerate(values))):
            raise ValueError("the window's steps are not consecutive up to its last step")
        if opened is not None and closed is not None and opened <= closed:
            raise ValueError("the open step is not after the last closed one")
        window.values.extend(values)
        window.closed_step, window.open_step = closed, opened
        window.open_sum, window.open_count = open_sum, open_count
        return window


class Inference:
    """The collector's models and per-node state; :meth:`handle` answers one message."""

    def __init__(self, models_dir: Path | str, forecast_models: tuple[str, ...],
                 keyword_model: str | None, confidence_floor: float = 0.0,
                 max_nodes: int = MAX_NODES, partition: tuple[int, int] = (1, 1),
                 rate_limit: NodeRateLimit | None = None) -> None:
        self.forecasters: list[Forecaster] = []
        self.spotter: KeywordSpotter | None = None
        self.refused: dict[str, str] = {}
        for name in forecast_models:
            try:
                self.forecasters.append(load_forecaster(models_dir, name))
            except ModelLoadError as error:
                self.refused[name] = str(error)
                log.error("model refused: %s", error)
        if keyword_model:
            try:
                self.spotter = load_keyword_spotter(models_dir, keyword_model)
            except ModelLoadError as error:
                self.refused[keyword_model] = str(error)
                log.error("model refused: %s", error)
        self.confidence_floor = confidence_floor
        self.max_nodes = max_nodes
        self.rejections = RejectionLog()
        self.partition = partition
        self.rate_limit = rate_limit
        # Forecasters with the same step and window size share one window per node.
        self._by_window: dict[tuple[float, int], list[Forecaster]] = {}
        for forecaster in self.forecasters:
            key = (forecaster.contract.step_s, forecaster.contract.window)
            self._by_window.setdefault(key, []).append(forecaster)
        # Least recently heard nodes are forgotten first.
        self._windows: OrderedDict[str, dict[tuple[float, int], StepWindow]] = OrderedDict()

    @property
    def repeated_readings(self) -> int:
        """Readings ignored because their step was already averaged: QoS 1 redeliveries
        (after a broker or collector restart) and out-of-order arrivals."""
        return sum(window.late for windows in self._windows.values()
                   for window in windows.values())

    @classmethod
    def from_options(cls, options: CollectorOptions) -> Inference:
        rate_limit = None
        if options.rate_limit_per_s > 0:
            rate_limit = NodeRateLimit(options.rate_limit_per_s, options.rate_limit_burst,
                                       options.rate_limit_report_s)
        return cls(options.models_dir, options.forecast_models, options.keyword_model,
                   options.confidence_floor, partition=parse_partition(options.partition),
                   rate_limit=rate_limit)

    def export_windows(self) -> list[dict[str, Any]]:
        """Every node's windows, least recently heard first (see collector/state.py)."""
        return [{"node_id": node_id, **window.to_json()}
                for node_id, windows in self._windows.items() for window in windows.values()]

    def restore_windows(self, entries: list[Any]) -> tuple[int, list[str]]:
        """Take windows saved by :meth:`export_windows`; returns how many were restored and why
        the others were refused (malformed, or no configured forecaster uses their shape)."""
        restored, refused = 0, []
        for entry in entries:
            try:
                node_id = entry["node_id"]
                validate_id(node_id)
                window = StepWindow.from_json(entry)
            except (PayloadError, ValueError, TypeError, KeyError) as error:
                refused.append(f"malformed window: {error}")
                continue
            key = (window.step_s, window.size)
            if key not in self._by_window:
                refused.append(f"{node_id}: no configured forecaster has a {window.size} x "
                               f"{window.step_s:g} s window")
                continue
            self._node_windows(node_id)[key] = window
            restored += 1
        return restored, refused

    def owns(self, node_id: str) -> bool:
        """Whether this worker's partition forecasts ``node_id`` (a stable hash of the id)."""
        index, count = self.partition
        return count == 1 or zlib.crc32(node_id.encode()) % count == index - 1

    def handle(self, topic: str, payload: bytes, now: float | None = None) -> list[Outgoing]:
        if (self.partition[1] > 1 and matches(CLIMATE_FILTER, topic)
                and not self.owns(reporting_node_id(topic))):
            return []  # another worker keeps this node's window (and reports its errors)
        if self.rate_limit is not None:
            admission = self.rate_limit.admit(reporting_node_id(topic))
            if not admission.admitted:
                if not admission.report:
                    return []
                reason = PayloadError(self.rate_limit.reason(admission.report))
                return [self._error(topic, payload, reason, now)]
        try:
            message = decode_sensor_message(topic, payload)
        except PayloadError as error:
            return [self._error(topic, payload, error, now)]
        try:
            if isinstance(message, ClimateReading):
                return self._forecast(message)
            return self._keyword(message)
        except PayloadError as error:
            return [self._error(topic, payload, error, now)]

    def _error(self, topic: str, payload: bytes, error: PayloadError,
               now: float | None) -> Outgoing:
        node_id = reporting_node_id(topic)
        self.rejections.rejected(topic, len(payload), error)
        record = ErrorRecord.for_rejected(node_id, now or time.time(), topic, payload, error)
        return Outgoing(errors_topic(node_id), record.encode(), is_error=True)

    def _node_windows(self, node_id: str) -> dict[tuple[float, int], StepWindow]:
        windows = self._windows.get(node_id)
        if windows is None:
            if len(self._windows) >= self.max_nodes:
                self._windows.popitem(last=False)
            windows = self._windows[node_id] = {}
        self._windows.move_to_end(node_id)
        return windows

    def _forecast(self, reading: ClimateReading) -> list[Outgoing]:
        if not self.forecasters:
            return []
        windows = self._node_windows(reading.node_id)
        out = []
        for key, forecasters in self._by_window.items():
            window = windows.setdefault(key, StepWindow(*key))
            if window.add(reading.time, reading.temperature, reading.humidity) and window.full:
                out += [self._run_forecaster(f, window, reading.node_id) for f in forecasters]
        return out

    def _run_forecaster(self, forecaster: Forecaster, window: StepWindow,
                        node_id: str) -> Outgoing:
        started = time.perf_counter()
        predicted = forecaster.predict(window.array())[0]
        latency_ms = (time.perf_counter() - started) * 1000
        if not np.isfinite(predicted).all():
            raise PayloadError(f"{forecaster.name} produced a non-finite forecast")
        last, step_s = window.last_time, forecaster.contract.step_s
        # A thousandth of a degree or percent is far below the models' error; shorter numbers
        # also halve the JSON encoding time.
        values = np.round(predicted.astype(np.float64), 3).tolist()
        steps = tuple(ForecastStep(last + (i + 1) * step_s, t, h)
                      for i, (t, h) in enumerate(values))
        forecast = Forecast(node_id, forecaster.name, model_version(forecaster.entry), last,
                            round(latency_ms, 3), steps)
        return Outgoing(prediction_topic(node_id, PredictionKind.FORECAST), forecast.encode(),
                        retain=True)

    def _keyword(self, clip: AudioClip) -> list[Outgoing]:
        if self.spotter is None:
            return []
        started = time.perf_counter()
        probabilities = self.spotter.classify(clip.samples, clip.sample_rate)
        latency_ms = (time.perf_counter() - started) * 1000
        best = int(np.argmax(probabilities))
        label = self.spotter.labels[best]
        if probabilities[best] < self.confidence_floor:
            label = UNKNOWN_LABEL
        result = KeywordResult(
            clip.node_id, self.spotter.name, model_version(self.spotter.entry), clip.time,
            latency_ms, self.spotter.model.last_invoke_ms, label,
            {name: float(p) for name, p in zip(self.spotter.labels, probabilities, strict=True)})
        return [Outgoing(prediction_topic(clip.node_id, PredictionKind.KEYWORD), result.encode())]
