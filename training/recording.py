"""A node's own history, for fine-tuning a forecaster to the room it is in.

A recording made by ``python -m collector record`` (JSON lines; the climate readings of one
node are used, averaged into the collector's 10-minute steps exactly as it averages them), or a
Jena-format CSV. Either becomes gap-free segments like any other climate data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyml_core.errors import PayloadError
from tinyml_core.messages import ClimateReading, decode_sensor_message
from tinyml_core.recordings import ClimateSeries, read_recording

from . import climate

MIN_STEPS = 2 * 24 * 6  # two days of 10-minute steps: a day to learn from, hours to check on


@dataclass(frozen=True)
class Recording:
    path: Path
    node_id: str | None  # None for a CSV
    segments: list[climate.Segment]

    @property
    def steps(self) -> int:
        return sum(len(segment) for segment in self.segments)

    def describe(self) -> dict[str, object]:
        start = min(segment.start_time for segment in self.segments)
        end = max(s.start_time + (len(s) - 1) * climate.STEP_S for s in self.segments)
        return {"file": self.path.name, "sha256": hashlib.sha256(self.path.read_bytes())
                .hexdigest(), "node_id": self.node_id, "steps": self.steps,
                "segments": len(self.segments), "start": start, "end": end}


def load_recording(path: Path, node_id: str | None = None) -> Recording:
    """The recording's readings as 10-minute segments; refuses one too short to fine-tune on."""
    if not path.exists():
        raise climate.DataError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        segments = climate.load_segments([path])
        node = node_id
    else:
        node, series = _readings(path, node_id)
        segments = climate.segments(series)
    recording = Recording(path, node, segments)
    usable = sum(len(s) for s in segments if len(s) >= climate.WINDOW + 9)
    if usable < MIN_STEPS:
        raise climate.DataError(
            f"{path}: {usable} usable 10-minute steps (in runs of at least "
            f"{climate.WINDOW + 9} without a gap); fine-tuning needs at least {MIN_STEPS} "
            f"(two days): a day to learn from and a held-out tail to check on")
    return recording


def _readings(path: Path, node_id: str | None) -> tuple[str, ClimateSeries]:
    by_node: dict[str, list[ClimateReading]] = {}
    for message in read_recording(path):
        if not message.topic.endswith("/climate"):
            continue
        try:
            reading = decode_sensor_message(message.topic, message.payload)
        except PayloadError:
            continue  # the collector refused it too
        if isinstance(reading, ClimateReading):
            by_node.setdefault(reading.node_id, []).append(reading)
    if node_id is None and len(by_node) > 1:
        raise climate.DataError(f"{path} holds readings of {len(by_node)} nodes "
                                f"({', '.join(sorted(by_node))}): pick one with --node-id")
    node = node_id or next(iter(by_node), None)
    if node is None or node not in by_node:
        raise climate.DataError(f"{path}: no climate readings"
                                + (f" of node {node_id!r}" if node_id else ""))
    readings = sorted(by_node[node], key=lambda r: r.time)
    times = np.array([r.time for r in readings])
    steps = np.ceil(times / climate.STEP_S - 1e-9).astype(np.int64)  # as the collector does
    unique, index = np.unique(steps, return_inverse=True)
    counts = np.bincount(index)
    temperature = np.bincount(index, [r.temperature for r in readings]) / counts
    humidity = np.bincount(index, [r.humidity for r in readings]) / counts
    return node, ClimateSeries(str(path), unique * climate.STEP_S, temperature, humidity)
