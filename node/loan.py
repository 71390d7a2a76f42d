"""The microphone lent by a running node daemon to `node enroll` on the same machine.

A sound card's input is opened by one process at a time, so enrolling at a node used to mean
stopping its daemon. Two files beside the node's spool settle who has it instead:

- ``microphone.lock``: whoever reads the microphone holds it (``flock``; the kernel lets go
  when that process ends, however it ends);
- ``microphone.wanted``: `node enroll` writes its process id there to ask for it.

The daemon's reader sees the request between two reads, publishes the event in progress,
closes its stream and lets go of the lock; `node enroll` takes the lock, records, lets go of
it and removes its request, and the daemon opens its stream again. A request whose process is
gone (killed before it could clean up) is no request. Readings, the spool and the broker carry
on meanwhile: only sound events pause.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl

    LOCKING = True
except ImportError:  # not POSIX: no loans, the microphone is opened as before
    LOCKING = False

from .hardware import SensorError

log = logging.getLogger("node.microphone")

POLL_S = 0.1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class MicrophoneLoan:
    """The two files in ``directory`` (see module doc); one object per process."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.lock_path = self.directory / "microphone.lock"
        self.wanted_path = self.directory / "microphone.wanted"
        self._held: IO[str] | None = None

    # --- the reader's side (the daemon) ----------------------------------------------------
    def try_hold(self) -> bool:
        """Take the microphone's lock if nobody has it; whether this process holds it now."""
        if self._held is not None or not LOCKING:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._held = handle
        return True

    def hold(self, stopped: Callable[[], bool] = lambda: False) -> bool:
        """Wait until this process holds the lock (False: stopped first)."""
        said = False
        while not self.try_hold():
            if not said:
                log.info("the microphone is lent (%s): waiting for it", self.borrower_text())
                said = True
            if stopped():
                return False
            time.sleep(POLL_S)
        return True

    def release(self) -> None:
        if self._held is not None:
            self._held.close()  # closing the file lets go of the lock
            self._held = None

    def requested_by(self) -> int | None:
        """The process id that asks for the microphone, if it is alive."""
        try:
            text = self.wanted_path.read_text().strip()
        except (FileNotFoundError, OSError, UnicodeDecodeError):
            return None
        try:
            pid = int(text)
        except ValueError:
            return None
        if pid <= 0 or not _alive(pid):
            return None
        return pid

    def borrower_text(self) -> str:
        pid = self.requested_by()
        return f"to node enroll, process {pid}" if pid else "to another process"

    # --- the borrower's side (`node enroll`) -----------------------------------------------
    @contextlib.contextmanager
    def borrowed(self, timeout_s: float = 10.0) -> Iterator[bool]:
        """Hold the microphone meanwhile: at once when no daemon reads it (False), or once the
        daemon reading it has let go (True); SensorError when it has not within ``timeout_s``.
        The daemon has it back when the block ends, however it ends."""
        if self.try_hold():
            try:
                yield False
            finally:
                self.release()
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.wanted_path.write_text(f"{os.getpid()}\n")
        try:
            deadline = time.monotonic() + timeout_s
            while not self.try_hold():
                if time.monotonic() > deadline:
                    raise SensorError(
                        f"a node daemon reads the microphone ({self.lock_path} is held) and did "
                        f"not lend it within {timeout_s:g} s: stop it (e.g. `sudo systemctl "
                        "stop tinyml-node`) and enroll again")
                time.sleep(POLL_S)
            yield True
        finally:
            self.release()
            with contextlib.suppress(FileNotFoundError):
                self.wanted_path.unlink()


def loan_for(spool_path: str) -> MicrophoneLoan:
    """The loan files of the node whose spool is ``spool_path``: beside it."""
    return MicrophoneLoan(Path(spool_path).parent)
