"""What the dashboard remembers: a bounded history per node, in memory.

Every message of the protocol goes through :meth:`History.add`, which decodes it with the
shared codec (anything that does not decode is counted and ignored), keeps it, and returns the
event to push to open pages. Readings are averaged per ``step_s`` (the forecasters' 10-minute
step, so the chart holds 288 points for 48 hours, whatever the node's reading period). Bounds:
steps and forecasts for ``hours`` of node time, the last ``keywords`` keyword results and
``errors`` error records per node, ``max_nodes`` nodes (the least recently heard go first).
A message heard twice (QoS 1 after a reconnect, a retained forecast on resubscribing) is kept
once.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from tinyml_core.errors import PayloadError
from tinyml_core.messages import (
    Availability,
    ClimateReading,
    ErrorRecord,
    Forecast,
    KeywordResult,
    decode_message,
)


@dataclass
class NodeHistory:
    node_id: str
    steps: dict[int, list[float]] = field(default_factory=dict)  # step → [ΣT, ΣRH, count]
    last_reading: tuple[float, float, float] | None = None  # (time, T, RH) of the newest
    reading_times: set[float] = field(default_factory=set)  # of the last steps: repeats
    forecasts: dict[tuple[str, float], dict[str, Any]] = field(default_factory=dict)
    keywords: deque[dict[str, Any]] = field(default_factory=deque)
    errors: deque[dict[str, Any]] = field(default_factory=deque)
    error_count: int = 0
    heard_at: float = 0.0  # time.time() of the last message about it


REPEAT_STEPS = 2  # steps of reading times remembered to recognise a repeat


class History:
    def __init__(self, hours: float = 48.0, keywords: int = 200, errors: int = 200,
                 max_nodes: int = 1000, step_s: float = 600.0) -> None:
        self.span_s, self.step_s = hours * 3600.0, step_s
        self.keywords, self.errors, self.max_nodes = keywords, errors, max_nodes
        self.undecodable = 0
        # Retained availability of every client; a client with readings, predictions or error
        # records is a node, the others (collectors, recorders) are listed apart.
        self.statuses: dict[str, str] = {}
        self._nodes: OrderedDict[str, NodeHistory] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, topic: str, payload: bytes, now: float | None = None) -> dict[str, Any] | None:
        """Keep one message; returns the event for live pages, None if nothing changed."""
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
        newest = max(node.steps, default=step)
        if step < newest - self.span_s / self.step_s:
            return None  # older than what is shown
        node.reading_times.add(reading.time)
        bucket = node.steps.setdefault(step, [0.0, 0.0, 0])
        bucket[0] += reading.temperature
        bucket[1] += reading.humidity
        bucket[2] += 1
        if node.last_reading is None or reading.time >= node.last_reading[0]:
            node.last_reading = (reading.time, reading.temperature, reading.humidity)
        if step > newest:
            oldest = step - self.span_s / self.step_s
            for old in [s for s in node.steps if s < oldest]:
                del node.steps[old]
            # Repeats come right after a reconnect: remembering two steps' readings is enough.
            recent = (step - REPEAT_STEPS) * self.step_s
            node.reading_times = {t for t in node.reading_times if t > recent}
        return {"kind": "reading", "node_id": node.node_id, "time": reading.time,
                "temperature": reading.temperature, "humidity": reading.humidity,
                "step_time": step * self.step_s, "step": _mean(bucket)}

    def _forecast(self, node: NodeHistory, forecast: Forecast) -> dict[str, Any] | None:
        key = (forecast.model, forecast.input_time)
        if key in node.forecasts:
            return None
        entry = {"model": forecast.model, "input_time": forecast.input_time,
                 "filled_steps": forecast.filled_steps,
                 "steps": [[s.time, s.temperature, s.humidity] for s in forecast.steps]}
        node.forecasts[key] = entry
        newest = max(t for _, t in node.forecasts)
        for old in [k for k in node.forecasts if k[1] < newest - self.span_s]:
            del node.forecasts[old]
        return {"kind": "forecast", "node_id": node.node_id, **entry}

    def _keyword(self, node: NodeHistory, result: KeywordResult) -> dict[str, Any] | None:
        entry = {"time": result.input_time, "label": result.label, "model": result.model,
                 "probability": result.probability}
        if entry in node.keywords:
            return None
        node.keywords.append(entry)
        while len(node.keywords) > self.keywords:
            node.keywords.popleft()
        return {"kind": "keyword", "node_id": node.node_id, **entry}

    def _error(self, node: NodeHistory, record: ErrorRecord) -> dict[str, Any] | None:
        entry = {"time": record.time, "topic": record.topic, "reason": record.reason,
                 "field": record.field}
        if entry in node.errors:
            return None
        node.errors.append(entry)
        node.error_count += 1
        while len(node.errors) > self.errors:
            node.errors.popleft()
        return {"kind": "error", "node_id": node.node_id, **entry}

    def _node(self, node_id: str, now: float) -> NodeHistory:
        node = self._nodes.get(node_id)
        if node is None:
            if len(self._nodes) >= self.max_nodes:
                self._nodes.popitem(last=False)
            node = self._nodes[node_id] = NodeHistory(node_id)
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
                "steps": [[step * self.step_s, *_mean(bucket)]
                          for step, bucket in sorted(node.steps.items())],
                "forecasts": sorted(node.forecasts.values(),
                                    key=lambda f: (f["input_time"], f["model"])),
                "keywords": list(node.keywords), "errors": list(node.errors)}

    def __len__(self) -> int:
        return len(self._nodes)

    def _summary(self, node: NodeHistory) -> dict[str, Any]:
        last = node.last_reading
        latest = max(node.forecasts.values(), key=lambda f: f["input_time"], default=None)
        return {"node_id": node.node_id, "status": self.statuses.get(node.node_id),
                "heard_at": node.heard_at,
                "reading": None if last is None else {"time": last[0], "temperature": last[1],
                                                      "humidity": last[2]},
                "forecast": latest, "keyword": node.keywords[-1] if node.keywords else None,
                "error_count": node.error_count}


def _mean(bucket: list[float]) -> list[float]:
    return [round(bucket[0] / bucket[2], 3), round(bucket[1] / bucket[2], 3)]
