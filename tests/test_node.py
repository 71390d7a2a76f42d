"""Store-and-forward on the real Mosquitto: broker down and back, node killed, spool full."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from node.daemon import Node
from node.settings import NodeIdentity, NodeSettings
from node.spool import AUDIO, CLIMATE, Spool, SpoolError
from tests.conftest import REPO_ROOT, broker_config
from tests.flaky_link import FlakyLink
from tinyml_core.broker import LocalMosquitto
from tinyml_core.messages import AudioClip, ClimateReading, decode_sensor_message
from tinyml_core.mqtt import InboundMessage, MqttClient

START = 1_729_300_000.0


# --- the spool alone ---------------------------------------------------------------------------
def test_spool_keeps_order_and_forgets_only_what_was_removed(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.sqlite3", 1_000_000) as spool:
        ids = [spool.put(CLIMATE, "sensors/a/climate", f"{i}".encode()) for i in range(5)]
        assert [m.payload for m in spool.after(0, 10)] == [b"0", b"1", b"2", b"3", b"4"]
        assert [m.id for m in spool.after(ids[1], 2)] == ids[2:4]
        spool.remove([ids[0], ids[2], 999])
        assert [m.payload for m in spool.after(0, 10)] == [b"1", b"3", b"4"]


def test_spool_size_cap_drops_oldest_audio_first_and_counts_it(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    with Spool(path, 10_000) as spool:
        for index in range(4):
            spool.put(CLIMATE, "sensors/a/climate", b"r%d" % index)
            spool.put(AUDIO, "sensors/a/audio", bytes([index]) * 3_000)
        kept = [m.payload[:2] for m in spool.after(0, 100)]
        # 4 clips of 3 kB do not fit in 10 kB with the readings: the oldest clip went.
        assert kept == [b"r0", b"r1", b"\x01\x01", b"r2", b"\x02\x02", b"r3", b"\x03\x03"]
        for index in range(4, 400):  # readings alone push out every clip, then old readings
            spool.put(CLIMATE, "sensors/a/climate", b"r%d" % index)
        stats = spool.stats()
        assert stats.dropped_audio == 4 and stats.dropped_climate > 0
        assert stats.bytes <= 10_000
        oldest = spool.after(0, 1)[0].payload
    with Spool(path, 10_000) as reopened:  # counters and seq live in the file
        assert reopened.stats() == stats
        assert reopened.after(0, 1)[0].payload == oldest
        assert [reopened.next_seq() for _ in range(3)] == [0, 1, 2]
    with Spool(path, 10_000) as again:
        assert again.next_seq() == 3
        assert again.next_seq(AUDIO) == 0  # a counter per kind: a hole in either is a loss


def test_a_spool_of_one_shared_counter_numbers_each_kind_on_above_it(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    with Spool(path, 10_000) as spool:  # as an earlier version left it
        spool.increment("seq")
        spool.increment("seq")
    with Spool(path, 10_000) as spool:
        assert (spool.peek_seq(CLIMATE), spool.peek_seq(AUDIO)) == (2, 2)
        assert [spool.next_seq(CLIMATE), spool.next_seq(AUDIO), spool.next_seq(AUDIO)] == [2, 2, 3]


def test_a_corrupt_spool_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError, match=r"spool\.sqlite3"):
        Spool(path, 1_000_000)


# --- the daemon against Mosquitto -----------------------------------------------------------
@pytest.fixture
def listener(mosquitto: LocalMosquitto) -> Iterator[MqttClient]:
    """A persistent QoS 1 subscriber: it misses nothing across broker restarts."""
    client = MqttClient(broker_config(mosquitto), "test-listener", persistent_session=True,
                        publish_availability=False).connect()
    client.subscribe("sensors/#")
    yield client
    client.close(timeout=1.0)


def make_node(mosquitto: LocalMosquitto, tmp_path: Path, **identity: object) -> Node:
    settings = NodeSettings(broker=broker_config(mosquitto, connect_timeout_s=1.0),
                            node=NodeIdentity(id="pi-node", spool_path=str(tmp_path / "spool"),
                                              **identity))  # type: ignore[arg-type]
    return Node(settings)


def run_in_thread(node: Node) -> threading.Thread:
    node.start()
    thread = threading.Thread(target=node.run, daemon=True)
    thread.start()
    return thread


def collect(client: MqttClient, count: int, timeout: float = 20.0) -> list[InboundMessage]:
    received: list[InboundMessage] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        message = client.receive(timeout=0.2)
        if message is not None and message.topic.startswith("sensors/"):
            received.append(message)
    return received


def seqs(messages: list[InboundMessage]) -> list[int]:
    return [decode_sensor_message(m.topic, m.payload).seq for m in messages]


def collect_seqs(client: MqttClient, distinct: int, timeout: float = 20.0,
                 seen: list[int] | None = None) -> list[int]:
    """Sequence numbers as they arrive until ``distinct`` different ones came, counting those
    ``seen`` before (then 0.5 s more, to catch repeats)."""
    received: list[int] = list(seen or [])
    deadline = time.monotonic() + timeout
    while len(set(received)) < distinct and time.monotonic() < deadline:
        received += seqs(collect(client, 1, timeout=0.2))
    return received + seqs(collect(client, 10**6, timeout=0.5))


def assert_complete_in_order(received: list[int], expected: range, window: int = 20) -> None:
    """Every message once or more, first arrivals in order; repeats only within the window."""
    first_arrivals = list(dict.fromkeys(received))
    assert first_arrivals == list(expected)
    assert len(received) - len(first_arrivals) <= window


def test_broker_stopped_and_restarted_mid_stream_loses_nothing(
        mosquitto: LocalMosquitto, listener: MqttClient, tmp_path: Path) -> None:
    node = make_node(mosquitto, tmp_path)
    thread = run_in_thread(node)
    for index in range(90):
        if index == 30:
            mosquitto.stop()  # graceful: the listener's session is saved
        if index == 60:
            assert len(node.spool) >= 30  # everything since the stop waits on disk
            mosquitto.start()
        node.record_reading(20.0 + index / 100, 50.0, time_s=START + 600 * index)
        time.sleep(0.01)
    assert_complete_in_order(collect_seqs(listener, 90), range(90))
    node.stop()
    thread.join(timeout=5)
    node.close()
    assert len(Spool(tmp_path / "spool", 10**6)) == 0


def test_a_node_started_while_the_broker_is_down_spools_then_delivers(
        mosquitto: LocalMosquitto, listener: MqttClient, tmp_path: Path) -> None:
    mosquitto.stop()
    node = make_node(mosquitto, tmp_path)
    thread = run_in_thread(node)
    for index in range(10):
        node.record_reading(21.0, 40.0, time_s=START + 600 * index)
    time.sleep(1.5)  # a failed connect attempt or two
    assert len(node.spool) == 10
    mosquitto.start()
    assert_complete_in_order(collect_seqs(listener, 10), range(10))
    status = MqttClient(broker_config(mosquitto), "status-reader",
                        publish_availability=False).connect()
    status.subscribe("status/pi-node")
    retained = status.receive(timeout=5)
    assert retained is not None and retained.payload == b"online"
    node.stop()
    thread.join(timeout=5)
    node.close()
    assert status.receive(timeout=5).payload == b"offline"  # type: ignore[union-attr]
    status.close()


def test_a_node_stops_promptly_while_the_broker_is_unreachable(
        mosquitto: LocalMosquitto, tmp_path: Path) -> None:
    mosquitto.stop()
    node = make_node(mosquitto, tmp_path)
    thread = run_in_thread(node)
    node.record_reading(21.0, 40.0, time_s=START)
    time.sleep(0.5)  # inside a connection attempt
    started = time.monotonic()
    node.stop()
    thread.join(timeout=5)
    node.close()
    assert time.monotonic() - started < 3.0  # no wait for the attempt to time out
    assert len(Spool(tmp_path / "spool", 10**6)) == 1  # kept for the next start


def test_spool_full_while_the_broker_is_away_drops_oldest_clips_keeps_readings(
        mosquitto: LocalMosquitto, listener: MqttClient, tmp_path: Path) -> None:
    mosquitto.stop()
    node = make_node(mosquitto, tmp_path, spool_max_mb=0.2)
    thread = run_in_thread(node)
    clip = np.full(16_000, 300, dtype=np.int16)  # one second: ~43 kB on the wire
    for index in range(10):
        node.record_reading(21.0, 40.0, time_s=START + 600 * index)
        node.record_clip(START + 600 * index + 1, 16_000, clip)
    stats = node.spool.stats()
    assert stats.dropped_audio == 6 and stats.dropped_climate == 0
    mosquitto.start()
    decoded = [decode_sensor_message(m.topic, m.payload) for m in collect(listener, 14)]
    readings = [m.seq for m in decoded if isinstance(m, ClimateReading)]
    clips = [m.seq for m in decoded if isinstance(m, AudioClip)]
    assert readings == list(range(10))  # every reading, in order
    assert clips == [6, 7, 8, 9]  # the four newest clips (each kind counts on its own)
    assert listener.receive(timeout=0.5) is None
    node.stop()
    thread.join(timeout=5)
    node.close()


def start_node_process(mosquitto: LocalMosquitto, spool: Path, readings: int,
                       rate: float) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.node_process", "--port", str(mosquitto.port), "--spool",
         str(spool), "--readings", str(readings), "--rate", str(rate)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "spooled"
    return process


def test_a_killed_node_delivers_the_rest_of_its_spool_after_restart(
        mosquitto: LocalMosquitto, listener: MqttClient, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first = start_node_process(mosquitto, spool, readings=200, rate=50)
    before_kill = seqs(collect(listener, 40))
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=5)
    left = len(Spool(spool, 10**6))
    assert 0 < left < 200 - 30  # killed with a backlog on disk
    second = start_node_process(mosquitto, spool, readings=0, rate=1000)
    assert_complete_in_order(collect_seqs(listener, 200, seen=before_kill), range(200))
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=10) == 0
    assert len(Spool(spool, 10**6)) == 0


def test_a_node_whose_connection_drops_mid_publish_delivers_everything_in_order(
        mosquitto: LocalMosquitto, listener: MqttClient, tmp_path: Path) -> None:
    # The connection is cut 60 times while the forwarder publishes: a publish() lands while
    # paho has lost the connection, or just after on_connect before paho's re-sends. The first
    # killed the forwarding thread (publish handles raised); the second let a new reading
    # overtake the re-sent ones, and the collector threw that step away as late.
    link = FlakyLink(mosquitto.host, mosquitto.port)
    settings = NodeSettings(
        broker=dataclasses.replace(broker_config(mosquitto), port=link.port,
                                   reconnect_min_s=0.01, reconnect_max_s=0.05),
        node=NodeIdentity(id="pi-node", spool_path=str(tmp_path / "spool"),
                          flush_rate_per_s=2000))
    node = Node(settings)
    thread = run_in_thread(node)
    try:
        for index in range(600):
            if index % 10 == 9:
                link.cut()
            node.record_reading(20.0, 50.0, time_s=START + 600 * index)
            time.sleep(0.002)
        received = collect_seqs(listener, 600, timeout=30)
        assert thread.is_alive(), "the forwarding loop died"
    finally:
        node.stop()
        thread.join(timeout=5)
        node.close()
        link.close()
    assert link.cuts == 60
    assert_complete_in_order(received, range(600), window=20 * link.cuts)
    assert len(Spool(tmp_path / "spool", 10**6)) == 0


class DriverWithABug:
    """A DHT11 device whose driver fails in a way nobody anticipated (not a read error)."""

    @property
    def temperature(self) -> float:
        raise ZeroDivisionError("division by zero in a driver")

    humidity = temperature

    def exit(self) -> None:
        pass


def test_a_node_whose_sensor_thread_dies_stops_with_exit_status_1(
        mosquitto: LocalMosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Before, the climate thread died and the daemon went on, online and silent.
    import node.__main__ as node_cli
    import node.sources

    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # restored afterwards
    monkeypatch.setattr(node.sources, "open_dht11", lambda pin: DriverWithABug())
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nspool_path = "{tmp_path / "spool"}"\n')
    started = time.monotonic()
    status = node_cli.main(["run", "--config", str(config), "--broker", mosquitto.address,
                            "--duration", "60"])
    assert status == 1
    assert time.monotonic() - started < 30  # stopped by the death, not by --duration
    assert "error: thread 'climate' died: ZeroDivisionError: division by zero in a driver" \
        in capsys.readouterr().err


def test_a_node_with_a_microphone_publishes_each_sound_event_once_with_its_time(
        mosquitto: LocalMosquitto, tmp_path: Path, listener: MqttClient) -> None:
    from node.microphone import Capture, Microphone, RecordedStream

    rate = 16_000
    room = np.random.default_rng(0).normal(0, 20, 8 * rate)
    for at in (1.0, 4.5):  # two half-second tones
        first = int(at * rate)
        room[first:first + rate // 2] += 8000 * np.sin(np.arange(rate // 2) * 0.2)
    samples = room.round().astype(np.int16)
    microphone = Microphone(RecordedStream(samples, rate, speed=4.0), rate, Capture(),
                            clock=lambda: 1_767_225_600.0)
    settings = NodeSettings(broker=broker_config(mosquitto, connect_timeout_s=1.0),
                            node=NodeIdentity(id="pi-node", spool_path=str(tmp_path / "spool")))
    node = Node(settings, microphone=microphone)
    thread = run_in_thread(node)
    try:
        clips = [decode_sensor_message(m.topic, m.payload) for m in collect(listener, 2)]
        assert "microphone 2 sound events, 0 dropped" in node.stats_line()
    finally:
        node.stop()
        thread.join(timeout=10)
        node.close()
    assert [round(c.time - 1_767_225_600.0, 1) for c in clips] == [0.7, 4.2]  # pre-roll
    assert all(isinstance(c, AudioClip) and 1.0 <= c.duration <= 1.2 for c in clips)
    for clip in clips:
        first = round((clip.time - 1_767_225_600.0) * rate)
        np.testing.assert_array_equal(clip.samples, samples[first:first + len(clip.samples)])


def test_the_node_publishes_its_diagnostics_retained_after_connecting(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    from tests.waiting import wait_for
    from tinyml_core.messages import NodeDiagnostics

    node = make_node(mosquitto, tmp_path, diagnostics_interval_s=0.2)
    thread = run_in_thread(node)
    try:
        for index in range(3):
            node.record_reading(21.0, 40.0, time_s=START + 600 * index)
        assert wait_for(lambda: node.forwarder.stats.sent == 3)
        time.sleep(0.5)
        watcher = connect("watcher")
        watcher.subscribe("diagnostics/pi-node")
        inbound = watcher.receive(timeout=3)
        assert inbound is not None and inbound.retain
        diagnostics = NodeDiagnostics.decode(inbound.payload)
        assert diagnostics.node_id == "pi-node" and diagnostics.sent == 3
        assert diagnostics.spool_waiting == 0 and diagnostics.failed_reads == 0
    finally:
        node.stop()
        thread.join(timeout=5)
        node.close()
