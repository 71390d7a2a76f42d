"""`python -m node enroll`: takes recorded through the node's own capture path, each checked,
written as `collector enroll` reads them, and sent to a running collector over a real
Mosquitto, which enrolls the person and answers. The microphone is a recording of the bundled
clips with the faults a person makes in front of one (too quiet, clipped, said twice)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from collector.enrollment.adapt import read_takes
from node.__main__ import main
from node.enroll import DEFAULT_WORDS, TakeRules, enroll, judge
from node.microphone import Capture, Clip, Microphone, RecordedStream
from tests.collector_runner import start_worker, stop_worker
from tests.conftest import REPO_ROOT, broker_config
from tests.test_enrollment import MISSED, enroll_folder
from tests.waiting import wait_for
from tinyml_core.broker import LocalMosquitto
from tinyml_core.messages import AudioClip, EnrollmentTake, ErrorRecord, KeywordResult
from tinyml_core.mqtt import MqttClient
from tinyml_core.recordings import read_wav, write_wav
from tinyml_core.topics import audio_topic, enroll_topic

SPEECH = REPO_ROOT / "samples" / "speech"
RATE = 16_000


def sample(word: str, index: int = 0) -> np.ndarray:
    rate, samples = read_wav(sorted((SPEECH / word).glob("*.wav"))[index])
    assert rate == RATE
    return samples


def quiet(seconds: float) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 3, round(seconds * RATE)).astype(np.int16)


def scaled(samples: np.ndarray, db: float) -> np.ndarray:
    return np.clip(samples * 10 ** (db / 20), -32768, 32767).astype(np.int16)


def session_recording() -> np.ndarray:
    """yes, yes too quiet, yes; no said twice, no, no clipped, no; then four other words."""
    gap = quiet(2.5)
    # (A soft "yes" of the bundle falls below the gate mid-word: two events, refused as such.)
    parts = [gap, sample("yes", 1), gap, scaled(sample("yes", 1), -30), gap, sample("yes", 1),
             gap, sample("no", 0), quiet(0.6), sample("no", 0), gap, sample("no", 0), gap,
             scaled(sample("no", 0), 20), gap, sample("no", 0), gap]
    for path in sorted((SPEECH / "_unknown_").glob("*.wav")):
        parts += [read_wav(path)[1], quiet(0.6)]
    return np.concatenate([*parts, gap])


def recorded_microphone(samples: np.ndarray) -> Microphone:
    return Microphone(RecordedStream(samples, RATE, speed=0), RATE, Capture(),
                      clock=lambda: 1_000.0, block_when_full=True, max_waiting=4).start()


def test_each_take_is_checked_and_asked_for_again_with_the_reason(tmp_path: Path) -> None:
    said: list[str] = []
    microphone = recorded_microphone(session_recording())
    try:
        result = enroll(microphone, tmp_path / "ann", ("yes", "no"), 2, 30.0, gate_dbfs=-50.0,
                        live=False, say=said.append)
    finally:
        microphone.stop()
    text = "\n".join(said)
    assert result.accepted == {"yes": 2, "no": 2, "_unknown_": 4} and not result.missing, text
    assert "again: too quiet" in text and "again: heard more than one sound" in text
    assert "again: clipped" in text
    assert "North Wind" in text  # the text to read
    takes = read_takes(tmp_path / "ann", "ann", DEFAULT_WORDS)  # as `collector enroll` reads
    assert {word: len(clips) for word, clips in takes.words.items()} == {"yes": 2, "no": 2}
    assert len(takes.speech) == 4
    # The take is the event as the node cuts it: the word whole, with pre-roll around it.
    rate, first = read_wav(tmp_path / "ann" / "yes" / "take-1.wav")
    assert rate == RATE and len(first) >= RATE
    assert np.abs(first.astype(np.int32)).max() == np.abs(sample("yes", 1).astype(np.int32)).max()


def test_stopping_keeps_what_was_accepted_and_a_second_run_adds_to_it(tmp_path: Path) -> None:
    accepted: list[str] = []

    def say(line: str) -> None:
        accepted.extend(["x"] if "ok:" in line else [])

    microphone = recorded_microphone(session_recording())
    try:
        result = enroll(microphone, tmp_path / "bob", ("yes", "no"), 2, 30.0, gate_dbfs=-50.0,
                        live=False, say=say, stopped=lambda: len(accepted) >= 1)
    finally:
        microphone.stop()
    assert result.interrupted and result.accepted == {"yes": 1} and result.not_reached == 3
    assert "3 takes not recorded (interrupted)" in result.line()
    assert [p.name for p in (tmp_path / "bob" / "yes").iterdir()] == ["take-1.wav"]
    recording = tmp_path / "more.wav"
    write_wav(recording, RATE, np.concatenate([quiet(1.0), sample("yes", 1), quiet(2.5)]))
    code = main(["enroll", "--microphone", str(recording), "--out", str(tmp_path / "bob"),
                 "--words", "yes", "--takes", "1", "--speech-s", "0", "--no-send"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "bob" / "yes").iterdir()) == \
        ["take-1.wav", "take-2.wav"]


def test_words_like_a_keyword_are_asked_for_once_and_kept_as_other_speech(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gap = quiet(2.5)
    others = sorted((SPEECH / "_unknown_").glob("*.wav"))
    recording = np.concatenate([gap, sample("yes", 1), gap, read_wav(others[0])[1], gap,
                                read_wav(others[1])[1], gap])
    said: list[str] = []
    microphone = recorded_microphone(recording)
    try:
        result = enroll(microphone, tmp_path / "ann", ("yes",), 1, 0.0, gate_dbfs=-50.0,
                        live=False, say=said.append, soundalikes=("yeah", "bed"))
    finally:
        microphone.stop()
    assert result.complete and result.soundalikes == 2, "\n".join(said)
    assert result.line() == "1 keyword takes, 2 words like them and 0 pieces of speech kept"
    assert any('say "yeah"' in line for line in said)
    assert sorted(p.name for p in (tmp_path / "ann" / "_unknown_").iterdir()) == \
        ["like-bed-1.wav", "like-yeah-1.wav"]
    takes = read_takes(tmp_path / "ann", "ann", DEFAULT_WORDS)  # as `collector enroll` reads
    assert list(takes.words) == ["yes"] and len(takes.speech) == 2
    # The command asks for the words like the keywords recorded; a keyword cannot be one.
    write_wav(tmp_path / "mic.wav", RATE, recording)
    assert main(["enroll", "--microphone", str(tmp_path / "mic.wav"), "--out",
                 str(tmp_path / "bob"), "--words", "yes", "--takes", "1", "--speech-s", "0",
                 "--no-send"]) == 0
    assert "then 1 words like them once" in capsys.readouterr().out
    assert (tmp_path / "bob" / "_unknown_" / "like-yeah-1.wav").is_file()
    assert main(["enroll", "--microphone", str(tmp_path / "mic.wav"), "--words", "yes",
                 "--soundalikes", "off,yes"]) == 1
    assert "--soundalikes yes: a keyword cannot also be a word like one" in \
        capsys.readouterr().err


def test_a_recording_that_ends_early_says_what_is_missing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recording = tmp_path / "short.wav"
    write_wav(recording, RATE, np.concatenate([quiet(1.0), sample("yes", 1), quiet(2.5)]))
    code = main(["enroll", "--microphone", str(recording), "--out", str(tmp_path / "cy"),
                 "--words", "yes,no", "--takes", "1", "--speech-s", "0", "--person", "cy",
                 "--node-id", "kitchen", "--no-send"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "1 keyword takes and 0 pieces of speech kept, 1 takes not recorded (the recording " \
        "ended)" in out
    assert f"python -m collector enroll kitchen {tmp_path / 'cy'} --person cy" in out
    assert main(["enroll", "--microphone", str(tmp_path / "none.wav")]) == 1
    assert "none.wav: file not found" in capsys.readouterr().err


def test_judging_a_take() -> None:
    rules = TakeRules()
    word = np.concatenate([quiet(0.3), sample("yes", 1), quiet(0.3)])
    assert judge(Clip(0.0, RATE, word, -20.0), -50.0, rules) is None
    long = np.concatenate([word, sample("yes", 1), sample("yes", 1)])
    assert "too long" in str(judge(Clip(0.0, RATE, long, -20.0), -50.0, rules))
    assert "too quiet" in str(judge(Clip(0.0, RATE, scaled(word, -25), -45.0), -50.0, rules))
    assert "clipped" in str(judge(Clip(0.0, RATE, scaled(word, 25), 0.0), -50.0, rules))


def send(mosquitto: LocalMosquitto, folder: Path, *args: str) -> int:
    return main(["enroll", "--send", str(folder), "--node-id", "kitchen", "--broker",
                 f"{mosquitto.host}:{mosquitto.port}", "--wait", "60", *args])


@dataclass
class Enrolling:
    """A collector worker taking enrollments, a node "kitchen" and an observer, on a real
    Mosquitto."""

    enrolled_file: Path
    observer: MqttClient
    node: MqttClient


    def answer(self, rate: int, samples: np.ndarray, seq: int) -> KeywordResult:
        """The collector's answer to ``samples`` said at the node (sound event ``seq``)."""
        clip = AudioClip.from_samples("kitchen", 1_767_225_600.0 + 10 * seq, seq, rate,
                                      samples)
        assert self.node.publish(audio_topic("kitchen"), clip.encode()).wait(5)
        message = self.observer.receive(timeout=10)
        assert message is not None
        return KeywordResult.decode(message.payload)


@pytest.fixture
def enrolling(mosquitto: LocalMosquitto, tmp_path: Path) -> Iterator[Enrolling]:
    with enrolling_on(mosquitto, tmp_path, "kws_b") as running:
        yield running


@contextlib.contextmanager
def enrolling_on(mosquitto: LocalMosquitto, tmp_path: Path, model: str
                 ) -> Iterator[Enrolling]:
    enrolled_file = tmp_path / "enrolled.json"
    worker, thread = start_worker(mosquitto, "collector-1", forecasts=(), keyword_model=model,
                                  enrollment_path=str(enrolled_file))
    observer = MqttClient(broker_config(mosquitto), "observer", publish_availability=False)
    node = MqttClient(broker_config(mosquitto), "kitchen", publish_availability=False)
    try:
        observer.connect().subscribe("predictions/#")
        observer.subscribe("errors/#")
        node.connect()
        yield Enrolling(enrolled_file, observer, node)
    finally:
        node.close()
        observer.close()
        stop_worker(worker, thread)


def test_takes_sent_over_the_broker_enroll_the_person_without_a_restart(
        mosquitto: LocalMosquitto, enrolling: Enrolling, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    enrolled_file = enrolling.enrolled_file
    rate, samples = read_wav(SPEECH / MISSED[0] / MISSED[1])  # kws_b misses it

    def answer(seq: int) -> KeywordResult:
        return enrolling.answer(rate, samples, seq)

    before = answer(0)
    assert before.label != "go" and "+enrolled-" not in before.model_version
    assert send(mosquitto, enroll_folder(tmp_path), "--person", "ann") == 0
    out = capsys.readouterr().out
    assert "collector-1: enrolled ann: 16 takes of 8 words, 4 pieces of speech; 1 person " \
           "enrolled on kitchen" in out, out
    assert enrolled_file.exists()
    after: list[KeywordResult] = []
    # The worker reads the file again within ENROLLMENT_CHECK_S.
    assert wait_for(lambda: "+enrolled-" in (after.append(answer(len(after) + 1))
                                             or after[-1].model_version), timeout=15)
    # Their "go" now leads (below kws_b's threshold for this soft take: `unknown`, not
    # "down").
    heard = after[-1].probabilities
    assert max(heard, key=heard.__getitem__) == "go", heard
    assert heard["go"] > before.probabilities["go"] + 0.3
    assert after[-1].label in ("go", "unknown")


def test_bad_takes_over_the_broker_get_a_clear_answer_and_change_nothing(
        mosquitto: LocalMosquitto, enrolling: Enrolling, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    observer, node, enrolled_file = enrolling.observer, enrolling.node, enrolling.enrolled_file
    # A word the model does not know: the whole enrollment is refused with the reason.
    folder = enroll_folder(tmp_path, ("yes",))
    (folder / "yes").rename(folder / "banana")
    assert send(mosquitto, folder, "--person", "ann") == 1
    assert "did not enroll ann: 'banana' is not a keyword of kws_b" in capsys.readouterr().out
    # Silence, as a take.
    silent = tmp_path / "bob"
    (silent / "yes").mkdir(parents=True)
    write_wav(silent / "yes" / "take-1.wav", RATE, np.zeros(RATE, dtype=np.int16))
    assert send(mosquitto, silent, "--person", "bob") == 1
    assert "silence" in capsys.readouterr().out
    # Another node's takes on this node's topic, and garbage: error records.
    take = EnrollmentTake.from_samples("hallway", "eve", "0123abcd", "yes", 0, 1, RATE,
                                       sample("yes", 1), 1_767_225_600.0)
    for payload in (take.encode(), b"{not json"):
        assert node.publish(enroll_topic("kitchen"), payload).wait(5)
    reasons = []
    for _ in range(2):
        message = observer.receive(timeout=10)
        assert message is not None and message.topic == "errors/kitchen"
        reasons.append(ErrorRecord.decode(message.payload).reason)
    assert "a node enrolls only its own people" in reasons[0]
    assert not enrolled_file.exists()


def test_without_a_collector_the_takes_stay_and_the_way_to_send_them_is_said(
        mosquitto: LocalMosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = enroll_folder(tmp_path, ("yes",))
    assert send(mosquitto, folder, "--person", "ann", "--wait", "1") == 1
    out = capsys.readouterr().out
    assert "no answer from a collector within 1 s" in out
    assert f"python -m node enroll --send {folder} --person ann" in out


def test_the_collector_gathers_a_session_whole_and_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import collector.enrollment.broker as enroller
    from collector.enrollment.broker import TakesInbox
    from tinyml_core.errors import PayloadError

    now = [0.0]
    inbox = TakesInbox(clock=lambda: now[0])

    def take(index: int, word: str = "yes", person: str = "ann", session: str = "0123abcd",
             count: int = 3) -> EnrollmentTake:
        return EnrollmentTake.from_samples("kitchen", person, session, word, index, count, RATE,
                                           sample("yes", 1), 1_767_225_600.0)

    assert inbox.add(take(0)) is None
    assert inbox.add(take(0)) is None  # sent twice (QoS 1): counted once
    with pytest.raises(PayloadError, match="the session began with 'ann'"):
        inbox.add(take(1, person="bob"))
    assert inbox.add(take(1, "_unknown_")) is None
    whole = inbox.add(take(2, "no"))
    assert whole is not None and whole.person == "ann"
    assert {w: len(c) for w, c in whole.words.items()} == {"yes": 1, "no": 1}
    assert len(whole.speech) == 1
    # A session left incomplete is forgotten: its takes do not complete a later one.
    assert inbox.add(take(0, session="feedbeef", count=2)) is None
    now[0] += enroller.EXPIRE_S + 1
    assert inbox.add(take(1, session="feedbeef", count=2)) is None
    # More samples than a session may hold: refused whole.
    monkeypatch.setattr(enroller, "MAX_SESSION_BYTES", 3 * RATE * 2)
    assert inbox.add(take(0, session="aaaa0000", count=9)) is None
    with pytest.raises(PayloadError, match="refused whole"):
        for index in range(1, 9):
            inbox.add(take(index, session="aaaa0000", count=9))


def test_a_word_of_the_households_own_is_learned_over_the_broker(
        mosquitto: LocalMosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`node enroll --word happy`: the takes say it is a new word, the collector learns it for
    this node only and answers it from then on, without a restart."""
    kim = REPO_ROOT / "samples" / "enroll" / "kim"
    rate, samples = read_wav(REPO_ROOT / "samples" / "enroll" / "kim-happy.wav")
    with enrolling_on(mosquitto, tmp_path, "kws_e") as enrolling:

        def answer(seq: int) -> KeywordResult:
            return enrolling.answer(rate, samples, seq)

        assert answer(0).label == "unknown"
        # Without --word the takes of a word the model does not know are refused.
        assert send(mosquitto, kim, "--person", "kim") == 1
        assert "to teach it a word of its own, name it: --word happy" in \
            capsys.readouterr().out
        assert send(mosquitto, kim, "--person", "kim", "--word", "happy") == 0
        out = capsys.readouterr().out
        assert "collector-1: enrolled kim: 2 takes of 1 word" in out, out
        after: list[KeywordResult] = []
        assert wait_for(lambda: (after.append(answer(len(after) + 1))
                                 or after[-1].label == "happy"), timeout=15)
        assert "+enrolled-" in after[-1].model_version and "happy" in after[-1].probabilities
        # A word that is no proper name is refused by the node before anything is sent.
        assert main(["enroll", "--send", str(kim), "--node-id", "kitchen", "--word", "Happy!",
                     "--broker", f"{mosquitto.host}:{mosquitto.port}"]) != 0


def test_a_take_says_whether_its_word_is_a_new_one() -> None:
    from tinyml_core.errors import PayloadError

    def take(word: str, new_word: bool) -> EnrollmentTake:
        return EnrollmentTake.from_samples("kitchen", "kim", "0123abcd", word, 0, 1, RATE,
                                           sample("yes", 1), 1_767_225_600.0, new_word)

    marked = take("lights", True)
    assert b'"new_word":true' in marked.encode().replace(b" ", b"")
    assert EnrollmentTake.decode(marked.encode()).new_word is True
    plain = take("yes", False)
    assert b"new_word" not in plain.encode()
    assert EnrollmentTake.decode(plain.encode()).new_word is False
    for word in ("_unknown_", "Lights"):
        with pytest.raises(PayloadError, match="a word of a node's own"):
            take(word, True)


def test_a_word_of_ones_own_is_recorded_like_a_keyword_and_named_on_sending(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`node enroll --word happy` records only that word (no keywords, no soundalikes), and
    the way to send the takes keeps --word."""
    kim = REPO_ROOT / "samples" / "enroll" / "kim" / "happy"
    takes = [read_wav(path)[1] for path in sorted(kim.glob("*.wav"))]
    recording = tmp_path / "kim.wav"
    write_wav(recording, RATE, np.concatenate([quiet(1.0), takes[0], quiet(2.5), takes[1],
                                               quiet(2.5)]))
    code = main(["enroll", "--microphone", str(recording), "--out", str(tmp_path / "kim"),
                 "--person", "kim", "--word", "happy", "--takes", "2", "--speech-s", "0",
                 "--no-send", "--node-id", "kitchen"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 takes of happy" in out and "words like them" not in out
    assert sorted(p.name for p in (tmp_path / "kim").iterdir()) == ["happy"]
    assert f"--send {tmp_path / 'kim'} --person kim --word happy" in out
    assert f"collector enroll kitchen {tmp_path / 'kim'} --person kim --word happy" in out
    for bad in ("Happy", "two words", "stop!"):
        assert main(["enroll", "--word", bad, "--no-send", "--microphone", str(recording)]) != 0
        said = capsys.readouterr()
        assert "a word of the household's own is 1-24 lower-case" in said.out + said.err
