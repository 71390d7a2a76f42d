"""What the collector has taken of each node's streams, and what it tells the nodes.

Per node and sensor kind, the sequence numbers taken, as ranges (tinyml_core.seqranges): a
node's messages are numbered per kind, so a hole is a message lost between the node and here
(a broker's full queue, a crash), and a number seen twice is a re-send. The book

- confirms (``confirmed/<node_id>/<kind>``, retained, at most every ``interval_s`` per node
  and kind while messages come): the node keeps each message until it is covered, sends no
  more than a window ahead, and sends again what stays uncovered (node/confirmations.py);
- recognises a sound event it answered already (same seq and time), so a re-send is not
  answered twice;
- counts the holes (numbers jumped over) per node, for the stats line and an error record.

With a ``journal`` path every taken message is appended to a file as it is recorded (one
``write``: it survives the process being killed), and synced before a confirmation names it
(:meth:`sync`: it survives a power cut too). A reading is journalled with its values: the
collector's windows are saved only every ``state_save_s``, so a restarted collector loads the
saved windows and then puts back the readings journalled after that save (the state file says
up to which index it holds). A confirmed reading is therefore never lost, and the node need not
keep it. The file is read at start, so a restarted collector also still knows which sound
events it answered. It is compacted to its ranges (and the readings the saved windows lack)
when it grows.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tinyml_core.seqranges import SeqRanges
from tinyml_core.topics import SensorKind, validate_id

log = logging.getLogger(__name__)

CONFIRM_INTERVAL_S = 0.5  # a node sends at most its window (256) per interval: 512/s
RECENT_EVENTS = 4096  # sound events per node remembered with their time (duplicates)
GAP_REPORT_S = 10.0  # at most one error record per node this often
COMPACT_LINES = 200_000  # journal lines before it is rewritten as ranges
_KINDS = {kind.value for kind in SensorKind}


class JournalledReading(NamedTuple):
    number: int  # its index in the journal
    node_id: str
    seq: int
    time: float
    temperature: float
    humidity: float


def _index(line: str) -> int:
    try:
        return int(line.split()[1])
    except (IndexError, ValueError):
        return 0


class Taking(NamedTuple):
    new: bool  # False: this message was taken before (a re-send)
    skipped: int  # numbers jumped over: messages lost between the node and here (so far)


@dataclass
class _Stream:
    taken: SeqRanges = field(default_factory=SeqRanges)
    recent: OrderedDict[int, float] = field(default_factory=OrderedDict)  # seq -> time
    dirty: bool = True  # taken something since the last confirmation
    published_at: float = -math.inf
    # Checked, not recorded yet (answers not acknowledged by the broker): seq -> time.
    unrecorded: dict[int, float] = field(default_factory=dict)
    seen_highest: int | None = None  # the highest number checked


@dataclass
class NodeGaps:
    missing: int = 0  # numbers jumped over
    jumps: int = 0
    unreported: int = 0
    reported_at: float = -math.inf


class ConfirmationBook:
    """Filled by the collector's handler (:meth:`check`, :meth:`record`), read by its loop
    (:meth:`due`); thread-safe."""

    def __init__(self, interval_s: float = CONFIRM_INTERVAL_S, max_nodes: int = 10_000,
                 clock: Callable[[], float] = time.monotonic, journal: Path | None = None,
                 gap_kinds: frozenset[str] = frozenset(_KINDS)) -> None:
        self.interval_s = interval_s
        self.max_nodes = max_nodes
        self.gap_kinds = gap_kinds  # kinds whose every message comes here (not shared)
        self._clock = clock
        self._nodes: OrderedDict[str, dict[str, _Stream]] = OrderedDict()
        self.gaps: dict[str, NodeGaps] = {}
        self._last_stream: tuple[str, str, _Stream] | None = None  # the last one looked up
        self.duplicates = 0
        self._lock = threading.Lock()
        self._journal_path = journal
        self._journal_fd: int | None = None
        self._journal_lines = 0
        self._journal_dirty = False  # written since the last sync()
        # Readings journalled with their values (see module doc): the next index, the index
        # the last saved windows hold, and those the saved windows lack (read at start).
        self.next_reading = 1
        self.saved_through = 0
        self.journalled_readings: list[JournalledReading] = []
        if journal is not None:
            self._open_journal(journal)

    # --- taking -----------------------------------------------------------------------------
    def check(self, node_id: str, kind: str, seq: int, at: float) -> Taking:
        """Whether this message is new, and how many numbers it jumps over (counted here: an
        error record should follow when :meth:`gap_report` says so). A message checked and
        not yet recorded (its answers on their way) counts as taken: a copy of it is a
        re-send, and the next number is no jump."""
        with self._lock:
            stream = self._stream(node_id, kind)
            if kind == SensorKind.AUDIO.value:
                new = stream.recent.get(seq) != at and stream.unrecorded.get(seq) != at
            else:
                new = seq not in stream.taken and seq not in stream.unrecorded
            highest = stream.taken.highest
            if stream.seen_highest is not None and (highest is None
                                                    or stream.seen_highest > highest):
                highest = stream.seen_highest
            if new:
                stream.unrecorded[seq] = at
                if stream.seen_highest is None or seq > stream.seen_highest:
                    stream.seen_highest = seq
            skipped = 0
            if new and highest is not None and seq > highest + 1 and kind in self.gap_kinds:
                skipped = seq - highest - 1
                gaps = self.gaps.setdefault(node_id, NodeGaps())
                gaps.missing += skipped
                gaps.jumps += 1
                gaps.unreported += skipped
            if not new:
                self.duplicates += kind == SensorKind.AUDIO.value
            return Taking(new, skipped)

    def record(self, node_id: str, kind: str, seq: int, at: float,
               values: tuple[float, float] | None = None) -> None:
        """The message was handled and the broker acknowledged its answers: confirm it from now
        on (again, for a re-send: the node did not hear the last confirmation). ``values``: a
        reading's temperature and humidity, journalled so that a restart can put it back in
        its window."""
        with self._lock:
            changed = self._take(node_id, kind, seq, at)
            if self._journal_fd is None:
                return
            # Written at once (one write, no sync): a reading kept only in memory would be lost
            # with the process, and its node would send it again only after newer ones, too
            # late for its window; a sound event's answer is out, and a re-send must find it.
            if values is not None:
                self._append(f"C {self.next_reading} {node_id} {kind} {seq} {at!r} "
                             f"{values[0]!r} {values[1]!r}\n")
                self.next_reading += 1
            elif changed:
                self._append(f"T {node_id} {kind} {seq} {at!r}\n")

    def sync(self) -> None:
        """Make the journal survive a power cut too (before confirming what it holds)."""
        with self._lock:
            if self._journal_fd is not None and self._journal_dirty:
                try:
                    os.fsync(self._journal_fd)
                except OSError as error:
                    log.error("journal %s not synced: %s", self._journal_path, error)
                self._journal_dirty = False

    @property
    def readings_through(self) -> int:
        """The index of the last reading journalled (a saved state records it)."""
        with self._lock:
            return self.next_reading - 1

    def state_saved(self, through: int) -> None:
        """The windows with every reading up to ``through`` are on disk: the journal need not
        keep those readings' values any more."""
        with self._lock:
            self.saved_through = max(self.saved_through, through)

    def gap_report(self, node_id: str) -> int:
        """Numbers jumped over since the last report, when one is due (else 0)."""
        with self._lock:
            gaps = self.gaps.get(node_id)
            now = self._clock()
            if gaps is None or not gaps.unreported or now - gaps.reported_at < GAP_REPORT_S:
                return 0
            report, gaps.unreported, gaps.reported_at = gaps.unreported, 0, now
            return report

    def _stream(self, node_id: str, kind: str) -> _Stream:
        last = self._last_stream
        if last is not None and last[0] == node_id and last[1] == kind:
            return last[2]  # record() after check() of the same message: moved already
        streams = self._nodes.get(node_id)
        if streams is None:
            if len(self._nodes) >= self.max_nodes:
                forgotten, _ = self._nodes.popitem(last=False)
                self.gaps.pop(forgotten, None)
            streams = self._nodes[node_id] = {}
        self._nodes.move_to_end(node_id)
        stream = streams.get(kind)
        if stream is None:
            stream = streams[kind] = _Stream()
        self._last_stream = (node_id, kind, stream)
        return stream

    def _take(self, node_id: str, kind: str, seq: int, at: float | None) -> bool:
        """Add one message; whether that changed anything."""
        stream = self._stream(node_id, kind)
        changed = stream.taken.add(seq)
        stream.unrecorded.pop(seq, None)
        stream.dirty = True
        if kind == SensorKind.AUDIO.value and at is not None and stream.recent.get(seq) != at:
            stream.recent[seq] = at
            stream.recent.move_to_end(seq)
            if len(stream.recent) > RECENT_EVENTS:
                stream.recent.popitem(last=False)
            changed = True
        return changed

    # --- confirming -------------------------------------------------------------------------
    def due(self, everything: bool = False) -> list[tuple[str, str, SeqRanges]]:
        """(node, kind, taken) to publish now (``everything``: all that changed, as on a clean
        stop); marks them published."""
        now = self._clock()
        out = []
        with self._lock:
            for node_id, streams in self._nodes.items():
                for kind, stream in streams.items():
                    if stream.dirty and stream.taken.highest is not None and (
                            everything or now - stream.published_at >= self.interval_s):
                        stream.dirty, stream.published_at = False, now
                        out.append((node_id, kind, SeqRanges(stream.taken)))
        return out

    def again(self, node_id: str, kind: str) -> None:
        """A confirmation could not be published: publish it with the next."""
        with self._lock:
            streams = self._nodes.get(node_id)
            if streams is not None and kind in streams:
                streams[kind].dirty = True

    def highest(self, node_id: str, kind: str = SensorKind.CLIMATE.value) -> int | None:
        with self._lock:
            stream = self._nodes.get(node_id, {}).get(kind)
            return None if stream is None else stream.taken.highest

    def line(self) -> str:
        """Stats: holes and duplicates (empty when there were none)."""
        with self._lock:
            missing = sum(g.missing for g in self.gaps.values())
            parts = []
            if missing:
                worst = sorted(self.gaps.items(), key=lambda item: -item[1].missing)[:3]
                parts.append(f"{missing} messages missing in sequence (lost before they got "
                             "here: " + ", ".join(f"{node} {g.missing} in {g.jumps} jumps"
                                                  for node, g in worst)
                             + (", ..." if len(self.gaps) > 3 else "") + ")")
            if self.duplicates:
                parts.append(f"{self.duplicates} sound events sent again and not answered twice")
        return "; ".join(parts)

    # --- journal ----------------------------------------------------------------------------
    def _open_journal(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                self._journal_lines = self._load(path)
            self._journal_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            log.error("journal %s cannot be used (%s): what was taken is kept in memory only; "
                      "a restart may answer a re-sent sound event twice", path, error)
            self._journal_fd = None
            return
        if self._journal_lines > COMPACT_LINES:
            self._compact()

    def _load(self, path: Path) -> int:
        """Read a journal; a malformed line (a torn last write) is skipped with a warning."""
        lines = bad = 0
        with path.open("r", encoding="utf-8", errors="replace") as journal:
            for line in journal:
                lines += 1
                try:
                    self._replay(line.split())
                except (ValueError, IndexError):
                    bad += 1
        if bad:
            log.warning("journal %s: %d malformed lines skipped", path, bad)
        log.info("journal %s: %d nodes' taken messages restored", path, len(self._nodes))
        return lines

    def _replay(self, fields: list[str]) -> None:
        """One journal line: ``T node kind seq time`` (taken), ``C index node kind seq time
        temperature humidity`` (a reading, with its values), ``R node kind low high`` (a range
        taken, from a compaction), ``N next-index`` (ditto)."""
        tag = fields[0]
        if tag == "N" and len(fields) == 2:
            self.next_reading = max(self.next_reading, int(fields[1]))
            return
        if tag == "C" and len(fields) == 8:
            index, node_id, kind = int(fields[1]), validate_id(fields[2]), fields[3]
            seq, at = int(fields[4]), float(fields[5])
            values = (float(fields[6]), float(fields[7]))
            if kind != SensorKind.CLIMATE.value or not all(map(math.isfinite, values)):
                raise ValueError(kind)
            self._take(node_id, kind, seq, at)
            self.journalled_readings.append(JournalledReading(index, node_id, seq, at, *values))
            self.next_reading = max(self.next_reading, index + 1)
            return
        node_id, kind = validate_id(fields[1]), fields[2]
        if kind not in _KINDS:
            raise ValueError(kind)
        if tag == "T" and len(fields) == 5:
            self._take(node_id, kind, int(fields[3]), float(fields[4]))
        elif tag == "R" and len(fields) == 5:
            self._stream(node_id, kind).taken.add_range(int(fields[3]), int(fields[4]))
        else:
            raise ValueError(tag)

    def _append(self, text: str) -> None:
        assert self._journal_fd is not None
        try:
            os.write(self._journal_fd, text.encode())
        except OSError as error:
            log.error("journal %s not written (%s): what was taken is kept in memory only",
                      self._journal_path, error)
            os.close(self._journal_fd)
            self._journal_fd = None
            return
        self._journal_lines += 1
        self._journal_dirty = True
        if self._journal_lines > COMPACT_LINES:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the journal as its ranges, recent sound events and the readings the saved
        windows lack (atomically)."""
        assert self._journal_path is not None
        lines = [f"N {self.next_reading}\n"]
        for node_id, streams in self._nodes.items():
            for kind, stream in streams.items():
                lines += [f"R {node_id} {kind} {low} {high}\n" for low, high in stream.taken]
                lines += [f"T {node_id} {kind} {seq} {at!r}\n"
                          for seq, at in stream.recent.items()]
        temporary = self._journal_path.with_name(self._journal_path.name + ".tmp")
        try:
            with self._journal_path.open("r", encoding="utf-8", errors="replace") as journal:
                lines += [line for line in journal if line.startswith("C ")
                          and _index(line) > self.saved_through]
            with temporary.open("w", encoding="utf-8") as out:
                out.writelines(lines)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self._journal_path)
            if self._journal_fd is not None:
                os.close(self._journal_fd)
            self._journal_fd = os.open(self._journal_path, os.O_WRONLY | os.O_APPEND)
            self._journal_lines = len(lines)
        except OSError as error:
            log.error("journal %s not compacted: %s", self._journal_path, error)
            temporary.unlink(missing_ok=True)
            self._journal_lines = 0  # try again after as many lines

    def close(self) -> None:
        with self._lock:
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None
