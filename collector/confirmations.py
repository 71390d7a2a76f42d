"""What the collector has taken of each node's streams, and what it tells the nodes.

Per node, sensor kind and numbering, the sequence numbers taken, as ranges
(tinyml_core.seqranges): a node's messages are numbered per kind, so a hole is a message lost
between the node and here (a broker's full queue, a crash), and a number seen twice is a
re-send. A numbering is named by the spool id its messages carry (docs/protocol.md): a node
whose spool is new (a new SD card, a deleted spool file, each ``node replay``) starts counting
again under a new id, and its numbers are new, not repeats. The last numbering heard is the
node's current one; one heard again after another took over means two nodes send under one id
(:attr:`Taking.conflict`). A node without spool ids has one numbering (None), as before. The
book

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
NUMBERINGS_KEPT = 4  # per node and kind: older numberings are forgotten
_KINDS = {kind.value for kind in SensorKind}
_NO_SPOOL = "-"  # the journal's word for a node without spool ids


def _spool_field(spool: str | None) -> str:
    return _NO_SPOOL if spool is None else spool


def _spool_of(field_text: str) -> str | None:
    if field_text == _NO_SPOOL:
        return None
    if not field_text.isalnum() or len(field_text) > 32:
        raise ValueError(field_text)
    return field_text


def spool_name(spool: str | None) -> str:
    """A numbering as people read it."""
    return "no spool id" if spool is None else f"spool {spool}"


class JournalledReading(NamedTuple):
    number: int  # its index in the journal
    node_id: str
    seq: int
    time: float
    temperature: float
    humidity: float
    fresh: bool = False  # its node's windows started afresh with it (a numbering gone back)


def _index(line: str) -> int:
    try:
        return int(line.split()[1])
    except (IndexError, ValueError):
        return 0


class Taking(NamedTuple):
    new: bool  # False: this message was taken before (a re-send)
    skipped: int  # numbers jumped over: messages lost between the node and here (so far)
    restarted: bool = False  # the first message of a new numbering of a node heard before
    conflict: str = ""  # another numbering took turns with this one: "spool a and spool b"


class Due(NamedTuple):
    """A confirmation to publish."""

    node_id: str
    kind: str
    taken: SeqRanges
    spool: str | None = None


@dataclass
class _Stream:
    spool: str | None = None
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
        # node -> kind -> its numberings by spool id, the current one (last heard) last.
        self._nodes: OrderedDict[str, dict[str, OrderedDict[str | None, _Stream]]] = \
            OrderedDict()
        self.gaps: dict[str, NodeGaps] = {}
        self._last_stream: tuple[str, str, str | None, _Stream] | None = None  # last looked up
        self._conflict_reported: dict[str, float] = {}  # node -> clock() of its last report
        self._said_no_spool: set[str] = set()  # nodes warned of sending no spool id
        self.duplicates = 0
        self.restarts = 0  # numberings that started again (new spools of known nodes)
        self.conflicts = 0  # messages of a numbering that took turns with another
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
    def check(self, node_id: str, kind: str, seq: int, at: float,
              spool: str | None = None) -> Taking:
        """Whether this message is new, and how many numbers it jumps over (counted here: an
        error record should follow when :meth:`gap_report` says so), within its numbering
        (``spool``). A message checked and not yet recorded (its answers on their way) counts
        as taken: a copy of it is a re-send, and the next number is no jump."""
        with self._lock:
            if spool is None and node_id not in self._said_no_spool \
                    and len(self._said_no_spool) < self.max_nodes:
                self._said_no_spool.add(node_id)
                log.warning("%s sends no spool id (a node from before them): if its numbering "
                            "starts again (a new SD card, a deleted spool), its new messages "
                            "are taken for repeats; update the node", node_id)
            restarted, conflict = self._turn_to(node_id, kind, spool, seq)
            stream = self._stream(node_id, kind, spool)
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
            return Taking(new, skipped, restarted, conflict)

    def _turn_to(self, node_id: str, kind: str, spool: str | None, seq: int
                 ) -> tuple[bool, str]:
        """Make ``spool`` the node's current numbering of ``kind``: whether it is a new one of
        a node heard before (said once, here), and the conflict when it is one that another
        numbering had taken over from (two nodes under one id)."""
        numberings = self._nodes.get(node_id, {}).get(kind)
        if not numberings:
            return False, ""
        current = next(reversed(numberings))
        if spool == current:
            return False, ""
        if spool not in numberings:
            self.restarts += 1
            if current is None:
                log.info("%s numbers its %s messages per spool now (%s, from %d): a node "
                         "that starts counting again is told from a repeat", node_id, kind,
                         spool_name(spool), seq)
            else:
                log.warning("%s started counting %s again at %d: new %s (was %s)", node_id,
                            kind, seq, spool_name(spool), spool_name(current))
            return True, ""
        self.conflicts += 1
        return False, f"{spool_name(spool)} and {spool_name(current)}"

    def conflict_report_due(self, node_id: str) -> bool:
        """Whether an error record for two numberings of ``node_id`` taking turns is due (at
        most one per node every GAP_REPORT_S)."""
        with self._lock:
            now = self._clock()
            if now - self._conflict_reported.get(node_id, -math.inf) < GAP_REPORT_S:
                return False
            self._conflict_reported[node_id] = now
            if len(self._conflict_reported) > self.max_nodes:
                self._conflict_reported.pop(next(iter(self._conflict_reported)))
            return True

    def record(self, node_id: str, kind: str, seq: int, at: float,
               values: tuple[float, float] | None = None, spool: str | None = None,
               fresh: bool = False) -> None:
        """The message was handled and the broker acknowledged its answers: confirm it from now
        on (again, for a re-send: the node did not hear the last confirmation). ``values``: a
        reading's temperature and humidity, journalled so that a restart can put it back in
        its window (``fresh``: its node's windows started afresh with it)."""
        with self._lock:
            changed = self._take(node_id, kind, seq, at, spool)
            if self._journal_fd is None:
                return
            # Written at once (one write, no sync): a reading kept only in memory would be lost
            # with the process, and its node would send it again only after newer ones, too
            # late for its window; a sound event's answer is out, and a re-send must find it.
            if values is not None:
                self._append(f"C {self.next_reading} {node_id} {kind} {seq} {at!r} "
                             f"{values[0]!r} {values[1]!r} {_spool_field(spool)}"
                             f"{' fresh' if fresh else ''}\n")
                self.next_reading += 1
            elif changed:
                self._append(f"T {node_id} {kind} {seq} {at!r} {_spool_field(spool)}\n")

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

    def _stream(self, node_id: str, kind: str, spool: str | None) -> _Stream:
        """The numbering's stream, made the node's current one (made if new)."""
        last = self._last_stream
        if last is not None and last[:3] == (node_id, kind, spool):
            return last[3]  # record() after check() of the same message: moved already
        streams = self._nodes.get(node_id)
        if streams is None:
            if len(self._nodes) >= self.max_nodes:
                forgotten, _ = self._nodes.popitem(last=False)
                self.gaps.pop(forgotten, None)
            streams = self._nodes[node_id] = {}
        self._nodes.move_to_end(node_id)
        numberings = streams.setdefault(kind, OrderedDict())
        stream = numberings.get(spool)
        if stream is None:
            stream = numberings[spool] = _Stream(spool)
            if len(numberings) > NUMBERINGS_KEPT:
                numberings.popitem(last=False)
        numberings.move_to_end(spool)
        self._last_stream = (node_id, kind, spool, stream)
        return stream

    def _take(self, node_id: str, kind: str, seq: int, at: float | None,
              spool: str | None) -> bool:
        """Add one message; whether that changed anything."""
        stream = self._stream(node_id, kind, spool)
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
    def due(self, everything: bool = False) -> list[Due]:
        """Confirmations to publish now, one per numbering that took something (``everything``:
        all that changed, as on a clean stop); marks them published. The current numbering
        comes last, so that it is the one the broker retains."""
        now = self._clock()
        out = []
        with self._lock:
            for node_id, streams in self._nodes.items():
                for kind, numberings in streams.items():
                    for stream in numberings.values():
                        if stream.dirty and stream.taken.highest is not None and (
                                everything or now - stream.published_at >= self.interval_s):
                            stream.dirty, stream.published_at = False, now
                            out.append(Due(node_id, kind, SeqRanges(stream.taken),
                                           stream.spool))
        return out

    def again(self, due: Due) -> None:
        """A confirmation could not be published: publish it with the next."""
        with self._lock:
            numberings = self._nodes.get(due.node_id, {}).get(due.kind)
            stream = None if numberings is None else numberings.get(due.spool)
            if stream is not None:
                stream.dirty = True

    def highest(self, node_id: str, kind: str = SensorKind.CLIMATE.value) -> int | None:
        """The highest number taken in the node's current numbering of ``kind``."""
        with self._lock:
            stream = self._current(node_id, kind)
            return None if stream is None else stream.taken.highest

    def current_spool(self, node_id: str, kind: str = SensorKind.CLIMATE.value) -> str | None:
        """The spool id of the node's current numbering (None: none, or no spool ids)."""
        with self._lock:
            stream = self._current(node_id, kind)
            return None if stream is None else stream.spool

    def _current(self, node_id: str, kind: str) -> _Stream | None:
        numberings = self._nodes.get(node_id, {}).get(kind)
        return numberings[next(reversed(numberings))] if numberings else None

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
            if self.restarts:
                parts.append(f"{self.restarts} times a node started counting again (new spool)")
            if self.conflicts:
                parts.append(f"{self.conflicts} messages from two nodes under one id")
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
        """One journal line: ``T node kind seq time spool`` (taken), ``C index node kind seq
        time temperature humidity spool [fresh]`` (a reading, with its values), ``R node kind
        low high spool`` (a range taken, from a compaction), ``N next-index`` (ditto). The
        spool is ``-`` for a node without spool ids, and absent in a journal written before
        them (read as ``-``)."""
        tag = fields[0]
        if tag == "N" and len(fields) == 2:
            self.next_reading = max(self.next_reading, int(fields[1]))
            return
        if tag == "C" and 8 <= len(fields) <= 10:
            index, node_id, kind = int(fields[1]), validate_id(fields[2]), fields[3]
            seq, at = int(fields[4]), float(fields[5])
            values = (float(fields[6]), float(fields[7]))
            spool = _spool_of(fields[8]) if len(fields) > 8 else None
            fresh = len(fields) > 9
            if (kind != SensorKind.CLIMATE.value or not all(map(math.isfinite, values))
                    or (fresh and fields[9] != "fresh")):
                raise ValueError(kind)
            self._take(node_id, kind, seq, at, spool)
            self.journalled_readings.append(JournalledReading(index, node_id, seq, at, *values,
                                                              fresh=fresh))
            self.next_reading = max(self.next_reading, index + 1)
            return
        node_id, kind = validate_id(fields[1]), fields[2]
        if kind not in _KINDS or len(fields) not in (5, 6):
            raise ValueError(kind)
        spool = _spool_of(fields[5]) if len(fields) == 6 else None
        if tag == "T":
            self._take(node_id, kind, int(fields[3]), float(fields[4]), spool)
        elif tag == "R":
            self._stream(node_id, kind, spool).taken.add_range(int(fields[3]), int(fields[4]))
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
            for kind, numberings in streams.items():
                for stream in numberings.values():  # the current one last, as it was
                    spool = _spool_field(stream.spool)
                    lines += [f"R {node_id} {kind} {low} {high} {spool}\n"
                              for low, high in stream.taken]
                    lines += [f"T {node_id} {kind} {seq} {at!r} {spool}\n"
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
