"""``python -m node replay``: recordings and CSVs come out as they went in, with their timing."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from node.microphone import Capture
from node.replay import items_from_microphone, items_from_recording, load_stream, replay
from tests.conftest import REPO_ROOT, broker_config
from tests.flaky_link import FlakyLink
from tinyml_core.broker import LocalMosquitto
from tinyml_core.messages import AudioClip, ClimateReading, decode_sensor_message
from tinyml_core.mqtt import InboundMessage, MqttClient
from tinyml_core.recordings import (
    RecordedMessage,
    RecordingError,
    read_climate_csv,
    read_wav,
    recording_line,
)

SAMPLE_CSV = REPO_ROOT / "samples" / "climate" / "mpi_roof_2024-10-18_2024-10-20.csv"


def arrivals(client: MqttClient, count: int,
             timeout: float = 10.0) -> list[tuple[float, InboundMessage]]:
    """(arrival time, message): the time paho handed it over, not when the test looked."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        message = client.receive(timeout=0.2)
        if message is not None:
            out.append((message.received_at, message))
    return out


def short_csv(tmp_path: Path, rows: int) -> Path:
    lines = SAMPLE_CSV.read_text(encoding="iso-8859-1").splitlines()
    path = tmp_path / "short.csv"
    path.write_text("\n".join(lines[:rows + 1]) + "\n", encoding="iso-8859-1")
    return path


def test_csv_replay_reproduces_the_readings_at_the_files_time_step(
        connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    csv = short_csv(tmp_path, 11)
    series = read_climate_csv(csv)
    listener = connect("listener")
    listener.subscribe("sensors/#")
    items, _ = load_stream(csv, None, "pi-replay", "unused")
    publisher = connect("replayer", publish_availability=False)
    # 10 minutes of data per 0.1 s (no collector: none to wait for)
    result = replay(publisher, items, speed=600 / 0.1, confirm=False)
    assert (result.sent, result.acknowledged) == (11, 11)
    got = arrivals(listener, 11)
    readings = [decode_sensor_message(m.topic, m.payload) for _, m in got]
    assert all(isinstance(r, ClimateReading) and r.node_id == "pi-replay" for r in readings)
    assert [r.time for r in readings] == list(series.times)  # original timestamps
    assert [r.temperature for r in readings] == list(series.temperature)
    assert [r.seq for r in readings] == list(range(11))
    span = got[-1][0] - got[0][0]
    assert 0.8 < span < 1.6  # 10 steps of 0.1 s (loose: a shared CI machine)


def test_recording_replay_keeps_each_message_with_scaled_gaps_and_skips_predictions(
        connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    recorded_reading = ClimateReading("pi-rec", 1_729_300_000.0, 7, 21.5, 40.0, "0123abcd")
    reading = recorded_reading.encode()
    recorded = [
        RecordedMessage(100.0, "sensors/pi-rec/climate", reading),
        RecordedMessage(100.5, "predictions/pi-rec/forecast", b"{}"),
        RecordedMessage(102.0, "sensors/pi-rec/audio", b"\xff\xfe not a clip"),  # kept as is
        RecordedMessage(104.0, "sensors/pi-rec/climate", reading),
    ]
    path = tmp_path / "stream.jsonl"
    path.write_text("".join(recording_line(m) + "\n" for m in recorded), encoding="utf-8")
    listener = connect("listener")
    listener.subscribe("sensors/#")
    items, skipped = items_from_recording(path)
    assert skipped == 1
    result = replay(connect("replayer", publish_availability=False), items, speed=10.0,
                    confirm=False)
    assert (result.sent, result.acknowledged) == (3, 3)
    got = arrivals(listener, 3)
    # The same messages, each valid one under the replay's own spool id (a replay is a
    # numbering of its own); a malformed one byte for byte.
    spools = {ClimateReading.decode(m.payload).spool for _, m in got if m.topic.endswith("e")}
    assert len(spools) == 1 and None not in spools and "0123abcd" not in spools
    replay_spool = spools.pop()
    assert [(m.topic, m.payload) for _, m in got] == [
        (recorded[0].topic, dataclasses.replace(recorded_reading, spool=replay_spool).encode()),
        (recorded[2].topic, recorded[2].payload),
        (recorded[3].topic, dataclasses.replace(recorded_reading, spool=replay_spool).encode())]
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(got)]
    assert gaps == pytest.approx([0.2, 0.2], abs=0.1)


def test_replay_as_another_node_re_addresses_every_message(tmp_path: Path) -> None:
    clip = AudioClip("pi-a", 1_729_300_000.0, 1, 8000, b"\x01\x00" * 80).encode()
    path = tmp_path / "stream.jsonl"
    path.write_text(recording_line(RecordedMessage(1.0, "sensors/pi-a/audio", clip)) + "\n"
                    + recording_line(RecordedMessage(2.0, "sensors/pi-a/climate", b"junk")) + "\n")
    items, skipped = items_from_recording(path, node_id="pi-b")
    assert skipped == 1  # junk cannot be re-addressed
    moved = decode_sensor_message(items[0].topic, items[0].payload)
    assert items[0].topic == "sensors/pi-b/audio" and moved.node_id == "pi-b"
    assert isinstance(moved, AudioClip) and moved.pcm == b"\x01\x00" * 80


def test_broken_recordings_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"received_at": 1, "topic": "sensors/a/climate", "payload": "x"}\n[1, 2]\n')
    with pytest.raises(RecordingError, match=r"bad\.jsonl:2: .*JSON object"):
        items_from_recording(path)


def test_replay_command_ends_by_itself_and_reports_what_was_acknowledged(
        mosquitto: LocalMosquitto, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "node", "replay", str(short_csv(tmp_path, 20)), "--audio-dir",
         str(REPO_ROOT / "samples" / "speech"), "--speed", "0", "--broker", mosquitto.address,
         "--node-id", "pi-cli", "-q"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # 20 readings + 16 words + 6 others; no collector runs, so after waiting for one to
    # confirm, the replay goes on as if none were asked for, and says so.
    assert "sent 42, acknowledged 42, no collector confirmed" in done.stdout
    assert "no collector confirmed anything within 10 s" in done.stderr


def test_replay_command_without_a_stream_explains_itself() -> None:
    done = subprocess.run([sys.executable, "-m", "node", "replay"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "give a STREAM" in done.stderr


def first_arrival_seqs(listener: MqttClient, count: int, timeout: float = 30) -> list[int]:
    seqs: list[int] = []
    deadline = time.monotonic() + timeout
    while len(set(seqs)) < count and time.monotonic() < deadline:
        message = listener.receive(timeout=0.2)
        if message is not None:
            seqs.append(decode_sensor_message(message.topic, message.payload).seq)
    return list(dict.fromkeys(seqs))


def test_replay_command_across_a_broker_restart_delivers_everything(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient]) -> None:
    # It died with "RuntimeError: Message publish failed: The client is not currently
    # connected" after the restart, 113 of 300 readings delivered.
    listener = connect("listener", persistent_session=True, publish_availability=False)
    listener.subscribe("sensors/#")
    rows = len(read_climate_csv(SAMPLE_CSV).times)
    process = subprocess.Popen(
        [sys.executable, "-m", "node", "replay", str(SAMPLE_CSV), "--speed", "60000",
         "--broker", mosquitto.address, "--node-id", "pi-replay", "-q"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # about a third of the stream (10 ms per row)
    mosquitto.stop()
    time.sleep(0.5)
    mosquitto.start()
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert f"sent {rows}, acknowledged {rows}" in stdout
    assert first_arrival_seqs(listener, rows) == list(range(rows))


def test_replay_across_connection_drops_delivers_everything_in_order(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    listener = connect("listener", persistent_session=True, publish_availability=False)
    listener.subscribe("sensors/#")
    link = FlakyLink(mosquitto.host, mosquitto.port)
    items, _ = load_stream(SAMPLE_CSV, None, "pi-replay", "unused")
    publisher = connect("replayer", publish_availability=False, config=dataclasses.replace(
        broker_config(mosquitto), port=link.port, reconnect_min_s=0.01, reconnect_max_s=0.05))
    cutter = threading.Event()

    def cut_every_20_ms() -> None:
        while not cutter.wait(0.02):
            link.cut()

    threading.Thread(target=cut_every_20_ms, daemon=True).start()
    try:
        result = replay(publisher, items, speed=600 / 0.003, window=10, confirm=False)
    finally:
        cutter.set()
        link.close()
    assert link.cuts >= 10
    assert (result.sent, result.acknowledged) == (len(items), len(items))
    assert first_arrival_seqs(listener, len(items)) == list(range(len(items)))


# ------------------------------------------------------------------ a WAV as the microphone


def words_wav(tmp_path: Path, rate: int = 16_000, channels: int = 1) -> tuple[Path, np.ndarray]:
    """Six seconds of quiet room with two sample words, at 1.0 s and 3.5 s."""
    audio = np.random.default_rng(0).normal(0, 20, 6 * 16_000)
    for at, word in ((1.0, "yes"), (3.5, "stop")):
        _, clip = read_wav(next((REPO_ROOT / "samples" / "speech" / word).glob("*.wav")))
        start = int(at * 16_000)
        audio[start:start + len(clip)] += clip
    samples = np.clip(audio.round(), -32768, 32767).astype(np.int16)
    if rate != 16_000:
        samples = samples[::16_000 // rate]
    path = tmp_path / "room.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.repeat(samples, channels).astype("<i2").tobytes())
    return path, samples


def test_a_wav_goes_through_the_nodes_capture_into_whole_sound_events(tmp_path: Path) -> None:
    path, samples = words_wav(tmp_path)
    start = 1_767_225_600.0
    items = list(items_from_microphone(path, "pi-mic", Capture(), start, speed=0))
    clips = [decode_sensor_message(item.topic, item.payload) for item in items]
    assert len(clips) == 2 and all(isinstance(c, AudioClip) for c in clips)
    assert [c.seq for c in clips] == [0, 1] and {c.node_id for c in clips} == {"pi-mic"}
    for clip, word_at in zip(clips, (1.0, 3.5), strict=True):
        offset = clip.time - start
        assert word_at - 0.4 < offset < word_at + 0.5  # starts in the pre-roll before the word
        first = round(offset * 16_000)
        np.testing.assert_array_equal(clip.samples, samples[first:first + len(clip.samples)])
        assert 1.0 <= clip.duration <= 3.0


def test_a_stereo_wav_is_mixed_down_and_gives_the_same_events(tmp_path: Path) -> None:
    mono = [item.payload for item in items_from_microphone(
        words_wav(tmp_path)[0], "pi-mic", Capture(), 1e9, speed=0)]
    stereo_dir = tmp_path / "stereo"
    stereo_dir.mkdir()
    stereo = [item.payload for item in items_from_microphone(
        words_wav(stereo_dir, channels=2)[0], "pi-mic", Capture(), 1e9, speed=0)]
    assert stereo == mono


def test_microphone_replay_command_publishes_the_events_with_the_given_start_time(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    listener = connect("listener")
    listener.subscribe("sensors/#")
    path, _ = words_wav(tmp_path, rate=8_000)
    done = subprocess.run(
        [sys.executable, "-m", "node", "replay", "--microphone", str(path), "--start-time",
         "1767225600", "--speed", "0", "--broker", mosquitto.address, "--node-id", "pi-mic"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "sound events: sent 2, acknowledged 2, no collector confirmed" in done.stdout
    clips = [decode_sensor_message(m.topic, m.payload) for _, m in arrivals(listener, 2)]
    assert [round(c.time - 1_767_225_600) for c in clips] == [1, 3]
    assert {c.sample_rate for c in clips} == {8_000}


def not_a_wav(path: Path) -> Path:
    path.write_text("hello")
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing.wav", "file not found"),
    (lambda d: words_wav(d, rate=2_000)[0], "recorded at 2000 Hz"),
    (lambda d: not_a_wav(d / "text.wav"), "not a readable WAV"),
])
def test_microphone_replay_of_an_unusable_file_says_why(
        tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "node", "replay", "--microphone", str(make(tmp_path)),
         "--broker", "127.0.0.1:1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and message in done.stderr
    assert "Traceback" not in done.stderr
