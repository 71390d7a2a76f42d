"""Enrollments that arrive over the broker: a node's ``node enroll`` sends a person's takes on
``enroll/<node_id>``, one message a take (docs/protocol.md).

:class:`TakesInbox` gathers them per node and session until all ``count`` have come (a
take sent twice counts once; a session left incomplete is forgotten after ``EXPIRE_S``; memory
is bounded by sessions and bytes of samples). :class:`Enroller` adapts in its own thread (a few
seconds of numpy must not stall the network thread), writes the same enrollment file as
``python -m collector enroll`` (which the worker reads again when it changes: no restart), and
answers on ``enrolled/<node_id>``: enrolled, or why not.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinyml_core.errors import ModelLoadError, PayloadError
from tinyml_core.messages import UNKNOWN_FOLDER, EnrollmentResult, EnrollmentTake
from tinyml_core.models import KeywordSpotter
from tinyml_core.topics import enrolled_topic

from .adapt import Anchors, Takes, check_take
from .store import Enrollments, adaptation_models, version_of

log = logging.getLogger(__name__)

MAX_SESSIONS = 4  # enrollments gathered at once (oldest forgotten first)
MAX_SESSION_BYTES = 16_000_000  # samples in one (8 minutes at 16 kHz): 64 MB at most in all
EXPIRE_S = 300.0  # a session without a new take this long is forgotten
MAX_QUEUED = 4  # complete enrollments waiting to be adapted


@dataclass
class _Session:
    person: str
    count: int
    takes: dict[int, EnrollmentTake] = field(default_factory=dict)
    size: int = 0  # bytes of samples
    last: float = 0.0


class TakesInbox:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions: OrderedDict[tuple[str, str], _Session] = OrderedDict()
        self._clock = clock

    def add(self, take: EnrollmentTake) -> Takes | None:
        """The whole enrollment once this take completes it; PayloadError when the take does
        not fit its session."""
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if now - s.last > EXPIRE_S]:
            log.warning("enrollment %s of %s forgotten: %d of %d takes came",
                        key[1], key[0], len(self._sessions[key].takes), self._sessions[key].count)
            del self._sessions[key]
        key = (take.node_id, take.session)
        session = self._sessions.get(key)
        if session is None:
            if len(self._sessions) >= MAX_SESSIONS:
                self._sessions.popitem(last=False)
            session = self._sessions[key] = _Session(take.person, take.count)
        if (take.person, take.count) != (session.person, session.count):
            raise PayloadError(f"take {take.index} of session {take.session} says "
                               f"{take.person!r}, {take.count} takes; the session began with "
                               f"{session.person!r}, {session.count}", field="session")
        if take.index not in session.takes:
            if session.size + len(take.pcm) > MAX_SESSION_BYTES:
                del self._sessions[key]
                raise PayloadError(f"session {take.session} holds more than "
                                   f"{MAX_SESSION_BYTES / 1e6:g} MB of samples: refused whole",
                                   field="session")
            session.takes[take.index] = take
            session.size += len(take.pcm)
        session.last = now
        if len(session.takes) < session.count:
            return None
        del self._sessions[key]
        takes = Takes(session.person)
        for index in sorted(session.takes):
            one = session.takes[index]
            clip = (one.sample_rate, np.array(one.samples))
            if one.word == UNKNOWN_FOLDER:
                takes.speech.append(clip)
            else:
                takes.words.setdefault(one.word, []).append(clip)
                if one.new_word and one.word not in takes.new_words:
                    takes.new_words.append(one.word)
        return takes


@dataclass(frozen=True)
class _Job:
    node_id: str
    session: str
    takes: Takes


class Enroller:
    """Adapts complete enrollments one after the other in a thread (see module doc)."""

    def __init__(self, path: Path, models_dir: Path | str, model: str, collector_id: str,
                 publish: Callable[[str, bytes], object]) -> None:
        self.path, self.models_dir, self.model = path, models_dir, model
        self.collector_id = collector_id
        self._publish = publish
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=MAX_QUEUED)
        self._thread = threading.Thread(target=self._run, name="enroller", daemon=True)
        self._models: tuple[KeywordSpotter, Anchors] | None = None  # loaded at the first

    def start(self) -> Enroller:
        self._thread.start()
        return self

    def submit(self, node_id: str, session: str, takes: Takes) -> None:
        try:
            self._jobs.put_nowait(_Job(node_id, session, takes))
        except queue.Full:
            self._answer(_Job(node_id, session, takes), False,
                         f"{MAX_QUEUED} enrollments are waiting already: send it again later",
                         0, "", 0.0)

    def close(self) -> None:
        """Finish the enrollment in progress (not those waiting) and stop."""
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        self._jobs.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            started = time.perf_counter()
            try:
                people, version = self._enroll(job)
            except (ValueError, OSError, ModelLoadError) as error:
                log.error("enrollment of %s on %s refused: %s", job.takes.person, job.node_id,
                          error)
                self._answer(job, False, str(error), 0, "", time.perf_counter() - started)
                continue
            seconds = time.perf_counter() - started
            speech = len(job.takes.speech)
            words = len(job.takes.words)
            done = (f"enrolled {job.takes.person}: {job.takes.count} takes of {words} "
                    f"{'word' if words == 1 else 'words'}, {speech} "
                    f"{'piece' if speech == 1 else 'pieces'} of speech"
                    + (f"; its own words: {', '.join(job.takes.new_words)}"
                       if job.takes.new_words else ""))
            log.info("%s on %s over the broker (%.1f s)", done, job.node_id, seconds)
            self._answer(job, True, done, people, version, seconds)

    def _enroll(self, job: _Job) -> tuple[int, str]:
        if self._models is None:
            self._models = adaptation_models(self.models_dir, self.model)
        spotter, anchors = self._models
        for word, clips in job.takes.words.items():
            for number, (rate, samples) in enumerate(clips, 1):
                check_take(f"{word} take {number}", rate, samples)
        for number, (rate, samples) in enumerate(job.takes.speech, 1):
            check_take(f"{UNKNOWN_FOLDER} take {number}", rate, samples)
        # Read again each time, and held meanwhile: `collector enroll` may change it too.
        # It refuses a word that is no keyword, nor the node's own, nor one to learn.
        with Enrollments.changing(self.path) as store:
            node = store.add(job.node_id, job.takes, spotter, anchors=anchors)
        return len(node.people), version_of(spotter, node)

    def _answer(self, job: _Job, enrolled: bool, reason: str, people: int, version: str,
                seconds: float) -> None:
        result = EnrollmentResult(job.node_id, self.collector_id, job.takes.person, job.session,
                                  enrolled, reason[:500], job.takes.count,
                                  len(job.takes.speech), people, version, round(seconds, 3),
                                  time.time())
        try:
            self._publish(enrolled_topic(job.node_id), result.encode())
        except Exception as error:  # the broker may be gone: the node's wait says so
            log.warning("enrollment result for %s not published: %s", job.node_id, error)
