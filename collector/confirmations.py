"""What the collector tells each node it owns: the highest reading ``seq`` it has taken.

A node keeps what the broker acknowledged until a confirmation covers it (node/confirmations.py).
Published retained on ``confirmed/<node_id>`` at most once a second per node: after any reading of
the node was handled since the last one (a re-sent reading the collector already had must still
be confirmed, although the highest seq did not move), and once more a second after the last one.
That echo covers a reading whose broker acknowledgement the node saw only after the previous
confirmation had arrived (the node counts only acknowledgements it saw before a confirmation).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

CONFIRM_INTERVAL_S = 1.0


@dataclass
class _Entry:
    highest: int
    dirty: bool = True  # readings handled since the last publication
    echo: bool = False  # publish once more after the interval
    published_at: float = float("-inf")


class ConfirmationBook:
    """Filled in the MQTT network thread (:meth:`taken`), read by the worker loop (:meth:`due`)."""

    def __init__(self, interval_s: float = CONFIRM_INTERVAL_S, max_nodes: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.max_nodes = max_nodes
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def taken(self, node_id: str, seq: int) -> None:
        with self._lock:
            entry = self._entries.get(node_id)
            if entry is None:
                if len(self._entries) >= self.max_nodes:
                    self._entries.popitem(last=False)
                self._entries[node_id] = _Entry(seq)
                return
            self._entries.move_to_end(node_id)
            entry.highest = max(entry.highest, seq)
            entry.dirty = True

    def due(self, everything: bool = False) -> list[tuple[str, int]]:
        """(node, highest seq) to publish now (``everything``: all due sooner or later, as on a
        clean stop); marks them published."""
        now = self._clock()
        out = []
        with self._lock:
            for node_id, entry in self._entries.items():
                if not (entry.dirty or entry.echo):
                    continue
                if everything or now - entry.published_at >= self.interval_s:
                    entry.echo = entry.dirty  # an echo is not echoed again
                    entry.dirty, entry.published_at = False, now
                    out.append((node_id, entry.highest))
        return out

    def highest(self, node_id: str) -> int | None:
        with self._lock:
            entry = self._entries.get(node_id)
            return None if entry is None else entry.highest
