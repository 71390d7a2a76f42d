"""The collector: step alignment, inference on real samples, error records, and the worker
end to end on the real Mosquitto harness."""

from __future__ import annotations

import itertools
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from collector.inference import Inference
from collector.settings import CollectorOptions, CollectorSettings, parse_partition, scan_settings
from collector.windows import REPAIR_STEPS, StepWindow
from collector.worker import Counters, Worker
from tests.collector_runner import start_worker, stop_worker
from tests.conftest import REPO_ROOT, broker_config
from tinyml_core.broker import LocalMosquitto
from tinyml_core.errors import ConfigError, ModelLoadError
from tinyml_core.keywords import ScanSettings
from tinyml_core.messages import (
    CONFIRM_WINDOW,
    AudioClip,
    ClimateReading,
    ErrorRecord,
    Forecast,
    KeywordResult,
    decode_message,
)
from tinyml_core.models import load_keyword_spotter, read_manifest, write_manifest_entry
from tinyml_core.mqtt import MqttClient
from tinyml_core.recordings import read_climate_csv, read_wav
from tinyml_core.topics import climate_topic

MODELS = REPO_ROOT / "models"
SAMPLE_CSV = REPO_ROOT / "samples" / "climate" / "mpi_roof_2024-10-18_2024-10-20.csv"
SPEECH = REPO_ROOT / "samples" / "speech"


def readings(node: str = "pi-1", count: int = 8) -> list[ClimateReading]:
    series = read_climate_csv(SAMPLE_CSV)
    return [ClimateReading(node, float(series.times[i]), i, float(series.temperature[i]),
                           float(series.humidity[i])) for i in range(count)]


# Each test clip is an event of its own (one seq and time twice is one event sent again).
# Counting down: never a jump forward, which the collector reports as messages lost.
CLIP_SEQS = itertools.count(10**9, -1)


def clip(word: str, node: str = "pi-1", index: int = 0) -> AudioClip:
    path = sorted((SPEECH / word).glob("*.wav"))[index]
    rate, samples = read_wav(path)
    return AudioClip.from_samples(node, 1_729_300_000.0, next(CLIP_SEQS), rate, samples)


# ------------------------------------------------------------------ step alignment


def test_readings_in_one_step_are_averaged_and_a_boundary_reading_closes_it() -> None:
    window = StepWindow(600.0, 3)
    assert window.add(610.0, 10.0, 50.0) == []
    assert window.add(900.0, 12.0, 52.0) == []
    assert window.add(1200.0, 14.0, 54.0) == []  # exactly on the step's end: closed at once
    assert window.steps == {2: (12.0, 52.0)}
    window.add(1300.0, 1.0, 1.0)
    window.add(1900.0, 3.0, 3.0)  # a later step closes the open one
    assert window.steps[3] == (1.0, 1.0) and window.open_step == 4
    [ready] = window.add(2400.0, 5.0, 5.0)  # steps 2, 3, 4: the first full window
    assert ready.end_time == 2400.0 and ready.filled_steps == 0
    assert ready.inputs.tolist() == [[[12.0, 52.0], [1.0, 1.0], [4.0, 4.0]]]


def full_window(size: int = 3) -> StepWindow:
    window = StepWindow(600.0, size)
    for step in range(1, size + 1):
        window.add(600.0 * step, 10.0 * step, 50.0)
    return window


def test_one_missing_step_is_filled_from_its_neighbours_and_the_forecast_says_so() -> None:
    window = full_window()  # steps 1-3
    ready = window.add(600.0 * 5, 50.0, 60.0)  # the DHT11 failed during step 4
    ready += window.add(600.0 * 6, 60.0, 60.0)
    ready += window.add(600.0 * 7, 70.0, 60.0)
    assert [(r.end_time / 600.0, r.filled_steps) for r in ready] == [(5, 1), (6, 1), (7, 0)]
    assert ready[0].inputs.tolist() == [[[30.0, 50.0], [40.0, 55.0], [50.0, 60.0]]]


def test_two_consecutive_missing_steps_leave_their_windows_without_a_forecast() -> None:
    window = full_window()  # steps 1-3
    ends = []
    for step in range(6, 12):  # steps 4 and 5 missing
        ends += [r.end_time / 600.0 for r in window.add(600.0 * step, 1.0, 1.0)]
    assert ends == [8.0, 9.0, 10.0, 11.0]  # the first window of new steps only


def test_repeats_are_counted_and_never_forecast_twice() -> None:
    window = full_window()
    assert window.add(1200.0, 99.0, 99.0) == []  # its step is already averaged
    assert window.add(1800.0, 99.0, 99.0) == []
    assert window.late == 2 and window.steps[2] == (20.0, 50.0)


def test_a_late_reading_fills_its_step_and_releases_every_window_it_completes() -> None:
    # A broker crash loses steps 4 and 5; the node sends them again after newer ones.
    window = full_window()  # steps 1-3 (window 3 forecast)
    ends = []
    for step in (6, 7):
        ends += [r.end_time / 600.0 for r in window.add(600.0 * step, 1.0, 1.0)]
    assert ends == []  # 4 and 5 missing: nothing to forecast
    late_4 = window.add(600.0 * 4, 4.0, 4.0)
    assert [r.end_time / 600.0 for r in late_4] == [4.0]  # 2, 3, 4; 5 still missing
    late_5 = window.add(600.0 * 5, 5.0, 5.0)
    assert [r.end_time / 600.0 for r in late_5] == [5.0, 6.0, 7.0]
    assert all(r.filled_steps == 0 for r in late_4 + late_5)
    assert window.repaired == 2
    [next_one] = window.add(600.0 * 8, 1.0, 1.0)
    assert next_one.end_time == 4800.0
    assert window.add(600.0 * 5, 5.0, 5.0) == []  # a repeat of the filled step


def test_a_reading_older_than_the_repair_horizon_is_ignored() -> None:
    window = full_window()
    newest = 50 + 3 + REPAIR_STEPS + 1
    window.add(600.0 * newest, 1.0, 1.0)
    assert window.add(600.0 * 50, 1.0, 1.0) == [] and window.late == 1
    assert 50 not in window.steps and min(window.steps) >= newest - 3 - REPAIR_STEPS


def test_a_reading_sent_again_a_whole_confirm_window_later_still_fills_its_window() -> None:
    # 10-minute data replayed as fast as flow control allows: a reading a step. Step 10 is lost
    # in a broker crash, and the node may send CONFIRM_WINDOW newer ones before it comes again.
    window = StepWindow(600.0, 6)
    ends = []
    for step in [s for s in range(1, 11 + CONFIRM_WINDOW) if s != 10]:
        ends += [r.end_time / 600.0 for r in window.add(600.0 * step, float(step), 50.0)]
    assert 10.0 not in ends and 11.0 in ends  # 11-15 interpolated over the gap
    [ready] = window.add(600.0 * 10, 10.0, 50.0)
    assert ready.end_time / 600.0 == 10.0 and ready.filled_steps == 0
    assert ready.inputs[0, :, 0].tolist() == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]


# ------------------------------------------------------------------ inference


@pytest.fixture(scope="module")
def inference() -> Inference:
    return Inference(MODELS, ("forecast_a", "forecast_b"), "kws_b")


def test_a_full_window_gives_both_forecasts_with_horizon_timestamps(inference: Inference) -> None:
    published = []
    for reading in readings("pi-forecast", 6):
        published += inference.handle(climate_topic("pi-forecast"), reading.encode())
    assert [o.topic for o in published] == ["predictions/pi-forecast/forecast"] * 2
    assert all(o.retain for o in published)
    a, b = (Forecast.decode(o.payload) for o in published)
    last = readings("x", 6)[-1]
    assert (a.model, len(a.steps), b.model, len(b.steps)) == ("forecast_a", 3, "forecast_b", 9)
    assert a.input_time == last.time
    assert [s.time - last.time for s in b.steps] == [600.0 * (i + 1) for i in range(9)]
    assert abs(a.steps[0].temperature - last.temperature) < 1.5
    assert a.model_version.startswith("1+")


def test_clips_get_the_right_keyword(inference: Inference) -> None:
    for word, index in (("yes", 1), ("stop", 0), ("left", 0)):
        [answer] = inference.handle("sensors/pi-1/audio", clip(word, index=index).encode())
        result = KeywordResult.decode(answer.payload)
        assert answer.topic == "predictions/pi-1/keyword"
        assert result.label == word and result.probability > 0.7
        assert 0 < result.inference_ms <= result.latency_ms


def test_a_word_below_the_threshold_is_unknown_with_the_models_probabilities(
        inference: Inference) -> None:
    # kws_b hesitates over the second 'go' sample: 0.37 for 'go' and 0.34 for 'down', below
    # its default threshold 0.72.
    [answer] = inference.handle("sensors/pi-1/audio", clip("go", index=1).encode())
    result = KeywordResult.decode(answer.payload)
    assert result.label == "unknown"
    top = max(result.probabilities, key=result.probabilities.__getitem__)
    assert top in inference.spotter.contract.keywords  # type: ignore[union-attr]
    assert 0.3 < result.probabilities[top] < inference.spotter.contract.default_threshold  # type: ignore[union-attr]


def test_a_threshold_no_word_reaches_gives_unknown() -> None:
    strict = Inference(MODELS, (), "kws_c", ScanSettings(threshold=1.0))
    [answer] = strict.handle("sensors/pi-1/audio", clip("go").encode())
    assert KeywordResult.decode(answer.payload).label == "unknown"


def models_with_threshold(folder: Path, value: object) -> Path:
    """A copy of kws_c whose manifest entry chose ``value`` as its default threshold."""
    entry = read_manifest(MODELS)["kws_c"]
    shutil.copy(MODELS / entry["file"], folder / entry["file"])
    write_manifest_entry(folder, "kws_c", entry | {"default_threshold": {"value": value}})
    return folder


def test_the_collector_uses_the_models_own_threshold_unless_it_sets_one(tmp_path: Path) -> None:
    options = CollectorOptions(models_dir=str(models_with_threshold(tmp_path, 0.999)),
                               forecast_models=(), keyword_model="kws_c")
    assert options.keyword_threshold == 0  # the default: the model's own
    go = clip("go").encode()
    [answer] = Inference.from_options(options).handle("sensors/pi-1/audio", go)
    assert KeywordResult.decode(answer.payload).label == "unknown"
    own = Inference.from_options(replace(options, keyword_threshold=0.5))
    [answer] = own.handle("sensors/pi-1/audio", go)
    assert KeywordResult.decode(answer.payload).label == "go"


@pytest.mark.parametrize("value", [0, 1.5, "high", None])
def test_a_manifest_threshold_that_is_no_probability_refuses_the_model(
        tmp_path: Path, value: object) -> None:
    with pytest.raises(ModelLoadError, match="default_threshold"):
        load_keyword_spotter(models_with_threshold(tmp_path, value), "kws_c")


def test_the_models_own_smoothing_is_used_unless_the_config_sets_one(tmp_path: Path) -> None:
    from tinyml_core.keywords import find_keywords, smoothing_in_force

    entry = read_manifest(MODELS)["kws_c"]
    shutil.copy(MODELS / entry["file"], tmp_path / entry["file"])
    write_manifest_entry(tmp_path, "kws_c", entry | {"default_smoothing": {"value": 7}})
    spotter = load_keyword_spotter(tmp_path, "kws_c")
    options = CollectorOptions(models_dir=str(tmp_path), forecast_models=(),
                               keyword_model="kws_c")
    assert options.keyword_smoothing == 0 and smoothing_in_force(scan_settings(options),
                                                                 spotter) == 7
    assert smoothing_in_force(scan_settings(replace(options, keyword_smoothing=2)),
                              spotter) == 2
    # The decision really averages 7 windows: a word over 3 windows only is averaged away.
    rate, samples = read_wav(sorted((SPEECH / "go").glob("*.wav"))[0])
    audio = np.concatenate([np.zeros(16_000, np.int16), samples, np.zeros(16_000, np.int16)])
    wide, _ = find_keywords(spotter, audio, rate, ScanSettings(threshold=0.3))
    narrow, _ = find_keywords(spotter, audio, rate, ScanSettings(threshold=0.3, smoothing=1))
    assert max(d.score for d in wide) < max(d.score for d in narrow)
    for bad in (0, 21, 2.5, "3"):
        write_manifest_entry(tmp_path, "kws_c", entry | {"default_smoothing": {"value": bad}})
        with pytest.raises(ModelLoadError, match="default_smoothing"):
            load_keyword_spotter(tmp_path, "kws_c")


def event(*parts: tuple[float, str], seconds: float = 3.0, node: str = "pi-1",
          start: float = 1_729_300_000.0) -> AudioClip:
    """A sound event of ``seconds`` of quiet room with sample words at the given offsets."""
    audio = np.random.default_rng(0).normal(0, 30, int(seconds * 16_000))
    for at, word in parts:
        _, samples = read_wav(sorted((SPEECH / word).glob("*.wav"))[0])
        first = int(at * 16_000)
        audio[first:first + len(samples)] += samples[:len(audio) - first]
    pcm = np.clip(audio.round(), -32768, 32767).astype(np.int16)
    return AudioClip.from_samples(node, start, next(CLIP_SEQS), 16_000, pcm)


def keyword_results(inference: Inference, clip: AudioClip) -> list[KeywordResult]:
    return [KeywordResult.decode(answer.payload)
            for answer in inference.handle("sensors/pi-1/audio", clip.encode())]


def test_a_word_anywhere_in_an_event_is_one_result_timed_at_its_window(
        inference: Inference) -> None:
    clip = event((1.3, "yes"))
    [result] = keyword_results(inference, clip)
    assert result.label == "yes"
    assert clip.time + 0.8 <= result.input_time <= clip.time + 1.8  # the window holding it
    assert set(result.probabilities) == set(inference.spotter.labels)  # type: ignore[union-attr]


def test_two_words_in_one_event_are_two_results_in_order(inference: Inference) -> None:
    clip = event((0.2, "stop"), (1.9, "left"), seconds=3.0)
    results = keyword_results(inference, clip)
    assert [r.label for r in results] == ["stop", "left"]
    assert results[1].input_time - results[0].input_time >= 1.0


def test_a_word_in_the_overlap_of_two_events_is_reported_once() -> None:
    inference = Inference(MODELS, (), "kws_b")
    first = event((2.0, "down"), start=1_729_300_000.0)  # the word in its last second
    second = event((0.0, "down"), start=1_729_300_002.0)  # the same second repeated
    assert [r.label for r in keyword_results(inference, first)] == ["down"]
    assert keyword_results(inference, second) == []
    assert inference.repeated_keywords == 1
    assert "heard twice in overlapping sound events (reported once): 1" in Counters().line(0, 1)
    later = event((0.5, "down"), start=1_729_300_010.0)  # said again, later: a new result
    assert [r.label for r in keyword_results(inference, later)] == ["down"]


@pytest.mark.parametrize("samples", [
    np.zeros(16_000, np.int16),  # digital silence
    np.full(16_000, 12_000, np.int16),  # DC offset only
    np.zeros(400, np.int16),  # shorter than a window: padded
    (np.sign(np.sin(np.arange(32_000) * 0.05)) * 32767).astype(np.int16),  # clipped square
], ids=["silence", "dc", "short", "clipped"])
def test_an_event_without_a_word_is_one_unknown(inference: Inference,
                                                samples: np.ndarray) -> None:
    clip = AudioClip.from_samples("pi-1", 1_729_300_000.0, next(CLIP_SEQS), 16_000, samples)
    [result] = keyword_results(inference, clip)
    assert result.label == "unknown" and result.input_time >= clip.time


def test_other_words_and_noises_of_the_sample_come_back_unknown(inference: Inference) -> None:
    paths = sorted((SPEECH / "_unknown_").glob("*.wav")) + \
        sorted((SPEECH / "_background_noise_").glob("*.wav"))
    answers = []
    for path in paths:
        clip = AudioClip.from_samples("pi-1", 1_729_300_000.0, next(CLIP_SEQS), *read_wav(path))
        answers += [r.label for r in keyword_results(inference, clip)]
    assert len(paths) == 6 and answers.count("unknown") >= 5, answers


@pytest.mark.parametrize("payload", [b"", b"\xff\x00garbage", b"{}", b"[" * 5000,
                                     b'[{"bn": "urn:dev:tinyml:pi-1:", "n": "temperature", '
                                     b'"u": "Cel", "v": NaN}]'])
def test_bad_input_gives_one_error_record(inference: Inference, payload: bytes) -> None:
    [answer] = inference.handle("sensors/pi-1/climate", payload, now=1_729_300_000.0)
    record = ErrorRecord.decode(answer.payload)
    assert answer.topic == "errors/pi-1" and answer.is_error
    assert record.node_id == "pi-1" and record.payload_size == len(payload) and record.reason


def test_a_refused_model_does_not_stop_the_others(tmp_path: Path) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(MODELS, models, ignore=shutil.ignore_patterns("figures", "*.md"))
    (models / "forecast_b.tflite.zlib").write_bytes(b"tampered")
    partial = Inference(models, ("forecast_a", "forecast_b"), "kws_b")
    assert [f.name for f in partial.forecasters] == ["forecast_a"]
    assert "sha256" in partial.refused["forecast_b"] and partial.spotter is not None


def test_node_state_is_bounded() -> None:
    small = Inference(MODELS, ("forecast_a",), None, max_nodes=5)
    for index in range(50):
        small.handle(climate_topic(f"pi-{index}"), readings(f"pi-{index}", 1)[0].encode())
    assert len(small._windows) == 5


# ------------------------------------------------------------------ worker on the broker


@pytest.fixture
def worker(mosquitto: LocalMosquitto) -> Iterator[Worker]:
    settings = CollectorSettings(broker=broker_config(mosquitto),
                                 collector=CollectorOptions(id="collector-test",
                                                            models_dir=str(MODELS),
                                                            state_path=""))
    running = Worker(settings, Inference.from_options(settings.collector))
    running.start()
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    yield running
    running.stop()
    thread.join(timeout=5)
    running.close()


def collect(client: MqttClient, count: int, timeout: float = 10.0) -> list[object]:
    messages: list[object] = []
    while len(messages) < count:
        inbound = client.receive(timeout=timeout)
        if inbound is None:
            break
        messages.append(decode_message(inbound.topic, inbound.payload))
    return messages


def test_worker_answers_readings_clips_and_garbage_over_mqtt(
        worker: Worker, connect: Callable[..., MqttClient]) -> None:
    listener = connect("listener")
    listener.subscribe("predictions/#")
    listener.subscribe("errors/#")
    node = connect("pi-e2e")
    for reading in readings("pi-e2e", 6):
        assert node.publish(climate_topic("pi-e2e"), reading.encode()).wait(5)
    node.publish("sensors/pi-e2e/audio", clip("no", "pi-e2e").encode()).wait(5)
    node.publish("sensors/pi-e2e/climate", b"not json").wait(5)
    answers = collect(listener, 4)
    kinds = sorted(type(a).__name__ for a in answers)
    assert kinds == ["ErrorRecord", "Forecast", "Forecast", "KeywordResult"]
    keyword = next(a for a in answers if isinstance(a, KeywordResult))
    assert keyword.label == "no" and keyword.node_id == "pi-e2e"
    assert worker.counters.received == 8 and worker.counters.errors == 1


def test_two_shared_workers_handle_each_clip_exactly_once(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient]) -> None:
    workers = [start_worker(mosquitto, f"collector-{i}", share="pool") for i in range(2)]
    listener = connect("listener")
    listener.subscribe("predictions/+/keyword")
    node = connect("pi-share")
    clips = [AudioClip.from_samples("pi-share", 1_729_300_000.0 + i, i, 16000,
                                    clip("yes").samples) for i in range(40)]
    for message in clips:
        node.publish("sensors/pi-share/audio", message.encode())
    answers = collect(listener, 40)
    times = sorted(a.input_time for a in answers if isinstance(a, KeywordResult))
    assert times == [m.time for m in clips]  # every clip once, none twice
    assert listener.receive(timeout=1.0) is None
    handled = [w.counters.received for w, _ in workers]
    assert sum(handled) == 40 and min(handled) > 0  # both took part
    for running, thread in workers:
        stop_worker(running, thread)


def test_partitioned_workers_forecast_each_node_once_with_whole_windows(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient]) -> None:
    workers = [start_worker(mosquitto, f"collector-part-{i}", share="pool",
                            partition=f"{i + 1}/2") for i in range(2)]
    listener = connect("listener")
    listener.subscribe("predictions/+/forecast")
    nodes = [f"pi-part-{i}" for i in range(8)]
    node = connect("pi-part-publisher")
    for step in range(7):  # interleaved, as independent nodes publish
        for node_id in nodes:
            node.publish(climate_topic(node_id), readings(node_id, 7)[step].encode())
    answers = [a for a in collect(listener, 16) if isinstance(a, Forecast)]
    assert sorted((a.node_id, a.input_time) for a in answers) == sorted(
        (n, r.time) for n in nodes for r in readings(n, 7)[5:])  # every window, once
    assert listener.receive(timeout=1.0) is None
    owners = [{n for n in nodes if w.inference.owns(n)} for w, _ in workers]
    assert owners[0].isdisjoint(owners[1]) and owners[0] | owners[1] == set(nodes)
    assert all(w.counters.predictions == 2 * len(mine) > 0
               for (w, _), mine in zip(workers, owners, strict=True))
    for running, thread in workers:
        stop_worker(running, thread)


def test_partition_must_be_k_of_n() -> None:
    for text in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="K/N"):
            parse_partition(text)
    assert parse_partition("2/3") == (2, 3)


def test_readings_sent_while_the_worker_was_away_are_processed_after_it_returns(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient]) -> None:
    running, thread = start_worker(mosquitto, "collector-persistent")
    stop_worker(running, thread)  # the session (subscriptions + queue) stays at the broker
    listener = connect("listener")
    listener.subscribe("predictions/+/forecast")
    node = connect("pi-away")
    for reading in readings("pi-away", 7):
        assert node.publish(climate_topic("pi-away"), reading.encode()).wait(5)
    assert listener.receive(timeout=0.5) is None  # nobody is processing
    running, thread = start_worker(mosquitto, "collector-persistent")
    answers = collect(listener, 2)
    assert [a.input_time for a in answers if isinstance(a, Forecast)] == \
        [r.time for r in readings("pi-away", 7)[5:7]]
    stop_worker(running, thread)


def test_record_writes_every_sensor_message_as_json_lines_exactly(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    import base64
    import json
    import subprocess
    import sys
    import time

    out = tmp_path / "stream.jsonl"
    recorder = subprocess.Popen(
        [sys.executable, "-m", "collector", "record", "--out", str(out), "--broker",
         f"{mosquitto.host}:{mosquitto.port}", "--duration", "20", "-q"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listener = connect("listener")
    listener.subscribe("status/#")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the recorder announces itself once subscribed
        inbound = listener.receive(timeout=0.5)
        if inbound and inbound.topic.endswith("-recorder") and inbound.payload == b"online":
            break
    time.sleep(0.3)
    node = connect("pi-rec")
    sent = [(climate_topic("pi-rec"), r.encode()) for r in readings("pi-rec", 3)]
    sent += [("sensors/pi-rec/audio", clip("up", "pi-rec").encode()),
             ("sensors/pi-rec/climate", b"\xff\xfe not utf-8")]
    for topic, payload in sent:
        assert node.publish(topic, payload).wait(5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(out.read_text().splitlines()) < len(sent):
        time.sleep(0.1)
    recorder.terminate()
    stdout, stderr = recorder.communicate(timeout=10)
    assert recorder.returncode == 0, stderr
    assert f"recorded {len(sent)} messages" in stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    got = [(line["topic"], line["payload"].encode() if "payload" in line
            else base64.b64decode(line["payload_base64"])) for line in lines]
    assert got == sent
    assert all(line["received_at"] > 1.7e9 for line in lines)


def test_a_flood_of_bad_input_is_logged_a_few_lines_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    flooded = Inference(MODELS, ("forecast_a",), None)
    with caplog.at_level("WARNING", logger="collector.inference"):
        answers = [flooded.handle("sensors/pi-1/climate", b"garbage %d" % i) for i in range(500)]
    assert all(len(a) == 1 and a[0].is_error for a in answers)  # every one still answered
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("rejected") for line in lines) == 20
    assert any("logging no more" in line for line in lines) and len(lines) == 21
    flooded.rejections.period_start -= 61  # a minute later
    with caplog.at_level("WARNING", logger="collector.inference"):
        flooded.handle("sensors/pi-1/climate", b"garbage")
    assert "480 more rejected payloads were not logged" in caplog.records[-2].getMessage()
    assert caplog.records[-1].getMessage().startswith("rejected")


def test_the_collector_says_which_threshold_is_in_force_and_whose_it_is(tmp_path: Path) -> None:
    options = CollectorOptions(models_dir=str(models_with_threshold(tmp_path, 0.83)),
                               forecast_models=("forecast_a",), keyword_model="kws_c")
    settings = CollectorSettings(collector=options)
    # forecast_a is not in the copied folder: refused, so "none" answers readings
    own = Worker(settings, Inference.from_options(options)).models_line()
    assert own == ("forecasters: none; keyword model: kws_c, threshold 0.83 (the model's own), "
                   "smoothed over 7 windows")
    strict = replace(options, keyword_threshold=0.9)
    line = Worker(CollectorSettings(collector=strict), Inference.from_options(strict)).models_line()
    assert line.endswith("threshold 0.9 (set in the config), smoothed over 7 windows "
                         "(the model's own)")
    single = replace(options, keyword_smoothing=1)
    line = Worker(CollectorSettings(collector=single), Inference.from_options(single)).models_line()
    assert line.endswith("threshold 0.83 (the model's own), no smoothing (set in the config)")
