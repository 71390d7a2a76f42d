"""A running node daemon lends its microphone to `node enroll` on the same machine
(node/loan.py): the daemon's reader closes its stream when asked, waits, and opens it again;
a borrower nobody answers, or one that died, leaves everything as it was."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from node.hardware import SensorError
from node.loan import MicrophoneLoan
from node.microphone import Capture, Microphone

RATE = 16_000


class LiveStream:
    """An endless input stream (loud: a 440 Hz tone, else hiss), read in real time."""

    def __init__(self, loud: bool) -> None:
        self.loud = loud
        self.reads = 0
        self.closed = False

    def read(self, num_frames: int, exception_on_overflow: bool = True) -> bytes:
        if self.closed:
            raise OSError("read from a closed stream")
        time.sleep(0.005)
        self.reads += 1
        t = np.arange(num_frames) / RATE
        samples = 10_000 * np.sin(2 * np.pi * 440 * t) if self.loud else np.zeros(num_frames)
        return samples.astype("<i2").tobytes()

    def stop_stream(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def wait_for(condition: object, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_the_daemon_lends_its_microphone_to_enroll_and_takes_it_back(tmp_path: Path) -> None:
    daemon_loan = MicrophoneLoan(tmp_path)
    assert daemon_loan.try_hold()
    first = LiveStream(loud=True)  # a sound going on when enroll asks
    streams: list[LiveStream] = [first]
    released: list[int] = []

    def reopen() -> tuple[LiveStream, object]:
        streams.append(LiveStream(loud=False))
        return streams[-1], lambda: released.append(len(streams))

    microphone = Microphone(first, RATE, Capture(-40.0, max_seconds=30.0),  # type: ignore[arg-type]
                            on_close=lambda: released.append(1), loan=daemon_loan,
                            reopen=reopen).start()
    try:
        assert wait_for(lambda: first.reads > 5)
        enroll_loan = MicrophoneLoan(tmp_path)  # another process's view: its own lock file
        with enroll_loan.borrowed(timeout_s=5) as lent:
            assert lent  # a daemon had it and let go
            assert first.closed and released == [1]
            # The sound in progress was published before the stream closed.
            clip = microphone.clips.get(timeout=1)
            assert clip.level_dbfs > -20 and len(clip.samples) > RATE // 2
            # Enroll holds the lock: the daemon cannot open the stream again meanwhile.
            time.sleep(0.3)
            assert len(streams) == 1
        assert wait_for(lambda: len(streams) == 2 and streams[1].reads > 5)
        assert microphone.events == 1  # the event cut before the loan still counts
        assert not enroll_loan.wanted_path.exists()
        assert microphone.error is None and not microphone.finished.is_set()
    finally:
        microphone.stop()
    assert released == [1, 2]
    # Stopped, the daemon has let go of the microphone.
    assert MicrophoneLoan(tmp_path).try_hold()


def test_without_a_daemon_enroll_takes_it_at_once_and_a_dead_request_is_none(
        tmp_path: Path) -> None:
    with MicrophoneLoan(tmp_path).borrowed(timeout_s=0.1) as lent:
        assert not lent
        assert not MicrophoneLoan(tmp_path).try_hold()  # held meanwhile
    daemon = MicrophoneLoan(tmp_path)
    assert daemon.try_hold()  # let go when the block ended

    # A request left by a borrower that was killed: its process is gone.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    daemon.wanted_path.write_text(f"{gone.pid}\n")
    assert daemon.requested_by() is None
    daemon.wanted_path.write_text("not a number")
    assert daemon.requested_by() is None
    daemon.release()


def test_a_daemon_that_does_not_lend_it_gets_a_clear_answer_and_no_request_is_left(
        tmp_path: Path) -> None:
    holder = MicrophoneLoan(tmp_path)
    assert holder.try_hold()  # holds the microphone and never reads the request
    borrower = MicrophoneLoan(tmp_path)
    with pytest.raises(SensorError, match=r"did not lend it within 0\.3 s: stop it"), \
            borrower.borrowed(timeout_s=0.3):
        pass
    assert not borrower.wanted_path.exists()
    holder.release()


def test_a_daemon_stopped_while_its_microphone_is_lent_stops(tmp_path: Path) -> None:
    daemon_loan = MicrophoneLoan(tmp_path)
    assert daemon_loan.try_hold()
    stream = LiveStream(loud=False)
    microphone = Microphone(stream, RATE, Capture(-40.0), loan=daemon_loan,  # type: ignore[arg-type]
                            reopen=lambda: (LiveStream(False), None)).start()
    borrower = MicrophoneLoan(tmp_path)
    lent = threading.Event()
    done = threading.Event()

    def enroll() -> None:
        with borrower.borrowed(timeout_s=5):
            lent.set()
            done.wait(5)

    thread = threading.Thread(target=enroll)
    thread.start()
    assert lent.wait(5) and stream.closed
    microphone.stop()  # the daemon stops meanwhile: it does not wait for the microphone
    assert microphone.finished.is_set()
    done.set()
    thread.join(5)
