"""Small JSON state files that a process keeps across restarts (the collector's windows, the
dashboard's history): written atomically, so a crash while writing leaves the previous file,
and read back with a size limit and a check of their kind and version, so a file of another
kind, another version or no JSON at all is refused with the reason instead of half-loaded."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: state files are then changed by one process at a time
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MAX_STATE_BYTES = 256 * 1024 * 1024


def state_path(template: str, client_id: str) -> Path | None:
    """The state file of ``client_id`` (``{id}`` in ``template`` is replaced, so workers
    sharing a folder keep apart); None: no state file."""
    return Path(template.replace("{id}", client_id)) if template else None


def write_state_file(path: Path, document: dict[str, Any]) -> None:
    """Replace ``path`` with ``document`` as JSON (written beside it, synced, renamed). Each
    write has a temporary file of its own: two processes writing at once each leave a whole
    file, never one half of each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(document, out, separators=(",", ":"), allow_nan=False)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # as an ordinary file would be (mkstemp makes it 0600)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # left only when the write failed


@contextlib.contextmanager
def changing(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock (``<path>.lock`` beside it) while reading, changing and writing
    it: two processes changing one state file (a running collector and `collector enroll`)
    take turns, instead of the second writing over what the first added. Readers need no
    lock: a file is replaced whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        yield


def read_state_file(path: Path, kind: str, version: int, what: str,
                    max_bytes: int = MAX_STATE_BYTES) -> dict[str, Any]:
    """The document in ``path`` if its "format" is ``kind`` (``what`` names it in messages)
    and its "version" ``version``; FileNotFoundError when there is none, ValueError (saying
    why) when it is refused."""
    if path.stat().st_size > max_bytes:
        raise ValueError(f"larger than {max_bytes // 2**20} MB")
    try:
        document = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != kind:
        raise ValueError(f"not a {what} (no \"format\": \"{kind}\")")
    if document.get("version") != version:
        raise ValueError(f"version {document.get('version')!r}, this program reads {version}")
    return document


class ChangeSaver:
    """Writes a state file whenever the state changed since the last write (an idle process
    does not wear the disk): from a timer while running, and always on a clean stop.
    ``changes`` counts what changed the state; ``document`` takes a consistent copy of it."""

    def __init__(self, path: Path, what: str, changes: Callable[[], int],
                 document: Callable[[], dict[str, Any]]) -> None:
        self.path, self.what = path, what
        self._changes, self._document = changes, document
        self._saved = changes()  # what was loaded at start is on disk already
        self._lock = threading.Lock()  # a timer thread and the clean stop may meet

    def save(self, final: bool = False) -> bool:
        """Write the file if the state changed (``final``: in any case); whether it was written.
        An error is logged, never raised: the process goes on, and a restart resumes from the
        last save."""
        with self._lock:
            changes = self._changes()
            if changes == self._saved and not final:
                return False
            try:
                write_state_file(self.path, self._document())
            except (OSError, ValueError) as error:  # ValueError: a number JSON cannot hold
                log.error("%s not saved to %s: %s; a restart resumes from the last save",
                          self.what, self.path, error)
                return False
            self._saved = changes
        log.log(logging.INFO if final else logging.DEBUG, "saved the %s to %s", self.what,
                self.path)
        return True
