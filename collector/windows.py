"""One node's readings aligned to a model's step: what a forecast is made from.

Step k covers (k·step − step, k·step] and is stamped k·step. Readings in one step are averaged;
a step is complete when a reading of a later step arrives, or at once when a reading falls
exactly on its end (as recorded 10-minute data does). A window is ``size`` consecutive steps,
forecast once, named by its last step:

- when its last step closes, if every step is there, or if a step is missing between two that
  are there (filled by linear interpolation and counted: a DHT11 that failed for ten minutes,
  or a reading lost in a broker crash, costs nothing);
- later, when a late reading fills a missing step (a reading the node sent again after a
  broker crash arrives behind newer ones): every window the step completes, with real values.

Two or more consecutive missing steps leave the windows that hold them without a forecast. A
reading of a step already averaged is a repeat (a QoS 1 redelivery) and is counted, not used.
Memory per window: the last ``size + REPAIR_STEPS`` steps (about 47 kB; a collector keeps two
per node).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinyml_core.messages import CONFIRM_WINDOW

# How far behind the newest step a late reading may still fill its own. A node never has more
# than CONFIRM_WINDOW readings unconfirmed, so one it sends again (lost in a broker crash, or a
# hole a confirmation showed) is at most that many behind its newest: that many steps when
# each reading is a step of its own (a recording of 10-minute data replayed as fast as the
# flow control allows). With a DHT11 read every few seconds, it is less than a step.
REPAIR_STEPS = CONFIRM_WINDOW


@dataclass(frozen=True)
class ReadyWindow:
    """A window to forecast: its last step, the (1, size, 2) input, how many steps were filled."""

    end_time: float
    inputs: np.ndarray
    filled_steps: int


@dataclass
class StepWindow:
    step_s: float
    size: int
    steps: dict[int, tuple[float, float]] = field(default_factory=dict)  # closed: mean (T, RH)
    forecast_ends: set[int] = field(default_factory=set)  # windows forecast, by last step
    open_step: int | None = None
    open_sum: list[float] = field(default_factory=lambda: [0.0, 0.0])
    open_count: int = 0
    late: int = 0  # repeats and readings too old to use
    repaired: int = 0  # steps filled by a late reading

    @property
    def newest_step(self) -> int | None:
        return max(self.steps) if self.steps else None

    def holds_time(self, time_s: float) -> bool:
        """Whether a reading at ``time_s`` falls in a step this window has begun already (a
        reading there is a repeat or a late one, never a new step)."""
        latest = max((x for x in (self.open_step, self.newest_step) if x is not None),
                     default=None)
        return latest is not None and math.ceil(time_s / self.step_s - 1e-9) <= latest

    def add(self, time_s: float, temperature: float, humidity: float) -> list[ReadyWindow]:
        """Add a reading; returns the windows it made ready to forecast (oldest first)."""
        step = math.ceil(time_s / self.step_s - 1e-9)
        on_boundary = math.isclose(time_s, step * self.step_s, abs_tol=1e-6)
        newest = self.newest_step
        frontier = max(x for x in (self.open_step, newest, step - 1) if x is not None)
        if step == self.open_step or step > frontier:
            ready = []
            if self.open_step is not None and step > self.open_step:
                ready += self._close()
            self.open_step = step
            self.open_sum[0] += temperature
            self.open_sum[1] += humidity
            self.open_count += 1
            if on_boundary:
                ready += self._close()
            return ready
        if step in self.steps or newest is None or step <= newest - self.size - REPAIR_STEPS:
            self.late += 1  # a redelivery, or too old to matter
            return []
        self.steps[step] = (temperature, humidity)  # a missing step, filled late
        self.repaired += 1
        ready = []
        for end in range(step, min(step + self.size - 1, newest) + 1):
            window = self._window(end, interpolate=False)
            if window is not None:
                ready.append(window)
        return ready

    def _close(self) -> list[ReadyWindow]:
        assert self.open_step is not None and self.open_count
        step = self.open_step
        self.steps[step] = (self.open_sum[0] / self.open_count,
                            self.open_sum[1] / self.open_count)
        self.open_step, self.open_sum, self.open_count = None, [0.0, 0.0], 0
        oldest_kept = step - self.size - REPAIR_STEPS
        for old in [s for s in self.steps if s < oldest_kept]:
            del self.steps[old]
        self.forecast_ends = {end for end in self.forecast_ends if end >= oldest_kept}
        window = self._window(step, interpolate=True)
        return [window] if window is not None else []

    def _window(self, end: int, interpolate: bool) -> ReadyWindow | None:
        if end in self.forecast_ends:
            return None
        rows, filled = [], 0
        for step in range(end - self.size + 1, end + 1):
            value = self.steps.get(step)
            if value is None:
                before, after = self.steps.get(step - 1), self.steps.get(step + 1)
                if not interpolate or before is None or after is None:
                    return None
                value = ((before[0] + after[0]) / 2, (before[1] + after[1]) / 2)
                filled += 1
            rows.append(value)
        self.forecast_ends.add(end)
        return ReadyWindow(end * self.step_s, np.array(rows, dtype=np.float32)[None], filled)

    # --- saved across a restart (collector/state.py) -------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """What a restarted collector needs to carry on: the averaged steps with their numbers,
        the windows already forecast, and the step still being averaged."""
        return {"step_s": self.step_s, "size": self.size,
                "steps": [[step, t, h] for step, (t, h) in sorted(self.steps.items())],
                "forecast_ends": sorted(self.forecast_ends),
                "open_step": self.open_step, "open_sum": list(self.open_sum),
                "open_count": self.open_count}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepWindow:
        """The inverse of :meth:`to_json`; ValueError when ``data`` is not a consistent window."""
        try:
            window = cls(float(data["step_s"]), int(data["size"]))
            steps = {_integer(step): (float(t), float(h)) for step, t, h in data["steps"]}
            ends = {_integer(end) for end in data["forecast_ends"]}
            opened = None if data["open_step"] is None else _integer(data["open_step"])
            open_sum = [float(x) for x in data["open_sum"]]
            open_count = int(data["open_count"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a window: {error!r}") from None
        numbers = [x for value in steps.values() for x in value] + open_sum + [window.step_s]
        if not all(math.isfinite(x) for x in numbers) or window.step_s <= 0 or window.size < 1:
            raise ValueError("a window holds a non-finite or non-positive number")
        newest = max(steps) if steps else None
        if len(open_sum) != 2 or (opened is None) != (open_count == 0) or open_count < 0:
            raise ValueError("the open step's counts do not fit together")
        if newest is not None and (
                min(steps) < newest - window.size - REPAIR_STEPS
                or (opened is not None and opened <= newest)
                or any(end > newest for end in ends)):
            raise ValueError("the window's steps do not fit together")
        window.steps, window.forecast_ends = steps, ends
        window.open_step, window.open_sum, window.open_count = opened, open_sum, open_count
        return window


def _integer(value: object) -> int:
    if type(value) is not int:
        raise ValueError(f"{value!r} is not a step number")
    return value
