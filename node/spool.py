"""The node's on-disk spool: every message waits here until the broker has acknowledged it,
and then until a collector has confirmed it too.

One SQLite file (standard library, crash-safe with a journal). Messages come out in the
order they went in, so order per topic survives outages and restarts. A message the broker
acknowledged moves to a second table, ``unconfirmed``, until a confirmation covers it
(node/confirmations.py): a broker that crashes between its PUBACK and its disk, or drops it
from a full queue, loses it otherwise. The file has a size cap; past it the oldest unconfirmed
messages go first (the broker has them, most likely), then the oldest audio clips, and waiting
readings only when no clip is left (a clip is ~200 readings' worth of bytes, and readings are
what forecasts need). The unconfirmed table also has a cap of its own in rows. What was dropped
is counted in the file, as are the node's sequence counters (one per sensor kind, so a hole in
either shows a loss), so numbers carry on after a restart.

The file also holds the spool's id, made with it (random; an older file gets one when first
opened): every message carries it, so a collector can tell a node whose numbering started
again (a new SD card, a deleted spool file) from one sending again what it sent before.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from tinyml_core.errors import TinyMLError

log = logging.getLogger("node.spool")

AUDIO = "audio"
CLIMATE = "climate"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS unconfirmed (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS identity (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    spool_id TEXT NOT NULL,
    created REAL NOT NULL
);
"""
UNCONFIRMED = "unconfirmed"
_SHARED_SEQ = "seq"  # before one counter per kind


def _seq_counter(kind: str) -> str:
    return f"seq_{kind}"


# Row overhead in SQLite is a few dozen bytes; counting it keeps the cap honest for readings.
_ROW_OVERHEAD = 40


def new_spool_id() -> str:
    """16 random hex digits: two spools never share one."""
    return secrets.token_hex(8)


class SpoolError(TinyMLError):
    """The spool file cannot be opened or written."""


@dataclass(frozen=True)
class SpooledMessage:
    id: int
    topic: str
    payload: bytes
    seq: int | None = None  # its sequence number (None: an old spool's row, or not numbered)

    @property
    def node_id(self) -> str:
        """The node it is from (``sensors/<node_id>/<kind>``)."""
        return self.topic.split("/")[1] if self.topic.count("/") == 2 else ""

    @property
    def kind(self) -> str:
        return self.topic.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class SpoolStats:
    messages: int
    bytes: int
    dropped_audio: int
    dropped_climate: int
    unconfirmed: int = 0
    dropped_unconfirmed: int = 0

    def line(self) -> str:
        return (f"{self.messages} waiting, {self.unconfirmed} unconfirmed "
                f"({self.bytes / 1e6:.2f} MB); dropped by the size cap: {self.dropped_audio} "
                f"clips, {self.dropped_climate} readings, {self.dropped_unconfirmed} unconfirmed "
                f"messages")


class Spool:
    """Messages not yet acknowledged by the broker, in order, within ``max_bytes``."""

    def __init__(self, path: Path | str, max_bytes: int, max_unconfirmed: int = 1000) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_unconfirmed = max_unconfirmed
        self._lock = threading.Lock()  # one connection, used by the sources and the forwarder
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a message the node has spooled survives a power cut, not just a crash.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
            if "seq" not in columns:  # a spool written before readings kept their seq
                self._db.execute("ALTER TABLE messages ADD COLUMN seq INTEGER")
            self.last_id = int(self._db.execute(
                "SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0])
            self._bytes = sum(int(self._db.execute(
                f"SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + {_ROW_OVERHEAD}), 0) "
                f"FROM {table}").fetchone()[0]) for table in ("messages", UNCONFIRMED))
            self._db.execute("INSERT OR IGNORE INTO identity (only, spool_id, created) "
                             "VALUES (1, ?, ?)", (new_spool_id(), time.time()))
            spool_id, created = self._db.execute(
                "SELECT spool_id, created FROM identity").fetchone()
            self.spool_id: str = str(spool_id)
            self.created: float = float(created)  # s since the epoch: the numbering began
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"spool {self.path} cannot be used: {exc}") from None

    # --- writing ----------------------------------------------------------------------------
    def next_seq(self, kind: str = CLIMATE) -> int:
        """The node's next sequence number of ``kind`` (persisted, so it keeps counting after a
        restart)."""
        with self._lock, self._transaction():
            return self._bump_seq(kind) - 1

    def peek_seq(self, kind: str = CLIMATE) -> int:
        """The sequence number the next message of ``kind`` will get."""
        with self._lock, self._transaction():
            name = self._seq_row(kind)
            return int(self._db.execute("SELECT value FROM counters WHERE name = ?",
                                        (name,)).fetchone()[0])

    def counter(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = ?",
                                   (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def increment(self, name: str) -> int:
        with self._lock, self._transaction():
            return self._bump(name)

    def skip_seq_to(self, seq: int, kind: str = CLIMATE) -> None:
        """Number ``kind`` from ``seq`` on (when a collector has seen higher numbers from this
        node, e.g. before its spool file was deleted: numbers stay unique)."""
        with self._lock, self._transaction():
            self._db.execute("UPDATE counters SET value = MAX(value, ?) WHERE name = ?",
                             (seq, self._seq_row(kind)))

    def put(self, kind: str, topic: str, payload: bytes, seq: int | None = None) -> int:
        """Store a message (numbered by its maker, or not at all); returns its id. Makes room
        under the cap first (see module doc)."""
        with self._lock, self._transaction():
            return self._insert(kind, topic, payload, seq)

    def put_numbered(self, kind: str, build: Callable[[int], tuple[str, bytes]]) -> int:
        """Take the next sequence number of ``kind``, ``build(seq)`` → (topic, payload), store
        it: one transaction (one disk sync), and a message that fails to build uses up no
        number."""
        with self._lock, self._transaction():
            seq = self._bump_seq(kind) - 1
            topic, payload = build(seq)
            return self._insert(kind, topic, payload, seq)

    def _bump_seq(self, kind: str) -> int:
        return self._bump(self._seq_row(kind))

    def _seq_row(self, kind: str) -> str:
        """The counter of ``kind``, made if missing. A spool of an earlier version counted
        both kinds on one counter: numbers carry on above it."""
        name = _seq_counter(kind)
        self._db.execute("INSERT OR IGNORE INTO counters (name, value) SELECT ?, COALESCE(("
                         "SELECT value FROM counters WHERE name = ?), 0)", (name, _SHARED_SEQ))
        return name

    def _insert(self, kind: str, topic: str, payload: bytes, seq: int | None = None) -> int:
        size = len(payload) + len(topic) + _ROW_OVERHEAD
        self._make_room(size)
        cursor = self._db.execute(
            "INSERT INTO messages (kind, topic, payload, seq) VALUES (?, ?, ?, ?)",
            (kind, topic, payload, seq))
        self._bytes += size
        self.last_id = int(cursor.lastrowid or 0)
        return self.last_id

    def remove(self, ids: list[int]) -> None:
        """Forget messages the broker has acknowledged (ids already gone are ignored)."""
        if ids:
            with self._lock, self._transaction():
                self._delete("messages", ids)

    def acknowledged(self, ids: list[int], keep: bool) -> list[SpooledMessage]:
        """The broker acknowledged these: numbered messages move to the unconfirmed table when
        ``keep``, the rest are forgotten. Returns the messages kept."""
        if not ids:
            return []
        kept: list[SpooledMessage] = []
        with self._lock, self._transaction():
            for chunk in range(0, len(ids), 500):
                part = ids[chunk:chunk + 500]
                marks = ",".join("?" * len(part))
                if keep:
                    rows = self._db.execute(
                        f"SELECT id, topic, payload, seq FROM messages WHERE id IN ({marks}) "
                        f"AND seq IS NOT NULL", part).fetchall()
                    kept += [SpooledMessage(int(i), str(t), bytes(p), int(q))
                             for i, t, p, q in rows]
                    self._db.execute(
                        f"INSERT OR IGNORE INTO unconfirmed (id, seq, topic, payload) SELECT id, "
                        f"seq, topic, payload FROM messages WHERE id IN ({marks}) "
                        f"AND seq IS NOT NULL", part)
                    self._db.execute(
                        f"DELETE FROM messages WHERE id IN ({marks}) AND seq IS NOT NULL", part)
                self._delete("messages", part)
            self._cap_unconfirmed()
        return kept

    def confirmed(self, ids: list[int]) -> None:
        """A collector confirmed these: forget them (wherever they are)."""
        if ids:
            with self._lock, self._transaction():
                self._delete(UNCONFIRMED, ids)
                self._delete("messages", ids)

    def unconfirmed(self, ids: list[int] | None = None) -> list[SpooledMessage]:
        """Unconfirmed messages (all, or those of ``ids`` still there), oldest first."""
        with self._lock:
            if ids is None:
                rows = self._db.execute(
                    "SELECT id, topic, payload, seq FROM unconfirmed ORDER BY id").fetchall()
            else:
                rows = []
                for chunk in range(0, len(ids), 500):
                    part = ids[chunk:chunk + 500]
                    rows += self._db.execute(
                        f"SELECT id, topic, payload, seq FROM unconfirmed WHERE id IN "
                        f"({','.join('?' * len(part))})", part).fetchall()
                rows.sort()
        return [SpooledMessage(int(i), str(t), bytes(p), int(q)) for i, t, p, q in rows]

    def _delete(self, table: str, ids: list[int]) -> None:
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            marks = ",".join("?" * len(part))
            freed = self._db.execute(
                f"SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + {_ROW_OVERHEAD}), 0) "
                f"FROM {table} WHERE id IN ({marks})", part).fetchone()[0]
            self._db.execute(f"DELETE FROM {table} WHERE id IN ({marks})", part)
            self._bytes -= int(freed)

    def _cap_unconfirmed(self) -> None:
        count = int(self._db.execute("SELECT COUNT(*) FROM unconfirmed").fetchone()[0])
        while count > self.max_unconfirmed:
            self._drop_oldest(UNCONFIRMED, UNCONFIRMED, "no collector confirms them? (the cap "
                              f"is {self.max_unconfirmed} messages)")
            count -= 1

    def _make_room(self, size: int) -> None:
        for table, kind in ((UNCONFIRMED, None), ("messages", AUDIO), ("messages", CLIMATE)):
            while self._bytes + size > self.max_bytes:
                if not self._drop_oldest(table, kind or UNCONFIRMED,
                                         f"spool full ({self.max_bytes / 1e6:.1f} MB)",
                                         kind=kind):
                    break

    def _drop_oldest(self, table: str, counter: str, why: str, kind: str | None = None) -> bool:
        where = "WHERE kind = ?" if kind is not None else ""
        row = self._db.execute(
            f"SELECT id, LENGTH(payload) + LENGTH(topic) FROM {table} {where} ORDER BY id "
            "LIMIT 1", (kind,) if kind is not None else ()).fetchone()
        if row is None:
            return False
        self._db.execute(f"DELETE FROM {table} WHERE id = ?", (row[0],))
        self._bytes -= int(row[1]) + _ROW_OVERHEAD
        dropped = self._bump(f"dropped_{counter}")
        if dropped == 1 or dropped % 100 == 0:
            log.warning("%s: dropped the oldest %s message (%d so far)", why, counter, dropped)
        return True

    def _bump(self, name: str) -> int:
        self._db.execute("INSERT INTO counters (name, value) VALUES (?, 1) "
                         "ON CONFLICT(name) DO UPDATE SET value = value + 1", (name,))
        return int(self._db.execute("SELECT value FROM counters WHERE name = ?",
                                    (name,)).fetchone()[0])

    # --- reading ----------------------------------------------------------------------------
    def after(self, last_id: int, limit: int) -> list[SpooledMessage]:
        """Up to ``limit`` messages with an id above ``last_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, seq FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (last_id, limit)).fetchall()
        return [SpooledMessage(int(i), str(t), bytes(p), None if q is None else int(q))
                for i, t, p, q in rows]

    def stats(self) -> SpoolStats:
        with self._lock:
            count = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
            unconfirmed = int(self._db.execute("SELECT COUNT(*) FROM unconfirmed").fetchone()[0])
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return SpoolStats(count, self._bytes, int(counters.get(f"dropped_{AUDIO}", 0)),
                          int(counters.get(f"dropped_{CLIMATE}", 0)), unconfirmed,
                          int(counters.get(f"dropped_{UNCONFIRMED}", 0)))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    # --- plumbing ---------------------------------------------------------------------------
    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error; SQLite errors become SpoolError."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self._path}: {exc}") from None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as error:
                self._db.execute("ROLLBACK")
                raise SpoolError(f"spool {self._path}: {error}") from None
        self._db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise SpoolError(f"spool {self._path}: {exc}") from None
