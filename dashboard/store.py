"""What the dashboard remembers: a bounded history per node, in memory (dashboard/state.py
keeps it across restarts).

Every message of the protocol goes through :meth:`History.add`, which decodes it with the
shared codec (anything that does not decode is counted and ignored), keeps it, and returns the
event to push to open pages. Readings are averaged per ``step_s`` (the forecasters' 10-minute
step, so the chart holds 288 points for 48 hours, whatever the node's reading period). Bounds:
steps for ``hours`` and forecasts for ``forecast_hours`` of node time (the chart draws those
ahead of the readings they were made from), the last ``keywords`` keyword results and
``errors`` error records per node, ``max_nodes`` nodes (the least recently heard go first).
A message heard twice (QoS 1 after a reconnect, a retained forecast on resubscribing) is kept
once.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinyml_core.errors import PayloadError
from tinyml_core.messages import (
    UNKNOWN_LABEL,
    Availability,
    ClimateReading,
    ErrorRecord,
    Forecast,
    KeywordResult,
    decode_message,
)
from tinyml_core.topics import validate_id


class StepRing:
    """Sums of temperature, humidity and count per step for the last ``size`` steps, in two
    numpy arrays (about 32 bytes a step: 500 nodes x 48 h is under 5 MB)."""

    def __init__(self, size: int) -> None:
        self.ids = np.full(size, -1, np.int64)
        self.sums = np.zeros((size, 3))

    def add(self, step: int, temperature: float, humidity: float) -> list[float] | None:
        """Add a reading to its step; None when the step is older than the ring holds."""
        slot = step % len(self.ids)
        if self.ids[slot] != step:
            if self.ids[slot] > step:
                return None
            self.ids[slot] = step
            self.sums[slot] = 0.0
        self.sums[slot] += (temperature, humidity, 1.0)
        return _mean(self.sums[slot])

    @property
    def newest(self) -> int:
        return int(self.ids.max())

    def items(self) -> list[tuple[int, list[float]]]:
        """(step, [mean T, mean RH]) from oldest to newest."""
        order = np.argsort(self.ids)
        return [(int(self.ids[i]), _mean(self.sums[i])) for i in order if self.ids[i] >= 0]


@dataclass
class NodeHistory:
    node_id: str
    steps: StepRing
    last_reading: tuple[float, float, float] | None = None  # (time, T, RH) of the newest
    reading_times: set[float] = field(default_factory=set)  # of the last steps: repeats
    # (model, input time) → (filled steps, [time, T, RH, time, T, RH, ...]) for the last hours
    forecasts: dict[tuple[str, float], tuple[int, array[float]]] = field(default_factory=dict)
    keywords: deque[dict[str, Any]] = field(default_factory=deque)
    errors: deque[dict[str, Any]] = field(default_factory=deque)
    error_count: int = 0
    heard_at: float = 0.0  # time.time() of the last message about it


REPEAT_STEPS = 2  # steps of reading times remembered to recognise a repeat


class History:
    def __init__(self, hours: float = 48.0, keywords: int = 200, errors: int = 200,
                 max_nodes: int = 1000, step_s: float = 600.0,
                 forecast_hours: float = 6.0) -> None:
        self.span_s, self.step_s = hours * 3600.0, step_s
        self.forecast_span_s = min(forecast_hours, hours) * 3600.0
        self.keywords, self.errors, self.max_nodes = keywords, errors, max_nodes
        self.undecodable = 0
        # Retained availability of every client; a client with readings, predictions or error
        # records is a node, the others (collectors, recorders) are listed apart.
        self.statuses: dict[str, str] = {}
        self._nodes: OrderedDict[str, NodeHistory] = OrderedDict()
        self._lock = threading.Lock()
        self.changes = 0  # messages that changed the history (a save is due when it moves)

    def add(self, topic: str, payload: bytes, now: float | None = None) -> dict[str, Any] | None:
        """Keep one message; returns the event for live pages, None if nothing changed."""
        event = self._add(topic, payload, now)
        self.changes += event is not None
        return event

    def _add(self, topic: str, payload: bytes, now: float | None) -> dict[str, Any] | None:
        try:
            message = decode_message(topic, payload)
        except PayloadError:
            self.undecodable += 1
            return None
        now = time.time() if now is None else now
        with self._lock:
            if isinstance(message, Availability):
                client_id = topic.split("/", 1)[1]
                if self.statuses.get(client_id) == message.value:
                    return None
                self.statuses[client_id] = message.value
                return {"kind": "status", "client_id": client_id, "status": message.value}
            node = self._node(message.node_id, now)
            if isinstance(message, ClimateReading):
                return self._reading(node, message)
            if isinstance(message, Forecast):
                return self._forecast(node, message)
            if isinstance(message, KeywordResult):
                return self._keyword(node, message)
            if isinstance(message, ErrorRecord):
                return self._error(node, message)
        return None  # audio clips and confirmations are not shown

    # --- one kind each ---------------------------------------------------------------------
    def _reading(self, node: NodeHistory, reading: ClimateReading) -> dict[str, Any] | None:
        if reading.time in node.reading_times:
            return None  # heard twice
        step = math.ceil(reading.time / self.step_s - 1e-9)  # as the collector aligns them
        newest = node.steps.newest
        mean = node.steps.add(step, reading.temperature, reading.humidity)
        if mean is None:
            return None  # older than what is shown
        node.reading_times.add(reading.time)
        if node.last_reading is None or reading.time >= node.last_reading[0]:
            node.last_reading = (reading.time, reading.temperature, reading.humidity)
        if step > newest:
            # Repeats come right after a reconnect: remembering two steps' readings is enough.
            recent = (step - REPEAT_STEPS) * self.step_s
            node.reading_times = {t for t in node.reading_times if t > recent}
        return {"kind": "reading", "node_id": node.node_id, "time": reading.time,
                "temperature": reading.temperature, "humidity": reading.humidity,
                "step_time": step * self.step_s, "step": mean}

    def _forecast(self, node: NodeHistory, forecast: Forecast) -> dict[str, Any] | None:
        key = (sys.intern(forecast.model), forecast.input_time)
        if key in node.forecasts:
            return None
        values = array("d", [x for s in forecast.steps for x in (s.time, s.temperature,
                                                                   s.humidity)])
        node.forecasts[key] = (forecast.filled_steps, values)
        cutoff = forecast.input_time - self.forecast_span_s
        if len(node.forecasts) > 1 and min(t for _, t in node.forecasts) < cutoff:
            for old in [k for k in node.forecasts if k[1] < cutoff]:
                del node.forecasts[old]
        return {"kind": "forecast", "node_id": node.node_id, **_forecast(key, node.forecasts[key])}

    def _keyword(self, node: NodeHistory, result: KeywordResult) -> dict[str, Any] | None:
        closest, probability = result.closest  # for "unknown": the word that came closest
        return _logged(node, "keyword", node.keywords, {
            "time": result.input_time, "label": result.label, "model": result.model,
            "probability": result.probability if result.label != UNKNOWN_LABEL else probability,
            "closest": closest if result.label == UNKNOWN_LABEL else None})

    def _error(self, node: NodeHistory, record: ErrorRecord) -> dict[str, Any] | None:
        event = _logged(node, "error", node.errors, {
            "time": record.time, "topic": record.topic, "reason": record.reason,
            "field": record.field})
        node.error_count += event is not None
        return event

    def _node(self, node_id: str, now: float) -> NodeHistory:
        node = self._nodes.get(node_id)
        if node is None:
            if len(self._nodes) >= self.max_nodes:
                self._nodes.popitem(last=False)
            node = self._nodes[node_id] = NodeHistory(
                node_id, StepRing(int(self.span_s / self.step_s) + 1),
                keywords=deque(maxlen=self.keywords), errors=deque(maxlen=self.errors))
        self._nodes.move_to_end(node_id)
        node.heard_at = now
        return node

    # --- what pages and the API show -----------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        with self._lock:
            nodes = [self._summary(node) for node in self._nodes.values()]
            others = {c: s for c, s in sorted(self.statuses.items()) if c not in self._nodes}
            return {"nodes": sorted(nodes, key=lambda n: n["node_id"]), "clients": others,
                    "undecodable": self.undecodable}

    def node(self, node_id: str) -> dict[str, Any] | None:
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None:
                return None
            return self._summary(node) | {
                "steps": [[step * self.step_s, *mean] for step, mean in node.steps.items()],
                "forecasts": [_forecast(key, node.forecasts[key])
                              for key in sorted(node.forecasts, key=lambda k: (k[1], k[0]))],
                "keywords": list(node.keywords), "errors": list(node.errors)}

    def __len__(self) -> int:
        return len(self._nodes)

    # --- across restarts (dashboard/state.py writes and reads the file) ---------------------
    def export(self) -> dict[str, Any]:
        """Every node's history, least recently heard first, as JSON-ready data. Statuses are
        left out: the broker's retained ones arrive again on subscribing."""
        with self._lock:
            return {"step_s": self.step_s, "nodes": [_exported(node) for node in
                                                      self._nodes.values()]}

    def restore(self, document: dict[str, Any]) -> tuple[int, list[str]]:
        """Take nodes saved by :meth:`export` (within this history's bounds); how many, and
        why the others were refused."""
        if document.get("step_s") != self.step_s:
            return 0, [f"saved with {document.get('step_s')!r} s steps, this dashboard "
                       f"uses {self.step_s:g} s"]
        restored, refused = 0, []
        nodes = document.get("nodes")
        for saved in (nodes if isinstance(nodes, list) else [])[-self.max_nodes:]:
            try:
                node = self._restored(saved)
            except (PayloadError, KeyError, TypeError, ValueError, IndexError) as error:
                refused.append(f"malformed node: {error!r}")
                continue
            with self._lock:
                self._nodes.pop(node.node_id, None)
                self._nodes[node.node_id] = node
                while len(self._nodes) > self.max_nodes:
                    self._nodes.popitem(last=False)
            restored += 1
        return restored, refused

    def _restored(self, saved: dict[str, Any]) -> NodeHistory:
        node_id = saved["node_id"]
        validate_id(node_id)
        ring = StepRing(int(self.span_s / self.step_s) + 1)
        steps = sorted((int(step), float(t), float(h), float(n))
                       for step, t, h, n in saved["steps"])
        for step, t_sum, h_sum, count in steps[-len(ring.ids):]:
            if not count > 0 or not all(map(math.isfinite, (t_sum, h_sum))):
                raise ValueError(f"step {step} is not a sum of readings")
            ring.ids[step % len(ring.ids)] = step
            ring.sums[step % len(ring.ids)] = (t_sum, h_sum, count)
        last = saved["last_reading"]
        forecasts = {}
        for model, input_time, filled, values in saved["forecasts"]:
            if len(values) % 3 or not all(math.isfinite(float(v)) for v in values):
                raise ValueError(f"forecast of {model} is not [time, T, RH] steps")
            forecasts[(sys.intern(str(model)), float(input_time))] = (
                int(filled), array("d", map(float, values)))
        return NodeHistory(
            node_id, ring,
            last_reading=None if last is None else (float(last[0]), float(last[1]),
                                                    float(last[2])),
            reading_times={float(t) for t in saved["reading_times"]}, forecasts=forecasts,
            keywords=deque(_entries(saved["keywords"]), maxlen=self.keywords),
            errors=deque(_entries(saved["errors"]), maxlen=self.errors),
            error_count=int(saved["error_count"]), heard_at=float(saved["heard_at"]))

    def _summary(self, node: NodeHistory) -> dict[str, Any]:
        last = node.last_reading
        newest = max(node.forecasts, key=lambda k: k[1], default=None)
        latest = None if newest is None else _forecast(newest, node.forecasts[newest])
        return {"node_id": node.node_id, "status": self.statuses.get(node.node_id),
                "heard_at": node.heard_at,
                "reading": None if last is None else {"time": last[0], "temperature": last[1],
                                                      "humidity": last[2]},
                "forecast": latest, "keyword": node.keywords[-1] if node.keywords else None,
                "error_count": node.error_count}


def _exported(node: NodeHistory) -> dict[str, Any]:
    return {"node_id": node.node_id,
            "steps": [[int(step), *map(float, sums)] for step, sums in
                      zip(node.steps.ids, node.steps.sums, strict=True) if step >= 0],
            "last_reading": node.last_reading, "reading_times": sorted(node.reading_times),
            "forecasts": [[model, input_time, filled, list(values)]
                          for (model, input_time), (filled, values) in node.forecasts.items()],
            "keywords": list(node.keywords), "errors": list(node.errors),
            "error_count": node.error_count, "heard_at": node.heard_at}


def _entries(saved: Any) -> list[dict[str, Any]]:
    """A saved keyword or error log: a list of JSON objects."""
    if not isinstance(saved, list) or not all(isinstance(entry, dict) for entry in saved):
        raise ValueError("a log must be a list of objects")
    return saved


def _logged(node: NodeHistory, kind: str, log: deque[dict[str, Any]],
            entry: dict[str, Any]) -> dict[str, Any] | None:
    """Keep ``entry`` in a bounded log (oldest out) unless it is a repeat; the live event."""
    if entry in log:
        return None
    log.append(entry)
    return {"kind": kind, "node_id": node.node_id, **entry}


def _mean(bucket: Any) -> list[float]:
    return [round(float(bucket[0] / bucket[2]), 3), round(float(bucket[1] / bucket[2]), 3)]


def _forecast(key: tuple[str, float], stored: tuple[int, array[float]]) -> dict[str, Any]:
    filled, values = stored
    return {"model": key[0], "input_time": key[1], "filled_steps": filled,
            "steps": [list(values[i:i + 3]) for i in range(0, len(values), 3)]}
