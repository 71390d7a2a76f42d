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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tinyml_core.errors import ModelLoadError, PayloadError
from tinyml_core.keywords import ScanSettings, find_keywords
from tinyml_core.messages import (
    CLIP,
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

from .confirmations import ConfirmationBook, Taking
from .enrollment.store import Enrollments, adaptation_models, enrolled_spotters, version_of
from .ratelimit import NodeRateLimit
from .settings import (
    CollectorOptions,
    enrollment_path,
    journal_path,
    parse_node_keyword_models,
    parse_node_models,
    parse_partition,
    scan_settings,
)
from .windows import ReadyWindow, StepWindow

log = logging.getLogger(__name__)

MAX_NODES = 10_000
# A flood of bad input must not flood the log: at most this many "rejected" lines a minute
# (every rejection still gets its error record and is counted in the stats line).
REJECTIONS_LOGGED_PER_MINUTE = 20
CLIMATE_FILTER = sensor_filter(SensorKind.CLIMATE)
# Per node (least recently heard first), its windows by (step, size).
NodeWindows = OrderedDict[str, dict[tuple[float, int], StepWindow]]


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


class _Handled(NamedTuple):
    """A message handled, to be recorded once the broker has its answers."""

    node_id: str
    kind: str
    seq: int
    time: float
    values: tuple[float, float] | None  # a reading the windows took
    spool: str | None
    fresh: bool  # its node's windows started afresh with it


class Inference:
    """The collector's models and per-node state; :meth:`handle` answers one message."""

    def __init__(self, models_dir: Path | str, forecast_models: tuple[str, ...],
                 keyword_model: str | None, scan: ScanSettings | None = None,
                 max_nodes: int = MAX_NODES, partition: tuple[int, int] = (1, 1),
                 rate_limit: NodeRateLimit | None = None,
                 node_models: dict[str, str] | None = None,
                 confirmations: ConfirmationBook | None = None,
                 node_keyword_models: dict[str, str] | None = None) -> None:
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
        # Nodes answered by another keyword model than the default (one load per model).
        self._node_spotters: dict[str, KeywordSpotter] = {}
        loaded: dict[str, KeywordSpotter] = {} if self.spotter is None else \
            {self.spotter.name: self.spotter}
        for node_id, name in (node_keyword_models or {}).items():
            try:
                if name not in loaded:
                    loaded[name] = load_keyword_spotter(models_dir, name)
                self._node_spotters[node_id] = loaded[name]
            except ModelLoadError as error:
                self.refused[name] = str(error)
                log.error("keyword model refused for node %s: %s", node_id, error)
        self.scan = scan or ScanSettings()
        self.repeated_keywords = 0  # words heard again in the overlap of two events
        # Per node: when and which word was last reported (events overlap in a long sound).
        self._last_word: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.max_nodes = max_nodes
        self.rejections = RejectionLog()
        self.partition = partition
        self.rate_limit = rate_limit
        self.confirmations = confirmations or ConfirmationBook(max_nodes=max_nodes)
        # Taken by handle(), recorded by commit() once the broker acknowledged the answers.
        self._pending: deque[_Handled] = deque()
        self.readings = 0  # readings recorded of the nodes this worker forecasts, repeats too
        # Enrolled nodes answer with their own last layer (collector/enrollment/store.py).
        self._models_dir, self._keyword_model = models_dir, keyword_model
        self.enrollments: Enrollments | None = None
        self._enrolled: dict[str, KeywordSpotter] = {}
        self._enrollment_stamp: tuple[int, int] | None = None
        self.enrollment_file: Path | None = None  # read again by refresh_enrollments()
        self._changed_words: dict[str, tuple[str, ...]] = {}  # take_changed_words()
        # A node's own forecaster replaces the one it was tuned from, for that node only.
        self._own: dict[str, dict[str, Forecaster]] = {}
        for node_id, name in (node_models or {}).items():
            try:
                own = load_forecaster(models_dir, name)
                base = own.entry.get("base_model")
                shipped = {f.name: f for f in self.forecasters}.get(str(base))
                if shipped is None:
                    raise ModelLoadError(f"{name}: tuned from {base!r}, which this collector "
                                         f"does not run ({', '.join(forecast_models)})")
                if own.contract != shipped.contract:
                    raise ModelLoadError(f"{name}: its input/output contract differs from "
                                         f"{base}'s")
                self._own.setdefault(node_id, {})[str(base)] = own
            except ModelLoadError as error:
                self.refused[name] = str(error)
                log.error("model refused for node %s: %s", node_id, error)
        # Forecasters with the same step and window size share one window per node.
        self._by_window: dict[tuple[float, int], list[Forecaster]] = {}
        for forecaster in self.forecasters:
            key = (forecaster.contract.step_s, forecaster.contract.window)
            self._by_window.setdefault(key, []).append(forecaster)
        # Least recently heard nodes are forgotten first.
        self._windows: NodeWindows = OrderedDict()
        # The same windows holding only the readings recorded (answers acknowledged): what a
        # state file saves, so that a reading whose forecast was lost in a crash is forecast
        # again when its node sends it again, not taken for a repeat.
        self._recorded: NodeWindows = OrderedDict()

    def use_enrollments(self, path: Path | None) -> None:
        """Answer the nodes enrolled in ``path`` with their own layers; read it again when it
        changed since the last call (a person added while running needs no restart). A file
        that cannot be used leaves every node as it was, with the reason in the log."""
        if path is None or self.spotter is None:
            return
        try:
            status = path.stat()
            stamp = (status.st_mtime_ns, status.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._enrollment_stamp and self.enrollments is not None:
            return
        self._enrollment_stamp = stamp
        try:
            store = Enrollments.load(path)
        except (OSError, ValueError) as error:
            log.error("enrollments in %s not used: %s", path, error)
            return
        own: dict[str, KeywordSpotter] = {}
        if store.nodes:
            try:
                spotter, anchors = adaptation_models(self._models_dir, self.spotter.name)
            except (ModelLoadError, ValueError) as error:
                log.error("enrollments not used: %s", error)
                return
            own, refused = enrolled_spotters(store, spotter, anchors)
            for reason in refused.values():
                log.error("enrollment not used: %s", reason)
        if own or self._enrolled:
            log.info("enrolled nodes: %s", ", ".join(
                f"{node} ({len(store.nodes[node].people)} people"
                + (f"; its own words: {', '.join(own[node].own_words)})"
                   if own[node].own_words else ")")
                for node in sorted(own)) or "none")
        for node_id in set(own) | set(self._enrolled):
            before = self.node_keywords(node_id)
            after = (own.get(node_id) or self.spotter).keywords
            if before != after:
                self._changed_words[node_id] = tuple(w for w in before if w not in after)
        self.enrollments, self._enrolled = store, own

    def refresh_enrollments(self) -> None:
        """Read the enrollment file again if it changed (the worker's loop calls this)."""
        self.use_enrollments(self.enrollment_file)

    @property
    def repaired_steps(self) -> int:
        """Steps filled by a reading that arrived after newer ones (re-sent after a crash)."""
        return sum(window.repaired for windows in self._windows.values()
                   for window in windows.values())

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
        # Shared clips reach each worker of the group in part: a hole there is another's.
        gap_kinds = frozenset({SensorKind.CLIMATE.value} if options.share_group
                              else {kind.value for kind in SensorKind})
        book = ConfirmationBook(journal=journal_path(options), gap_kinds=gap_kinds)
        inference = cls(options.models_dir, options.forecast_models, options.keyword_model,
                        scan_settings(options), partition=parse_partition(options.partition),
                        rate_limit=rate_limit,
                        node_models=parse_node_models(options.node_models), confirmations=book,
                        node_keyword_models=parse_node_keyword_models(
                            options.node_keyword_models))
        inference.enrollment_file = enrollment_path(options)
        inference.use_enrollments(inference.enrollment_file)
        return inference

    def export_windows(self) -> list[dict[str, Any]]:
        """Every node's windows with the readings recorded so far (:meth:`commit`), least
        recently heard first (see collector/state.py)."""
        return [{"node_id": node_id, **window.to_json()}
                for node_id, windows in self._recorded.items() for window in windows.values()]

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
            self._node_windows(node_id, self._recorded)[key] = StepWindow.from_json(entry)
            restored += 1
        return restored, refused

    def owns(self, node_id: str) -> bool:
        """Whether this worker's partition forecasts ``node_id`` (a stable hash of the id)."""
        index, count = self.partition
        return count == 1 or zlib.crc32(node_id.encode()) % count == index - 1

    @property
    def node_keyword_models(self) -> dict[str, str]:
        """Nodes answered by another keyword model than the default: {node: model}."""
        return {node: spotter.name for node, spotter in self._node_spotters.items()}

    def discovery_names(self, node_id: str | None = None
                        ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The forecasters' names and the words a node's keyword model answers (Home
        Assistant's entities): the model's keywords, and the node's own words if any."""
        return tuple(f.name for f in self.forecasters), self.node_keywords(node_id)

    def node_keywords(self, node_id: str | None) -> tuple[str, ...]:
        spotter = self._node_spotters.get(node_id or "") \
            or self._enrolled.get(node_id or "", self.spotter)
        return spotter.keywords if spotter is not None else ()

    def take_changed_words(self) -> dict[str, tuple[str, ...]]:
        """Nodes whose words changed (a word of their own learned or forgotten) since the
        last call, with the words they no longer answer."""
        changed, self._changed_words = self._changed_words, {}
        return changed

    @property
    def uncommitted(self) -> int:
        """Messages handled and not yet recorded (:meth:`commit`): each :meth:`handle` adds at
        most one."""
        return len(self._pending)

    def commit(self, count: int | None = None) -> None:
        """The broker acknowledged the answers of the oldest ``count`` messages handled (all
        by default): record them as taken (confirmed to their nodes, known as answered after a
        restart, and in the windows a state file saves). Until then a crash loses nothing: the
        message is delivered or sent again, and answered again."""
        count = len(self._pending) if count is None else count
        for _ in range(count):
            handled = self._pending.popleft()
            self.confirmations.record(handled.node_id, handled.kind, handled.seq, handled.time,
                                      handled.values, handled.spool, handled.fresh)
            if handled.fresh:
                self._recorded.pop(handled.node_id, None)
            if handled.values is not None:
                self._add_reading(self._recorded, handled.node_id, handled.time, handled.values)
                self.readings += 1

    def handle(self, topic: str, payload: bytes, now: float | None = None) -> list[Outgoing]:
        """The messages to publish in answer; :meth:`commit` once the broker has them."""
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
        kind = message.kind.value
        taking = self.confirmations.check(message.node_id, kind, message.seq, message.time,
                                          message.spool)
        # A reading the windows took is journalled with its values (restored after a crash).
        values = (message.temperature, message.humidity) if isinstance(message, ClimateReading) \
            and self.forecasters else None
        fresh = (isinstance(message, ClimateReading) and values is not None
                 and taking.restarted and self._goes_back(message))
        out = self._gap_record(message, taking, topic, payload, now) if taking.skipped else []
        if taking.conflict and self.confirmations.conflict_report_due(message.node_id):
            reason = PayloadError(
                f"two nodes are sending as {message.node_id} ({taking.conflict} take turns): "
                "their messages mix in one node's windows and keyword log; give each node its "
                "own [node] id (or stop the second replay)", field="spool")
            out.append(self._error(topic, payload, reason, now, log_it=False))
        try:
            if isinstance(message, ClimateReading):
                out += self._forecast(message)
            elif taking.new:
                out += self._keyword(message)
            # else: a sound event answered before, sent again: confirmed again, not answered
        except PayloadError as error:
            out.append(self._error(topic, payload, error, now))  # its answer: taken all the same
        finally:  # a model's own failure too: checked once, recorded once
            self._pending.append(_Handled(message.node_id, kind, message.seq, message.time,
                                          values, message.spool, fresh))
        return out

    def _goes_back(self, reading: ClimateReading) -> bool:
        """A node that started counting again sends a reading the windows have a step for
        already (a recording replayed again, a clock set back): its windows start afresh with
        it, or it would be a repeat. Live windows are dropped here, recorded ones on commit."""
        windows = self._windows.get(reading.node_id, {})
        if not any(window.holds_time(reading.time) for window in windows.values()):
            return False
        log.warning("%s's new numbering goes back to %s: its windows start afresh",
                    reading.node_id, time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                   time.gmtime(reading.time)))
        del self._windows[reading.node_id]
        return True

    def restore_journalled(self, after: int) -> int:
        """Put the readings journalled after index ``after`` (those the loaded windows lack)
        back in their windows, as before a crash; their forecasts were published then.
        Returns how many."""
        restored = 0
        for entry in self.confirmations.journalled_readings:
            if entry.number <= after or not self.owns(entry.node_id):
                continue
            values = (entry.temperature, entry.humidity)
            for table in (self._windows, self._recorded):  # answered already
                if entry.fresh:
                    table.pop(entry.node_id, None)
                self._add_reading(table, entry.node_id, entry.time, values)
            self.readings += 1
            restored += 1
        self.confirmations.journalled_readings = []
        return restored

    def _gap_record(self, message: ClimateReading | AudioClip, taking: Taking, topic: str,
                    payload: bytes, now: float | None) -> list[Outgoing]:
        """An error record when the node's numbers jumped (at most one per node per
        GAP_REPORT_S, counting every number jumped over since the last)."""
        if not taking.skipped:
            return []
        missing = self.confirmations.gap_report(message.node_id)
        if not missing:
            return []
        highest = message.seq - taking.skipped - 1
        reason = PayloadError(
            f"{message.kind.value} seq jumped from {highest} to {message.seq}: {missing} "
            f"{message.kind.value} messages missing since the last report (lost on the way, or "
            "dropped over the node's rate limit; a node with confirmations sends them again)",
            field="seq")
        return [self._error(topic, payload, reason, now, log_it=False)]

    def _error(self, topic: str, payload: bytes, error: PayloadError,
               now: float | None, log_it: bool = True) -> Outgoing:
        node_id = reporting_node_id(topic)
        if log_it:
            self.rejections.rejected(topic, len(payload), error)
        else:
            log.warning("%s: %s", node_id, error.reason)
        record = ErrorRecord.for_rejected(node_id, now or time.time(), topic, payload, error)
        return Outgoing(errors_topic(node_id), record.encode(), is_error=True)

    def _node_windows(self, node_id: str, table: NodeWindows | None = None
                      ) -> dict[tuple[float, int], StepWindow]:
        table = self._windows if table is None else table
        windows = table.get(node_id)
        if windows is None:
            if len(table) >= self.max_nodes:
                table.popitem(last=False)
            windows = table[node_id] = {}
        table.move_to_end(node_id)
        return windows

    def _add_reading(self, table: NodeWindows, node_id: str, at: float,
                     values: tuple[float, float]) -> None:
        """Add a reading whose forecasts are out already (recorded, or restored)."""
        windows = self._node_windows(node_id, table)
        for key in self._by_window:
            windows.setdefault(key, StepWindow(*key)).add(at, *values)

    def _forecast(self, reading: ClimateReading) -> list[Outgoing]:
        if not self.forecasters:
            return []
        windows = self._node_windows(reading.node_id)
        own = self._own.get(reading.node_id, {})
        out = []
        for key, forecasters in self._by_window.items():
            forecasters = [own.get(f.name, f) for f in forecasters]
            window = windows.setdefault(key, StepWindow(*key))
            for ready in window.add(reading.time, reading.temperature, reading.humidity):
                # A window repaired by a late reading is older than the retained forecast.
                newest = ready.end_time >= max(window.forecast_ends) * window.step_s
                out += [self._run_forecaster(f, ready, reading.node_id, newest)
                        for f in forecasters]
        return out

    def _run_forecaster(self, forecaster: Forecaster, window: ReadyWindow,
                        node_id: str, retain: bool) -> Outgoing:
        started = time.perf_counter()
        predicted = forecaster.predict(window.inputs, np.array([window.end_time]))[0]
        latency_ms = (time.perf_counter() - started) * 1000
        if not np.isfinite(predicted).all():
            raise PayloadError(f"{forecaster.name} produced a non-finite forecast")
        last, step_s = window.end_time, forecaster.contract.step_s
        # A thousandth of a degree or percent is far below the models' error; shorter numbers
        # also halve the JSON encoding time.
        values = np.round(predicted.astype(np.float64), 3).tolist()
        steps = tuple(ForecastStep(last + (i + 1) * step_s, t, h)
                      for i, (t, h) in enumerate(values))
        forecast = Forecast(node_id, forecaster.name, model_version(forecaster.entry), last,
                            round(latency_ms, 3), steps, filled_steps=window.filled_steps)
        return Outgoing(prediction_topic(node_id, PredictionKind.FORECAST), forecast.encode(),
                        retain=retain)

    def _keyword(self, clip: AudioClip) -> list[Outgoing]:
        """One result per word found in the event, or one ``unknown`` when there is none.
        A word found again in the overlap of the next event (a long sound is cut with an
        overlap) is not reported twice."""
        if self.spotter is None and clip.node_id not in self._node_spotters:
            return []
        own = self._node_spotters.get(clip.node_id)
        spotter = own or self._enrolled.get(clip.node_id, self.spotter)
        assert spotter is not None
        enrolled = self.enrollments.nodes.get(clip.node_id) if own is None \
            and spotter is not self.spotter and self.enrollments is not None else None
        version = version_of(spotter, enrolled)
        started = time.perf_counter()
        detections, scanned = find_keywords(spotter, clip.samples, clip.sample_rate, self.scan,
                                            clip=clip.capture == CLIP)
        latency_ms = (time.perf_counter() - started) * 1000
        labels = spotter.labels
        out = []
        for detection in detections:
            at = clip.time + detection.offset_s
            if detection.label != UNKNOWN_LABEL and self._heard_before(clip.node_id, at,
                                                                       detection.label):
                self.repeated_keywords += 1
                continue
            result = KeywordResult(
                clip.node_id, spotter.name, version, at,
                latency_ms, min(scanned.inference_ms, latency_ms), detection.label,
                {name: float(p) for name, p in zip(labels, detection.probabilities, strict=True)})
            out.append(Outgoing(prediction_topic(clip.node_id, PredictionKind.KEYWORD),
                                result.encode()))
        return out

    def _heard_before(self, node_id: str, at: float, label: str) -> bool:
        last = self._last_word.get(node_id)
        if last is not None and last[1] == label and abs(at - last[0]) < self.scan.refractory_s:
            return True
        self._last_word[node_id] = (at, label)
        self._last_word.move_to_end(node_id)
        if len(self._last_word) > self.max_nodes:
            self._last_word.popitem(last=False)
        return False
