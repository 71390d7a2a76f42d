"""Over 1000 hostile payloads at a running collector (its own process, the real Mosquitto):
it stays up, answers each with exactly one error record, and its memory stays bounded."""

from __future__ import annotations

import time
from pathlib import Path

from tests.collector_runner import memory_kb, start_collector, wait_online
from tests.conftest import REPO_ROOT, broker_config
from tests.hostile import hostile_cases
from tinyml_core.broker import LocalMosquitto
from tinyml_core.messages import AudioClip, ErrorRecord, KeywordResult
from tinyml_core.mqtt import MqttClient
from tinyml_core.recordings import read_wav


def send_and_collect(broker: LocalMosquitto, listener: MqttClient,
                     cases: list, timeout: float = 120) -> dict[str, list[ErrorRecord]]:
    sender = MqttClient(broker_config(broker), "fuzzer", publish_availability=False).connect()
    handles = [sender.publish(case.topic, case.payload) for case in cases]
    assert all(handle.wait(60) for handle in handles), "the broker did not take every payload"
    sender.close()
    records: dict[str, list[ErrorRecord]] = {}
    deadline = time.monotonic() + timeout
    while sum(map(len, records.values())) < len(cases) and time.monotonic() < deadline:
        inbound = listener.receive(timeout=0.5)
        if inbound is None:
            continue
        assert inbound.topic.startswith("errors/"), f"unexpected answer on {inbound.topic}"
        record = ErrorRecord.decode(inbound.payload)
        records.setdefault(record.node_id, []).append(record)
    return records


def test_hostile_payloads_get_one_error_record_each_and_memory_stays_bounded(
        mosquitto: LocalMosquitto, tmp_path: Path) -> None:
    log = tmp_path / "collector.log"
    collector = start_collector(mosquitto, log)
    try:
        wait_online(mosquitto)
        listener = MqttClient(broker_config(mosquitto), "fuzz-listener",
                              publish_availability=False).connect()
        listener.subscribe("errors/#")
        listener.subscribe("predictions/#")
        at_start = memory_kb(collector.pid)

        cases = hostile_cases(1000, seed=7)
        assert len({case.family for case in cases}) >= 10
        records = send_and_collect(mosquitto, listener, cases)
        after_first = memory_kb(collector.pid)
        assert collector.poll() is None, "the collector died"
        by_node = {case.node_id: case for case in cases}
        missing = sorted(set(by_node) - set(records))
        assert not missing, f"no error record for {missing[:5]} ({by_node[missing[0]].family})"
        assert all(len(found) == 1 for found in records.values())  # one each, no more
        for node_id, [record] in records.items():
            case = by_node[node_id]
            assert record.topic == case.topic and record.payload_size == len(case.payload)
            assert record.reason

        # Two more, different rounds: memory must not keep growing with the input. Compared
        # by the peak: what a process holds at one instant swings between about 60 and 120 MB
        # with the same state (payloads being read and rejected, memory the allocator has not
        # handed back yet), while a leak would raise the peak round after round.
        for seed in (8, 9):
            again = send_and_collect(mosquitto, listener, hostile_cases(1000, seed=seed))
            assert len(again) == 1004
        after_second = memory_kb(collector.pid)
        assert after_second["VmHWM"] - after_first["VmHWM"] < 30_000
        # The peak holds a 10 MB payload a few times over while it is read and rejected.
        assert after_second["VmHWM"] - at_start["VmRSS"] < 150_000

        # Still doing its job.
        rate, samples = read_wav(sorted((REPO_ROOT / "samples" / "speech" / "go").glob("*.wav"))[0])
        clip = AudioClip.from_samples("pi-after", 1_732_406_400.0, 1, rate, samples)
        sender = MqttClient(broker_config(mosquitto), "pi-after").connect()
        assert sender.publish("sensors/pi-after/audio", clip.encode()).wait(5)
        answer = listener.receive(timeout=10)
        assert answer is not None and answer.topic == "predictions/pi-after/keyword"
        assert KeywordResult.decode(answer.payload).label == "go"
        sender.close()
        listener.close()
    finally:
        collector.terminate()
        collector.wait(timeout=15)
    assert collector.returncode == 0, log.read_text()[-2000:]
