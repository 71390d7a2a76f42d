"""The collector's windows across a restart, and the per-node rate limit."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from collector.confirmations import ConfirmationBook, Due, Taking
from collector.inference import Inference, Outgoing
from collector.ratelimit import NodeRateLimit
from collector.state import load_state, state_document
from tests.collector_runner import start_worker, stop_worker
from tests.conftest import REPO_ROOT
from tinyml_core.broker import LocalMosquitto
from tinyml_core.messages import AudioClip, ClimateReading, ErrorRecord, Forecast
from tinyml_core.mqtt import MqttClient
from tinyml_core.recordings import read_wav
from tinyml_core.seqranges import SeqRanges
from tinyml_core.statefile import state_path, write_state_file
from tinyml_core.topics import audio_topic, climate_topic

MODELS = REPO_ROOT / "models"
STEP_S = 600.0
T0 = 1_729_299_600.0  # a step boundary


def minute_readings(node: str, minutes: range) -> list[ClimateReading]:
    """A reading a minute: ten per 10-minute step, averaged by the collector."""
    return [ClimateReading(node, T0 + 60.0 * m + 30.0, m, 20.0 + 0.01 * m, 50.0 - 0.02 * m)
            for m in minutes]


def forecasts(inference: Inference, stream: list[ClimateReading]) -> list[tuple[str, bytes]]:
    """Handle each reading and record it, as the worker does once the broker acknowledged its
    answers."""
    out: list[Outgoing] = []
    for reading in stream:
        out += inference.handle(climate_topic(reading.node_id), reading.encode())
        inference.commit()
    return [(o.topic, _without_latency(o.payload)) for o in out]


def _without_latency(payload: bytes) -> bytes:
    document = json.loads(payload)
    document.pop("latency_ms", None)
    return json.dumps(document, sort_keys=True).encode()


def new_inference() -> Inference:
    return Inference(MODELS, ("forecast_a", "forecast_b"), None)


def test_a_restart_mid_step_forecasts_exactly_as_an_uninterrupted_collector(
        tmp_path: Path) -> None:
    nodes = ("pi-1", "pi-2")
    stream = [r for m in range(120) for r in
              (minute_readings(nodes[0], range(m, m + 1)) + minute_readings(nodes[1],
                                                                            range(m, m + 1)))]
    uninterrupted = forecasts(new_inference(), stream)
    cut = 2 * 75 + 1  # inside a step, one node ahead of the other
    before = new_inference()
    first = forecasts(before, stream[:cut])
    path = tmp_path / "windows.json"
    document = state_document("collector-1", before)
    assert len(document["windows"]) == 2  # forecast_a and _b share a window
    write_state_file(path, document)
    after = new_inference()
    assert load_state(path, "collector-1", after) == 2
    second = forecasts(after, stream[cut:])
    assert first + second == uninterrupted
    assert len(second) > 0 and second[0] == uninterrupted[len(first)]


def test_without_saved_windows_a_restart_pauses_forecasts_for_a_window() -> None:
    stream = minute_readings("pi-1", range(120))
    restarted = forecasts(new_inference(), stream[75:])
    uninterrupted = forecasts(new_inference(), stream)
    assert len(restarted) < len(uninterrupted) - 6  # what the state file prevents


def test_a_saved_window_older_than_one_step_is_not_joined_to_new_readings(
        tmp_path: Path) -> None:
    before = new_inference()
    forecasts(before, minute_readings("pi-1", range(70)))
    path = tmp_path / "windows.json"
    write_state_file(path, state_document("collector-1", before))
    after = new_inference()
    load_state(path, "collector-1", after)
    # Saved: steps 1-6 closed, step 7 (minutes 60-69) still open. The collector is away for 30
    # minutes and nobody queued the readings: steps 8-10 are missing.
    later = forecasts(after, minute_readings("pi-1", range(100, 170)))
    input_times = sorted({json.loads(payload)["input_time"] for _, payload in later})
    # The first new reading closes step 7 (its readings were all there), then the gap empties
    # the window: the next forecast rests on steps 11-16, all new.
    assert input_times[:2] == [T0 + STEP_S * 7, T0 + STEP_S * 16]


@pytest.mark.parametrize("content, reason", [
    (b"{\"format\": \"tinyml-collector-windows\", \"version\": 1, \"collector_id\"", "not JSON"),
    (b"\x00\xff" * 100, "not JSON"),
    (b"[1, 2, 3]", "not a collector state file"),
    (json.dumps({"format": "something-else"}).encode(), "not a collector state file"),
    (json.dumps({"format": "tinyml-collector-windows", "version": 99}).encode(), "version 99"),
    (json.dumps({"format": "tinyml-collector-windows", "version": 1, "collector_id": "other",
                 "saved_at": 1.0, "windows": []}).encode(), "saved by collector 'other'"),
    (json.dumps({"format": "tinyml-collector-windows", "version": 1,
                 "collector_id": "collector-1", "saved_at": 1.0, "windows": {}}).encode(),
     "no list of windows"),
])
def test_corrupt_or_foreign_state_files_are_refused_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, reason: str) -> None:
    path = tmp_path / "windows.json"
    path.write_bytes(content)
    inference = new_inference()
    with caplog.at_level(logging.WARNING, logger="collector.state"):
        assert load_state(path, "collector-1", inference) == 0
    assert any("refused" in r.getMessage() and reason in r.getMessage()
               for r in caplog.records), caplog.text
    assert inference.export_windows() == []


def test_malformed_windows_are_refused_one_by_one(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    before = new_inference()
    forecasts(before, minute_readings("pi-1", range(70)))
    path = tmp_path / "windows.json"
    write_state_file(path, state_document("collector-1", before))
    document = json.loads(path.read_text())
    good = document["windows"][0]
    gap = dict(good, forecast_ends=[10**9])  # a forecast for a step that never closed
    nan = dict(good, open_sum=[float("nan"), 1.0])
    shape = dict(good, size=4)  # no configured forecaster has this window
    hostile = dict(good, node_id="../../etc")
    document["windows"] = [gap, "not a window", nan, shape, hostile, good]
    path.write_text(json.dumps(document).replace("NaN", "1e999"))
    after = new_inference()
    with caplog.at_level(logging.WARNING, logger="collector.state"):
        assert load_state(path, "collector-1", after) == 1
    assert "5 windows refused" in caplog.text
    assert [w["node_id"] for w in after.export_windows()] == ["pi-1"]


def test_state_path_template_and_off() -> None:
    assert state_path("var/{id}-windows.json", "collector-2") == Path(
        "var/collector-2-windows.json")
    assert state_path("", "collector-2") is None


def test_a_worker_restarted_within_a_step_forecasts_the_next_step_at_once(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    state = str(tmp_path / "collector-windows.json")
    listener = connect("listener")
    listener.subscribe("predictions/+/forecast")
    node = connect("pi-restart", publish_availability=False)
    stream = minute_readings("pi-restart", range(100))

    def send(part: list[ClimateReading]) -> None:
        assert all(node.publish(climate_topic(r.node_id), r.encode()).wait(5) for r in part)

    worker, thread = start_worker(mosquitto, "collector-r", keyword_model="",
                                  state_path=state)
    send(stream[:75])  # 7 steps closed, the 8th half averaged
    heard_before = drain_forecasts(listener, 2)
    stop_worker(worker, thread)
    worker, thread = start_worker(mosquitto, "collector-r", keyword_model="",
                                  state_path=state)
    send(stream[75:81])  # closes the 8th step
    try:
        heard_after = drain_forecasts(listener, 1)
    finally:
        stop_worker(worker, thread)
    assert [f.input_time for f in heard_before] == [T0 + STEP_S * 6, T0 + STEP_S * 7]
    assert [f.input_time for f in heard_after] == [T0 + STEP_S * 8]


def drain_forecasts(listener: MqttClient, count: int) -> list[Forecast]:
    out: list[Forecast] = []
    while len(out) < count:
        message = listener.receive(timeout=10)
        if message is None:
            break
        forecast = Forecast.decode(message.payload)
        if forecast.model == "forecast_a":
            out.append(forecast)
    return out


# ------------------------------------------------------------------ rate limit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_node_over_its_limit_gets_one_error_record_per_interval_and_others_are_untouched(
) -> None:
    clock = FakeClock()
    limit = NodeRateLimit(rate_per_s=10, burst=20, report_every_s=10.0, clock=clock)
    inference = Inference(MODELS, ("forecast_a",), None, rate_limit=limit,
                          confirmations=ConfirmationBook(clock=clock))
    flood = minute_readings("pi-flood", range(2500))
    quiet = minute_readings("pi-quiet", range(250))
    errors: list[ErrorRecord] = []
    quiet_answers: list[tuple[str, bytes]] = []
    for index, reading in enumerate(flood):  # 100 a second for 25 s; the quiet node 10 a second
        for out in inference.handle(climate_topic("pi-flood"), reading.encode()):
            if out.is_error:
                errors.append(ErrorRecord.decode(out.payload))
        if index % 10 == 0:
            outs = inference.handle(climate_topic("pi-quiet"), quiet[index // 10].encode())
            quiet_answers += [(o.topic, _without_latency(o.payload)) for o in outs]
        clock.now += 0.01
    # 20 at once, then 10 a second.
    admitted = 2500 - limit.dropped
    assert 20 + 10 * 25 - 2 <= admitted <= 20 + 10 * 25 + 2
    # What was dropped is missing from the node's sequence too: reported as such (field seq),
    # at most once per node every 10 s, counting every number jumped over.
    gaps = [e for e in errors if e.field == "seq"]
    errors = [e for e in errors if e.field != "seq"]
    assert len(gaps) == 3 and {e.node_id for e in gaps} == {"pi-flood"}
    missing = [int(e.reason.split(": ")[1].split()[0]) for e in gaps]
    assert sum(missing) <= limit.dropped <= sum(missing) + 10 * 100
    # (Those dropped after the last one admitted leave no jump yet.)
    assert limit.dropped - 10 <= inference.confirmations.gaps["pi-flood"].missing <= limit.dropped
    # One record at the first drop, then one per 10 s, each counting what it stands for.
    assert len(errors) == 3 and {e.node_id for e in errors} == {"pi-flood"}
    assert "over the rate limit of 10 messages/s (burst 20): 1 dropped" in errors[0].reason
    counts = [int(e.reason.split(": ")[1].split()[0]) for e in errors]
    assert 1 + sum(counts[1:]) <= limit.dropped <= sum(counts) + 10 * 100
    # The quiet node lost nothing: the same forecasts as a collector that only heard it.
    assert quiet_answers == forecasts(Inference(MODELS, ("forecast_a",), None), quiet)


def test_rate_limit_settings_reach_the_inference() -> None:
    from collector.settings import CollectorOptions

    options = CollectorOptions(models_dir=str(MODELS), forecast_models=("forecast_a",),
                               keyword_model="kws_c", rate_limit_per_s=5.0, rate_limit_burst=7)
    limit = Inference.from_options(options).rate_limit
    assert limit is not None and (limit.rate_per_s, limit.burst) == (5.0, 7)
    off = CollectorOptions(models_dir=str(MODELS), keyword_model="kws_c", rate_limit_per_s=0)
    assert Inference.from_options(off).rate_limit is None


# ------------------------------------------------------------------ confirmations


def test_confirmations_are_published_at_most_once_an_interval_with_every_range_taken() -> None:
    clock = FakeClock()
    book = ConfirmationBook(interval_s=1.0, clock=clock)
    assert book.due() == []
    book.record("pi-1", "climate", 5, 0.0)
    assert book.due() == [Due("pi-1", "climate", SeqRanges([(5, 5)]))]  # the first at once
    book.record("pi-1", "climate", 6, 0.0)
    book.record("pi-1", "climate", 8, 0.0)
    clock.now += 0.5
    assert book.due() == []  # within the interval
    clock.now += 0.5
    assert book.due() == [Due("pi-1", "climate", SeqRanges([(5, 6), (8, 8)]))]  # the hole shows
    clock.now += 5.0
    assert book.due() == []  # then quiet until the next message
    book.record("pi-1", "climate", 6, 0.0)  # sent again: confirmed again although nothing moved
    assert [due.taken for due in book.due()] == [SeqRanges([(5, 6), (8, 8)])]
    book.record("pi-2", "audio", 1, 10.0)
    book.record("pi-1", "climate", 7, 0.0)
    assert sorted(book.due(everything=True), key=repr) == [
        Due("pi-1", "climate", SeqRanges([(5, 8)])), Due("pi-2", "audio", SeqRanges([(1, 1)]))]


def test_the_book_counts_holes_per_node_and_knows_a_sound_event_sent_again() -> None:
    clock = FakeClock()
    book = ConfirmationBook(clock=clock)
    for seq in (0, 1, 2, 7, 9):
        taking = book.check("pi-1", "climate", seq, 0.0)
        book.record("pi-1", "climate", seq, 0.0)
    assert taking == Taking(new=True, skipped=1)
    assert (book.gaps["pi-1"].missing, book.gaps["pi-1"].jumps) == (5, 2)
    assert book.gap_report("pi-1") == 5 and book.gap_report("pi-1") == 0  # once per interval
    assert book.check("pi-1", "climate", 5, 0.0) == Taking(new=True, skipped=0)  # a late one
    book.record("pi-1", "audio", 0, 100.0)
    assert book.check("pi-1", "audio", 0, 100.0) == Taking(new=False, skipped=0)
    assert book.check("pi-1", "audio", 0, 200.0).new  # another event under a reused number
    assert book.duplicates == 1
    assert "5 messages missing in sequence" in book.line()
    assert "1 sound events sent again" in book.line()
    shared = ConfirmationBook(gap_kinds=frozenset({"climate"}))  # clips shared in a group
    shared.record("pi-1", "audio", 0, 1.0)
    assert shared.check("pi-1", "audio", 9, 2.0).skipped == 0


def test_a_message_checked_but_not_recorded_yet_is_taken_for_gaps_and_copies() -> None:
    # Between check() and record() the answers wait for the broker's acknowledgement, with
    # newer messages handled meanwhile: those are no jump, and a copy is a re-send.
    book = ConfirmationBook()
    for seq in range(3):
        assert book.check("pi-1", "climate", seq, 0.0) == Taking(new=True, skipped=0)
    assert book.check("pi-1", "climate", 1, 0.0).new is False
    assert book.check("pi-1", "audio", 0, 10.0).new
    assert book.check("pi-1", "audio", 0, 10.0) == Taking(new=False, skipped=0)
    assert book.duplicates == 1 and book.due() == []  # nothing confirmed before it is recorded
    assert book.check("pi-1", "climate", 5, 0.0).skipped == 2  # a real jump still counts
    for seq in (0, 1, 2, 5):
        book.record("pi-1", "climate", seq, 0.0)
    assert [list(due.taken) for due in book.due() if due.kind == "climate"] == \
        [[(0, 2), (5, 5)]]


def test_a_reading_not_recorded_when_the_state_was_saved_is_forecast_after_the_restart(
        tmp_path: Path) -> None:
    # Its forecast was handed to the broker but never acknowledged when the collector died:
    # the saved windows must not hold it, or its re-delivery would be taken for a repeat.
    stream = [ClimateReading("pi-1", T0 + STEP_S * (k + 1), k, 20.0 + 0.1 * k, 50.0)
              for k in range(12)]
    before = new_inference()
    forecasts(before, stream[:10])
    unrecorded = before.handle(climate_topic("pi-1"), stream[10].encode())
    assert len(unrecorded) == 2 and before.uncommitted == 1
    path = tmp_path / "windows.json"
    write_state_file(path, state_document("collector-1", before))
    after = new_inference()
    load_state(path, "collector-1", after)
    again = forecasts(after, stream[10:])
    assert [(t, _without_latency(p)) for t, p in ((o.topic, o.payload) for o in unrecorded)] \
        == again[:2] and len(again) == 4
    assert after.confirmations.highest("pi-1") == 11


def test_the_journal_keeps_what_was_taken_across_a_crash(tmp_path: Path) -> None:
    journal = tmp_path / "var" / "collector-1-windows.json.taken"
    book = ConfirmationBook(journal=journal)
    for seq in range(5):
        book.record("pi-1", "audio", seq, 1000.0 + seq)
    book.record("pi-1", "climate", 3, 50.0)
    # No close(): as after SIGKILL. A torn last line is skipped.
    with journal.open("a") as out:
        out.write("T pi-1 audio 9")
    again = ConfirmationBook(journal=journal)
    assert not again.check("pi-1", "audio", 4, 1004.0).new
    assert again.check("pi-1", "audio", 5, 1005.0).new
    assert again.highest("pi-1", "climate") == 3
    assert {(due.node_id, due.kind) for due in again.due()} == {("pi-1", "audio"),
                                                                ("pi-1", "climate")}
    again.close()


def test_the_journal_is_compacted_to_its_ranges_and_the_readings_not_saved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import collector.confirmations as confirmations

    monkeypatch.setattr(confirmations, "COMPACT_LINES", 100)
    journal = tmp_path / "taken"
    book = ConfirmationBook(journal=journal)
    for seq in range(250):
        book.record("pi-1", "climate", seq, 600.0 * seq, (20.0, 50.0))
        if seq == 240:
            book.state_saved(book.readings_through)
    book.close()
    assert len(journal.read_text().splitlines()) < 100
    again = ConfirmationBook(journal=journal)
    assert again.highest("pi-1", "climate") == 249 and again.readings_through == 250
    assert [r.seq for r in again.journalled_readings if r.number > 241] == list(range(241, 250))


def test_an_unwritable_journal_is_said_once_and_the_book_works_in_memory(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("")
    book = ConfirmationBook(journal=tmp_path / "file" / "taken")  # its folder is a file
    book.record("pi-1", "climate", 0, 0.0)
    assert book.highest("pi-1", "climate") == 0
    assert "cannot be used" in caplog.text


def test_a_sound_event_sent_again_is_confirmed_again_but_not_answered_twice() -> None:
    inference = Inference(MODELS, (), "kws_c")
    rate, samples = read_wav(next((REPO_ROOT / "samples" / "speech" / "yes").glob("*.wav")))
    clip = AudioClip.from_samples("pi-1", 1_729_300_000.0, 0, rate, samples).encode()
    assert len(inference.handle(audio_topic("pi-1"), clip)) == 1
    assert inference.handle(audio_topic("pi-1"), clip) == []
    inference.commit()
    assert inference.confirmations.duplicates == 1
    assert [(due.node_id, due.kind, list(due.taken))
            for due in inference.confirmations.due()] \
        == [("pi-1", "audio", [(0, 0)])]


def test_the_collector_confirms_only_the_readings_of_nodes_it_forecasts() -> None:
    inference = Inference(MODELS, ("forecast_a",), None, partition=(1, 2))
    owned = [n for n in ("pi-1", "pi-2", "pi-3", "pi-4") if inference.owns(n)]
    other = [n for n in ("pi-1", "pi-2", "pi-3", "pi-4") if not inference.owns(n)]
    assert owned and other
    for node in owned + other:
        for reading in minute_readings(node, range(3)):
            inference.handle(climate_topic(node), reading.encode())
    inference.commit()
    assert sorted(due.node_id for due in inference.confirmations.due()) == sorted(owned)
    assert inference.confirmations.highest(owned[0]) == 2
