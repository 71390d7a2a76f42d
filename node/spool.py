"""The node's on-disk spool: every message waits here until the broker has acknowledged it.

One SQLite file (standard library, crash-safe with a journal). Messages come out in the
order they went in, so order per topic survives outages and restarts. The file has a size
cap; past it the oldest audio clips are dropped first, and readings only when no clip is
left (a clip is ~200 readings' worth of bytes, and readings are what forecasts need). What
was dropped is counted in the file, as is the node's sequence counter, so numbers carry on
after a restart.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
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
"""
# Row overhead in SQLite is a few dozen bytes; counting it keeps the cap honest for readings.
_ROW_OVERHEAD = 40


class SpoolError(TinyMLError):
    """The spool file cannot be opened or written."""


@dataclass(frozen=True)
class SpooledMessage:
    id: int
    topic: str
    payload: bytes


@dataclass(frozen=True)
class SpoolStats:
    messages: int
    bytes: int
    dropped_audio: int
    dropped_climate: int

    def line(self) -> str:
        return (f"{self.messages} waiting ({self.bytes / 1e6:.2f} MB); dropped by the size cap: "
                f"{self.dropped_audio} clips, {self.dropped_climate} readings")


class Spool:
    """Messages not yet acknowledged by the broker, in order, within ``max_bytes``."""

    def __init__(self, path: Path | str, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # one connection, used by the sources and the forwarder
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a message the node has spooled survives a power cut, not just a crash.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self.last_id = int(self._db.execute(
                "SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0])
            self._bytes = int(self._db.execute(
                f"SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + {_ROW_OVERHEAD}), 0) "
                "FROM messages").fetchone()[0])
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"spool {self.path} cannot be used: {exc}") from None

    # --- writing ----------------------------------------------------------------------------
    def next_seq(self) -> int:
        """The node's next sequence number (persisted, so it keeps counting after a restart)."""
        with self._lock, self._transaction():
            return self._bump("seq") - 1

    def put(self, kind: str, topic: str, payload: bytes) -> int:
        """Store a message; returns its id. Makes room under the cap first (see module doc)."""
        with self._lock, self._transaction():
            return self._insert(kind, topic, payload)

    def put_numbered(self, kind: str, build: Callable[[int], tuple[str, bytes]]) -> int:
        """Take the next sequence number, ``build(seq)`` → (topic, payload), store it: one
        transaction (one disk sync), and a message that fails to build uses up no number."""
        with self._lock, self._transaction():
            topic, payload = build(self._bump("seq") - 1)
            return self._insert(kind, topic, payload)

    def _insert(self, kind: str, topic: str, payload: bytes) -> int:
        size = len(payload) + len(topic) + _ROW_OVERHEAD
        self._make_room(size)
        cursor = self._db.execute("INSERT INTO messages (kind, topic, payload) VALUES (?, ?, ?)",
                                  (kind, topic, payload))
        self._bytes += size
        self.last_id = int(cursor.lastrowid or 0)
        return self.last_id

    def remove(self, ids: list[int]) -> None:
        """Forget messages the broker has acknowledged (ids already gone are ignored)."""
        if not ids:
            return
        with self._lock, self._transaction():
            for chunk in range(0, len(ids), 500):
                part = ids[chunk:chunk + 500]
                marks = ",".join("?" * len(part))
                freed = self._db.execute(
                    f"SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + {_ROW_OVERHEAD}), 0) "
                    f"FROM messages WHERE id IN ({marks})", part).fetchone()[0]
                self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", part)
                self._bytes -= int(freed)

    def _make_room(self, size: int) -> None:
        for kind in (AUDIO, CLIMATE):
            while self._bytes + size > self.max_bytes:
                row = self._db.execute(
                    "SELECT id, LENGTH(payload) + LENGTH(topic) FROM messages WHERE kind = ? "
                    "ORDER BY id LIMIT 1", (kind,)).fetchone()
                if row is None:
                    break
                self._db.execute("DELETE FROM messages WHERE id = ?", (row[0],))
                self._bytes -= int(row[1]) + _ROW_OVERHEAD
                dropped = self._bump(f"dropped_{kind}")
                if dropped == 1 or dropped % 100 == 0:
                    log.warning("spool full (%.1f MB): dropped the oldest %s message "
                                "(%d so far)", self.max_bytes / 1e6, kind, dropped)

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
                "SELECT id, topic, payload FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (last_id, limit)).fetchall()
        return [SpooledMessage(int(i), str(t), bytes(p)) for i, t, p in rows]

    def stats(self) -> SpoolStats:
        with self._lock:
            count = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return SpoolStats(count, self._bytes, int(counters.get(f"dropped_{AUDIO}", 0)),
                          int(counters.get(f"dropped_{CLIMATE}", 0)))

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
