"""A node that starts counting again (a new SD card, a deleted spool, ``node replay`` run
twice, two nodes given one id) is told from a repeat by the spool id its messages carry
(issue 39: the collector confirmed the new numbers as repeats and the node deleted them)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from collector.confirmations import ConfirmationBook, Taking
from collector.inference import Inference
from collector.worker import Worker
from node.daemon import Node
from node.replay import ReplayResult, replay
from node.spool import Spool
from tests.collector_runner import MODELS, start_worker, stop_worker
from tests.flow import (
    START,
    STEP_S,
    Published,
    expected_forecast_times,
    reading_items,
    replay_as_node,
    watch,
)
from tests.test_node import make_node, run_in_thread
from tests.waiting import wait_for
from tinyml_core.broker import LocalMosquitto
from tinyml_core.messages import ClimateReading, Confirmation, ErrorRecord, Forecast
from tinyml_core.mqtt import MqttClient
from tinyml_core.topics import (
    PredictionKind,
    climate_topic,
    confirmed_topic,
    errors_topic,
    prediction_topic,
)

SPOOL_A, SPOOL_B = "aaaa0000aaaa0000", "bbbb1111bbbb1111"


# --- the node's spool id ------------------------------------------------------------------------
def test_a_spool_keeps_its_id_across_restarts_and_a_new_spool_gets_another(
        tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", 10**6) as spool:
        first, created = spool.spool_id, spool.created
    with Spool(tmp_path / "spool", 10**6) as spool:  # the node restarted
        assert (spool.spool_id, spool.created) == (first, created)
    (tmp_path / "spool").unlink()
    with Spool(tmp_path / "spool", 10**6) as spool:  # deleted: a new numbering
        assert spool.spool_id != first and spool.next_seq() == 0
    older = tmp_path / "older"  # a spool file from before spool ids gets one, numbers carry on
    with sqlite3.connect(older) as db:
        db.executescript("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
                         "INSERT INTO counters VALUES ('seq_climate', 41);")
    with Spool(older, 10**6) as spool:
        assert len(spool.spool_id) == 16 and spool.next_seq() == 41


# --- the book ----------------------------------------------------------------------------------
def test_a_new_spool_is_a_new_numbering_and_repeats_inside_one_stay_repeats() -> None:
    book = ConfirmationBook()
    for seq in range(5):
        assert book.check("pi-1", "climate", seq, 0.0, SPOOL_A) == Taking(True, 0)
        book.record("pi-1", "climate", seq, 0.0, spool=SPOOL_A)
    assert not book.check("pi-1", "climate", 3, 0.0, SPOOL_A).new  # a re-send: a repeat
    assert book.check("pi-1", "climate", 0, 0.0, SPOOL_B) == Taking(True, 0, restarted=True)
    book.record("pi-1", "climate", 0, 0.0, spool=SPOOL_B)
    assert book.check("pi-1", "climate", 0, 0.0, SPOOL_B) == Taking(False, 0)  # repeat in B
    assert book.highest("pi-1") == 0 and book.current_spool("pi-1") == SPOOL_B
    # The confirmations name their numbering; the current one comes last (the broker retains it).
    assert [(d.spool, list(d.taken)) for d in book.due()] == [
        (SPOOL_A, [(0, 4)]), (SPOOL_B, [(0, 0)])]
    assert "1 times a node started counting again" in book.line()


def test_two_numberings_taking_turns_are_a_conflict_reported_once_an_interval() -> None:
    book = ConfirmationBook()
    book.record("pi-1", "climate", 0, 0.0, spool=SPOOL_A)
    assert book.check("pi-1", "climate", 0, 0.0, SPOOL_B).restarted
    taking = book.check("pi-1", "climate", 1, 0.0, SPOOL_A)
    assert taking.new and taking.conflict == f"spool {SPOOL_A} and spool {SPOOL_B}"
    assert book.conflict_report_due("pi-1") and not book.conflict_report_due("pi-1")
    assert book.check("pi-1", "climate", 1, 0.0, SPOOL_B).conflict  # every turn counts
    assert "2 messages from two nodes under one id" in book.line()


def test_a_node_without_spool_ids_keeps_todays_numbering_and_may_start_naming_one(
        caplog: pytest.LogCaptureFixture) -> None:
    book = ConfirmationBook()
    for seq in range(3):
        book.check("old", "climate", seq, 0.0)
        book.record("old", "climate", seq, 0.0)
    assert not book.check("old", "climate", 2, 0.0).new
    assert caplog.text.count("old sends no spool id") == 1  # said once
    taking = book.check("old", "climate", 3, 0.0, SPOOL_A)  # updated: its spool got an id
    assert taking.new and taking.restarted and not taking.conflict


def test_the_journal_keeps_every_numbering_across_a_restart_and_a_compaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import collector.confirmations as confirmations

    journal = tmp_path / "taken"
    book = ConfirmationBook(journal=journal)
    for seq in range(5):
        book.record("pi-1", "audio", seq, 1000.0 + seq, spool=SPOOL_A)
        book.record("pi-1", "climate", seq, 600.0 * seq, (20.0, 50.0), spool=SPOOL_A)
    for seq in range(3):
        book.record("pi-1", "audio", seq, 2000.0 + seq, spool=SPOOL_B)
        book.record("pi-1", "climate", seq, 600.0 * seq, (21.0, 51.0), spool=SPOOL_B,
                    fresh=seq == 0)
    with journal.open("a") as out:  # a line of a journal written before spool ids
        out.write("T pi-old climate 7 1.0\n")
    again = ConfirmationBook(journal=journal)  # as after SIGKILL: no close()
    assert again.current_spool("pi-1") == SPOOL_B and again.highest("pi-1") == 2
    assert not again.check("pi-1", "audio", 2, 2002.0, SPOOL_B).new
    assert not again.check("pi-1", "audio", 4, 1004.0, SPOOL_A).new
    assert again.check("pi-1", "climate", 3, 1800.0, SPOOL_B) == Taking(True, 0)
    assert again.highest("pi-old") == 7 and again.current_spool("pi-old") is None
    assert [r.fresh for r in again.journalled_readings if r.seq == 0] == [False, True]
    again.close()
    monkeypatch.setattr(confirmations, "COMPACT_LINES", 5)
    compacted = ConfirmationBook(journal=journal)  # compacted on opening
    compacted.close()
    lines = journal.read_text().splitlines()
    assert lines[0].startswith("N ")  # rewritten as ranges, per numbering
    assert {line for line in lines if line.startswith("R pi-1 climate")} == {
        f"R pi-1 climate 0 4 {SPOOL_A}", f"R pi-1 climate 0 2 {SPOOL_B}"}
    last = ConfirmationBook(journal=journal)
    assert last.current_spool("pi-1") == SPOOL_B
    assert not last.check("pi-1", "climate", 4, 2400.0, SPOOL_A).new
    assert not last.check("pi-1", "climate", 2, 1200.0, SPOOL_B).new


def test_a_new_numbering_that_goes_back_in_time_starts_the_windows_afresh() -> None:
    inference = Inference(MODELS, ("forecast_a",), None)

    def forecasts(spool: str, count: int = 8) -> int:
        answers = [inference.handle(climate_topic("pi-1"), ClimateReading(
            "pi-1", START + STEP_S * k, k, 20.0 + k / 10, 50.0, spool).encode())
            for k in range(count)]
        inference.commit()
        return sum(map(len, answers))

    assert forecasts(SPOOL_A) == 3  # windows ending at steps 5, 6, 7
    assert forecasts(SPOOL_A) == 0  # sent again: repeats
    assert forecasts(SPOOL_B) == 3  # the same recording under a new spool: forecast again


# --- through a real Mosquitto ------------------------------------------------------------------
@contextmanager
def collector(mosquitto: LocalMosquitto, state: Path) -> Iterator[tuple[Worker, Published]]:
    """A collector with its state file (and journal), as installed."""
    worker, thread = start_worker(mosquitto, "collector-renumber", keyword_model="",
                                  state_path=str(state))
    try:
        yield worker, watch(worker)
    finally:
        stop_worker(worker, thread)


def test_the_same_recording_replayed_twice_is_forecast_twice_also_after_a_restart(
        mosquitto: LocalMosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    items = reading_items("twice", 12)
    state = tmp_path / "windows.json"
    for run in range(2):  # the second run: a collector restarted from its state file
        with collector(mosquitto, state) as (_, published):
            for _ in range(2 - run):
                result = replay_as_node(mosquitto, "twice", items)
                assert result.complete and result.confirmed == 12, result.line()
            expected = 7 * (2 - run)
            assert wait_for(lambda n=expected: len(published.forecasts) == n)
            assert {t for t, _ in published.forecasts} == expected_forecast_times(12)
    assert caplog.text.count("twice started counting climate again at 0") == 2
    assert "twice's new numbering goes back to" in caplog.text


def test_a_reimaged_node_is_handled_and_what_it_sends_stays_until_confirmed(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # Its first life: 8 readings confirmed (the retained confirmation stays on the broker).
    state = tmp_path / "windows.json"
    with collector(mosquitto, state) as (_, published):
        first = make_node(mosquitto, tmp_path / "sd-card-1")
        thread = run_in_thread(first)
        for k in range(8):
            first.record_reading(20.0, 50.0, time_s=START + STEP_S * k)
        assert wait_for(lambda: len(first.spool) == 0 and first.spool.unconfirmed() == []
                        and len(published.forecasts) == 3)
        first.stop()
        thread.join(timeout=5)
        first.close()
    # Re-imaged: a new SD card, the same id, later times; the collector is down meanwhile.
    second = make_node(mosquitto, tmp_path / "sd-card-2")
    assert second.spool.spool_id != first.spool.spool_id
    thread = run_in_thread(second)
    try:
        # The old numbering's retained confirmation says a collector confirms this node.
        tracker = second.forwarder.confirmations
        assert tracker is not None and wait_for(lambda: tracker.active)
        later = START + STEP_S * 2000  # two weeks on, on a step's end like START
        for k in range(8):
            second.record_reading(22.0, 40.0, time_s=later + STEP_S * k)
        # The old numbering's retained confirmation covers 0-7: not this spool's, so nothing
        # is let go until a collector took it.
        assert wait_for(lambda: len(second.spool.unconfirmed()) == 8)
        time.sleep(0.5)
        assert len(second.spool.unconfirmed()) == 8
        forecasts = connect("forecast-watch")
        forecasts.subscribe(prediction_topic("pi-node", PredictionKind.FORECAST))
        with collector(mosquitto, state):
            assert wait_for(lambda: second.spool.unconfirmed() == [], timeout=30)
            times: set[float] = set()
            assert wait_for(lambda: (message := forecasts.receive(timeout=0.1)) is not None
                            and times.add(Forecast.decode(message.payload).input_time) is None
                            and times >= {later + STEP_S * k for k in (5, 6, 7)}), times
        assert "pi-node started counting climate again at 0" in caplog.text
    finally:
        second.stop()
        thread.join(timeout=5)
        second.close()


def test_a_spool_deleted_while_the_collector_runs_is_a_new_numbering(
        mosquitto: LocalMosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with collector(mosquitto, tmp_path / "windows.json") as (worker, published):
        for life in range(2):
            node = make_node(mosquitto, tmp_path)
            thread = run_in_thread(node)
            for k in range(6):
                node.record_reading(20.0, 50.0, time_s=START + STEP_S * (6 * life + k))
            assert wait_for(lambda node=node: node.spool.unconfirmed() == []
                            and len(node.spool) == 0)
            node.stop()
            thread.join(timeout=5)
            node.close()
            (tmp_path / "spool").unlink()  # to free space, say
        assert wait_for(lambda: len(published.forecasts) == 7)  # windows ending at 5-11
        assert worker.inference.confirmations.restarts == 1
    assert "pi-node started counting climate again at 0" in caplog.text


def test_two_nodes_with_one_id_are_an_error_record_and_a_log_line(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    errors = connect("errors-watch")
    errors.subscribe(errors_topic("shared"))
    with collector(mosquitto, tmp_path / "windows.json"):
        # Two replays under one id at once (each its own MQTT client): their numberings take
        # turns.
        items = reading_items("shared", 200)
        results: list[ReplayResult] = []
        replays = [threading.Thread(target=lambda n=n: results.append(replay(
            connect(f"shared-{n}", publish_availability=False), items, 0)), daemon=True)
            for n in range(2)]
        for thread in replays:
            thread.start()
        for thread in replays:
            thread.join(timeout=60)
        record = None
        deadline = time.monotonic() + 10
        while record is None and time.monotonic() < deadline:
            message = errors.receive(timeout=0.5)
            if message is not None:
                candidate = ErrorRecord.decode(message.payload)
                if candidate.field == "spool":
                    record = candidate
        assert record is not None and "two nodes are sending as shared" in record.reason
    assert "two nodes are sending as shared" in caplog.text
    assert len(results) == 2 and all(result.complete for result in results), results


def test_a_node_ignores_a_confirmation_of_another_numbering(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    node: Node = make_node(mosquitto, tmp_path)
    old = Confirmation("pi-node", "collector-1", "climate", 50, ((0, 50),), time.time(),
                       SPOOL_A)
    publisher = connect("old-collector")
    assert publisher.publish(confirmed_topic("pi-node", "climate"), old.encode(),
                             retain=True).wait(5)
    listener = connect("listener")
    listener.subscribe("sensors/#")
    thread = run_in_thread(node)
    try:
        tracker = node.forwarder.confirmations
        assert tracker is not None
        tracker.active = True  # it has heard a confirmation before: it keeps what it sends
        for k in range(3):
            node.record_reading(20.0, 50.0, time_s=START + STEP_S * k)
        assert wait_for(lambda: len(node.spool.unconfirmed()) == 3)
        time.sleep(0.5)
        assert [m.seq for m in node.spool.unconfirmed()] == [0, 1, 2]  # kept, not "confirmed"
        assert node.spool.peek_seq() == 3  # and its numbering did not jump above the other's
        ours = Confirmation("pi-node", "collector-1", "climate", 2, ((0, 2),), time.time(),
                            node.spool.spool_id)
        publisher.publish(confirmed_topic("pi-node", "climate"), ours.encode(), retain=True)
        assert wait_for(lambda: node.spool.unconfirmed() == [])
        assert node.diagnostics().spool == node.spool.spool_id
    finally:
        node.stop()
        thread.join(timeout=5)
        node.close()
