"""``python -m node enroll``: one person records their takes at the node's own microphone.

Word by word, the person is asked to say each keyword a few times; each take is the sound
event the node's capture path cuts (the same gate, pre-roll and hangover as in service, so a
take sounds like what the collector will hear), checked as it comes: too quiet, clipped, no
sound, more than one sound, too long. A take that fails is asked for again with the reason.
Then words that sound like a keyword ("off", "on", "yeah", ...; :data:`SOUNDALIKES`), once
each, and a short text read aloud for about half a minute: their ordinary speech. The
adapted model learns to leave both ``unknown``. Every accepted take is written at once
(``<word>/take-N.wav``, ``_unknown_/like-<word>-N.wav``, ``_unknown_/speech-N.wav``), so
Ctrl-C keeps what was accepted, and a second run adds to the folder. Then the folder is sent
to the collector over the broker (:func:`send_takes`, one ``enroll/<node_id>`` message a
take), which adapts the node's keyword layer and answers on ``enrolled/<node_id>``;
``python -m collector enroll NODE DIR`` does the same from a folder where the collector runs.
"""

from __future__ import annotations

import math
import queue
import re
import secrets
import textwrap
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyml_core.errors import PayloadError
from tinyml_core.frontend import block_levels_dbfs
from tinyml_core.messages import UNKNOWN_FOLDER, EnrollmentResult, EnrollmentTake
from tinyml_core.mqtt import MqttClient, PublishWindow
from tinyml_core.recordings import RecordingError, read_wav, write_wav
from tinyml_core.topics import enroll_topic, enrolled_topic

from .microphone import FULL_SCALE, Clip, Microphone

DEFAULT_WORDS = ("yes", "no", "up", "down", "left", "right", "go", "stop")
# Words a home says all day that share sounds with a keyword (off/up, on/no, yeah/yes,
# light and write/right, lift/left, top/stop, town and dawn/down, so and goal/go): the
# models take "off" for "up" most of the time, and no dataset here has enough of them, so
# each person says them once and the node's layer learns them as `unknown` (issue 41).
SOUNDALIKES = {"off": "up", "on": "no", "yeah": "yes", "light": "right", "write": "right",
               "lift": "left", "top": "stop", "town": "down", "dawn": "down", "so": "go",
               "goal": "go"}
# Aesop's "The North Wind and the Sun", the phoneticians' standard passage, with "gave up the
# attempt" changed to "gave in": ordinary speech must not hold a keyword.
READING = (
    "The North Wind and the Sun were disputing which was the stronger, when a traveller came "
    "along wrapped in a warm cloak. They agreed that the one who first succeeded in making the "
    "traveller take his cloak off should be considered stronger than the other. Then the North "
    "Wind blew as hard as he could, but the more he blew the more closely did the traveller "
    "fold his cloak around him; and at last the North Wind gave in. Then the Sun shone out "
    "warmly, and immediately the traveller took off his cloak. And so the North Wind was "
    "obliged to confess that the Sun was the stronger of the two.")
LEVEL_BLOCK_S = 0.05


@dataclass(frozen=True)
class TakeRules:
    """What makes a take usable."""

    quiet_dbfs: float = -35.0  # its loudest 50 ms must reach this
    clipped_fraction: float = 0.001  # samples at full scale, at most this share
    max_word_s: float = 1.5  # sound (above the gate) from first to last
    listen_s: float = 8.0  # how long to wait for a take (live microphone)
    apart_s: float = 1.0  # a second sound starting this soon after a take: "more than one"
    tries: int = 5  # per take, then the take is left out


def judge(clip: Clip, gate_dbfs: float, rules: TakeRules) -> str | None:
    """Why this take cannot be used, or None."""
    samples = clip.samples
    levels = block_levels_dbfs(samples, clip.sample_rate, LEVEL_BLOCK_S)
    loudest = float(levels.max())
    if loudest < rules.quiet_dbfs:
        return (f"too quiet (loudest {loudest:.0f} dBFS, needs {rules.quiet_dbfs:.0f}): speak "
                "up or come closer")
    clipped = float(np.mean(np.abs(samples.astype(np.int32)) >= FULL_SCALE - 1))
    if clipped > rules.clipped_fraction:
        return f"clipped ({clipped:.1%} of the samples at full scale): speak softer or step back"
    loud = np.flatnonzero(levels > gate_dbfs)
    span = (loud[-1] - loud[0] + 1) * LEVEL_BLOCK_S if len(loud) else 0.0
    if span > rules.max_word_s:
        return f"too long ({span:.1f} s of sound): say just the word, once"
    return None


def _end(clip: Clip) -> float:
    return clip.start_time + len(clip.samples) / clip.sample_rate


@dataclass
class EnrollResult:
    accepted: dict[str, int]  # per word (and UNKNOWN_FOLDER) takes written this run
    missing: dict[str, int]  # takes left out after ``tries`` failures
    interrupted: bool = False
    not_reached: int = 0  # takes never asked for: stopped, or the recording ended
    soundalikes: int = 0  # of the takes in accepted[UNKNOWN_FOLDER]: words like a keyword

    @property
    def complete(self) -> bool:
        return not self.missing and not self.not_reached and not self.interrupted

    def line(self) -> str:
        words = sum(n for word, n in self.accepted.items() if word != UNKNOWN_FOLDER)
        speech = self.accepted.get(UNKNOWN_FOLDER, 0) - self.soundalikes
        missing = sum(self.missing.values())
        left_out = ", ".join(f"{word} {n}" for word, n in self.missing.items())
        alike = f", {self.soundalikes} words like them" if self.soundalikes else ""
        return (f"{words} keyword takes{alike} and {speech} pieces of speech kept"
                + (f", {missing} takes left out ({left_out})" if missing else "")
                + (f", {self.not_reached} takes not recorded ("
                   + ("interrupted)" if self.interrupted else "the recording ended)")
                   if self.not_reached else (" (interrupted)" if self.interrupted else "")))


class Enrollment:
    """Prompts, listens, checks and writes (see module doc). ``live``: a real microphone, whose
    events that came before a prompt (a cough while reading it) are thrown away; a recording's
    events are taken in order."""

    def __init__(self, microphone: Microphone, out_dir: Path, *, gate_dbfs: float,
                 rules: TakeRules = TakeRules(), live: bool = True,
                 say: Callable[[str], None] = print,
                 stopped: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.microphone, self.out_dir, self.gate_dbfs = microphone, out_dir, gate_dbfs
        self.rules, self.live, self.say, self.stopped = rules, live, say, stopped
        self.clock = clock
        self._held: Clip | None = None  # an event looked at and kept for the next take

    # --- listening ------------------------------------------------------------------------
    def _finished(self) -> bool:
        return (self.microphone.finished.is_set() and self.microphone.clips.empty()
                and self._held is None)

    def _next_event(self, timeout_s: float) -> Clip | None:
        if self._held is not None:
            clip, self._held = self._held, None
            return clip
        deadline = self.clock() + timeout_s
        while not self.stopped() and self.clock() < deadline:
            try:
                return self.microphone.clips.get(timeout=0.05)
            except queue.Empty:
                if self.microphone.finished.is_set():
                    return None
        return None

    def _drain(self) -> None:
        if not self.live:
            return
        self._held = None
        while True:
            try:
                self.microphone.clips.get_nowait()
            except queue.Empty:
                return

    def take(self) -> Clip | str | None:
        """One take: the clip, why it cannot be used, or None once stopped (or at the end of
        a recording)."""
        self._drain()
        clip = self._next_event(self.rules.listen_s if self.live else math.inf)
        if clip is None:
            if self.stopped() or self._finished():
                return None
            return f"heard nothing in {self.rules.listen_s:g} s"
        # Another sound soon after: the person said it twice, or something else was heard.
        later = self._next_event(self.rules.apart_s + self.microphone.capture.hangover_s)
        if later is not None and later.start_time < _end(clip) + self.rules.apart_s:
            return "heard more than one sound: say the word once, then wait"
        self._held = later
        return judge(clip, self.gate_dbfs, self.rules) or clip

    # --- writing ----------------------------------------------------------------------------
    def _write(self, folder: str, stem: str, clip: Clip) -> Path:
        directory = self.out_dir / folder
        directory.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for p in directory.glob(f"{stem}-*.wav")
                 if (m := re.fullmatch(rf"{stem}-(\d+)\.wav", p.name))]
        path = directory / f"{stem}-{max(taken, default=0) + 1}.wav"
        write_wav(path, clip.sample_rate, clip.samples)
        return path

    # --- the session ------------------------------------------------------------------------
    def words(self, words: Sequence[str], takes: int, result: EnrollResult) -> None:
        total = len(words) * takes
        asked = [(word, number) for word in words for number in range(1, takes + 1)]
        for done, (word, number) in enumerate(asked):
            accepted = self._ask(f"[{done + 1:>2}/{total}] say \"{word}\" (take {number} of "
                                 f"{takes})", word)
            if accepted is None:  # stopped, or the recording ended
                result.interrupted = self.stopped()
                result.not_reached = total - done
                return
            tally = result.accepted if accepted else result.missing
            tally[word] = tally.get(word, 0) + 1

    def soundalikes(self, words: Sequence[str], result: EnrollResult) -> None:
        """Each of ``words`` once, kept as other speech (``_unknown_/like-<word>-N.wav``):
        what the node's layer must not take for the keyword it sounds like."""
        if not words or self.stopped() or self._finished():
            return
        self.say("Now words that sound like the keywords but are none: the model learns "
                 "to leave them alone.")
        for done, word in enumerate(words):
            accepted = self._ask(f"[{done + 1:>2}/{len(words)}] say \"{word}\"", word,
                                 UNKNOWN_FOLDER, f"like-{word}")
            if accepted is None:
                result.interrupted = self.stopped()
                result.not_reached += len(words) - done
                return
            if accepted:
                result.accepted[UNKNOWN_FOLDER] = result.accepted.get(UNKNOWN_FOLDER, 0) + 1
                result.soundalikes += 1
            else:
                result.missing[f"like {word}"] = 1

    def _ask(self, prompt: str, word: str, folder: str | None = None,
             stem: str = "take") -> bool | None:
        """Ask for one take until it is usable (True), ``tries`` times (False), or stopped."""
        for attempt in range(1, self.rules.tries + 1):
            if self.stopped() or self._finished():
                return None
            self.say(prompt + (f", try {attempt}" if attempt > 1 else ""))
            outcome = self.take()
            if outcome is None:
                return None
            if isinstance(outcome, str):
                self.say(f"        again: {outcome}")
                continue
            path = self._write(folder or word, stem, outcome)
            self.say(f"        ok: {len(outcome.samples) / outcome.sample_rate:.1f} s at "
                     f"{outcome.level_dbfs:.0f} dBFS -> {path}")
            return True
        self.say(f"        left out after {self.rules.tries} tries")
        return False

    def speech(self, seconds: float, result: EnrollResult) -> None:
        """Everything said for ``seconds`` (stream time) after the first sound: other speech."""
        if seconds <= 0 or self.stopped() or self._finished():
            return
        self.say(f"Now read this aloud, at your usual pace, for about {seconds:g} s:\n")
        self.say(_wrap(READING) + "\n")
        self._drain()
        first = self._next_event(self.rules.listen_s * 2 if self.live else math.inf)
        if first is None:
            self.say("        heard nothing; no speech kept")
            return
        deadline = first.start_time + seconds
        clip: Clip | None = first
        while clip is not None and clip.start_time < deadline and not self.stopped():
            if clip.level_dbfs > self.gate_dbfs:
                self._write(UNKNOWN_FOLDER, "speech", clip)
                result.accepted[UNKNOWN_FOLDER] = result.accepted.get(UNKNOWN_FOLDER, 0) + 1
                self.say(f"        {result.accepted[UNKNOWN_FOLDER]} pieces, "
                         f"{clip.start_time - first.start_time:.0f} of {seconds:g} s")
            remaining = deadline - _end(clip)
            clip = self._next_event(max(0.0, remaining) + 2 * self.microphone.capture.max_seconds
                                    if self.live else math.inf)
        result.interrupted = result.interrupted or self.stopped()


def _wrap(text: str, width: int = 76) -> str:
    return textwrap.fill(text, width, initial_indent="    ", subsequent_indent="    ")


def enroll(microphone: Microphone, out_dir: Path, words: Sequence[str], takes: int,
           speech_s: float, *, gate_dbfs: float, rules: TakeRules = TakeRules(),
           live: bool = True, say: Callable[[str], None] = print,
           stopped: Callable[[], bool] = lambda: False,
           soundalikes: Sequence[str] = ()) -> EnrollResult:
    """The whole session: ``takes`` of each word, then each of ``soundalikes`` once, then
    ``speech_s`` of reading."""
    session = Enrollment(microphone, out_dir, gate_dbfs=gate_dbfs, rules=rules, live=live,
                         say=say, stopped=stopped)
    result = EnrollResult({}, {})
    session.words(words, takes, result)
    session.soundalikes(soundalikes, result)
    session.speech(speech_s, result)
    return result


SEND_WINDOW = 8  # takes in flight at once (each up to ~1 MB)


def folder_takes(folder: Path) -> list[tuple[str, Path]]:
    """(word, file) of every take in ``folder`` (``<word>/*.wav``), in order; RecordingError
    when there is none."""
    takes = [(sub.name, path) for sub in sorted(p for p in folder.iterdir() if p.is_dir())
             for path in sorted(sub.glob("*.wav"))] if folder.is_dir() else []
    if not takes:
        raise RecordingError(f"{folder}: no takes (<word>/*.wav) to send")
    return takes


def send_takes(client: MqttClient, node_id: str, person: str, folder: Path, wait_s: float,
               say: Callable[[str], None] = print,
               stopped: Callable[[], bool] = lambda: False,
               new_words: Collection[str] = ()) -> EnrollmentResult | None:
    """Send every take in ``folder`` as one enrollment of ``person`` and wait up to ``wait_s``
    for the collector's answer (None when none came). ``new_words``: words of the node's own
    for the collector to learn (their takes say so)."""
    takes = folder_takes(folder)
    missing = sorted(set(new_words) - {word for word, _ in takes})
    if missing:
        raise RecordingError(f"{folder}: no takes of {', '.join(missing)} "
                             f"({missing[0]}/*.wav) to learn the word from")
    session = secrets.token_hex(4)
    client.subscribe(enrolled_topic(node_id))  # before sending: the answer is not retained
    window: PublishWindow[int] = PublishWindow(client, SEND_WINDOW)
    sent = 0
    for index, (word, path) in enumerate(takes):
        rate, samples = read_wav(path)
        try:
            take = EnrollmentTake.from_samples(node_id, person, session, word, index,
                                               len(takes), rate, samples, time.time(),
                                               new_word=word in new_words)
        except PayloadError as error:
            raise RecordingError(f"{path}: {error}") from None
        while window.room() == 0 and not stopped():
            sent += len(window.wait_all(0.05))
        if stopped():
            return None
        window.publish(index, enroll_topic(node_id), take.encode())
    sent += len(window.wait_all(30.0, stopped))
    say(f"sent {sent} of {len(takes)} takes of {person} (session {session}); waiting up to "
        f"{wait_s:g} s for the collector")
    deadline = time.monotonic() + wait_s
    while not stopped() and (remaining := deadline - time.monotonic()) > 0:
        message = client.receive(timeout=min(0.2, remaining))
        if message is None:
            continue
        try:
            result = EnrollmentResult.decode(message.payload)
        except PayloadError:
            continue
        if result.session == session:
            return result
    return None
