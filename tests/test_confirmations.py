"""The node keeps what the broker acknowledged until a collector confirms it (issue: a broker
killed between its PUBACK and its disk loses readings the node had already let go)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from node.confirmations import ConfirmationTracker
from node.daemon import Node
from node.settings import NodeIdentity, NodeSettings
from node.spool import CLIMATE, Spool
from tests.conftest import broker_config
from tests.flaky_link import FlakyLink
from tests.test_node import collect_seqs, make_node, run_in_thread
from tests.waiting import wait_for
from tinyml_core.broker import LocalMosquitto
from tinyml_core.messages import Confirmation
from tinyml_core.mqtt import MqttClient
from tinyml_core.topics import climate_topic, confirmed_topic

START = 1_729_300_000.0


# --- bookkeeping -------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_confirmation_covers_exactly_the_numbers_it_names_and_a_hole_is_sent_again() -> None:
    clock = FakeClock()
    tracker = ConfirmationTracker(active=True, resend_after_s=10.0, clock=clock)
    for spool_id, seq in enumerate(range(10, 14), start=1):
        assert tracker.acknowledged(spool_id, "pi-1", "climate", seq, connection=1)
    tracker.acknowledged(5, "pi-1", "audio", 10, connection=1)  # another kind, same number
    # The broker's queue dropped 11: the collector took 10, 12 and 13.
    assert tracker.confirmation("pi-1", "climate", [(0, 10), (12, 13)]) == [1, 3, 4]
    assert len(tracker) == 2 and tracker.highest == {"climate": 13}
    assert tracker.to_send_again(connection=1) == []  # not yet: it may still come
    clock.now = 10.5
    assert tracker.to_send_again(connection=1) == [2, 5]
    assert tracker.to_send_again(connection=2) == [2, 5]  # after a reconnect: at once
    # A PUBACK that comes after the confirmation that covers it: nothing to keep.
    assert not tracker.acknowledged(6, "pi-1", "climate", 12, connection=1)
    assert tracker.confirmation("pi-2", "climate", [(0, 100)]) == []  # another node's


def test_the_window_holds_new_messages_while_too_many_are_unconfirmed() -> None:
    tracker = ConfirmationTracker(active=True, window=3)
    assert tracker.room(in_flight=1) == 2
    tracker.acknowledged(1, "pi-1", "climate", 0, connection=1)
    tracker.acknowledged(2, "pi-1", "climate", 1, connection=1)
    assert tracker.room(in_flight=1) == 0
    tracker.confirmation("pi-1", "climate", [(0, 0)])
    assert tracker.room(in_flight=1) == 1
    assert ConfirmationTracker(active=False, window=3).room(in_flight=10) == 3  # none confirms


def test_a_replay_gives_up_waiting_when_no_confirmation_ever_comes() -> None:
    clock = FakeClock()
    tracker = ConfirmationTracker(active=True, give_up_after_s=5.0, clock=clock)
    tracker.acknowledged(1, "pi-1", "climate", 0, connection=1)
    clock.now = 4.0
    assert not tracker.should_give_up()
    clock.now = 6.0
    assert tracker.should_give_up()
    assert tracker.give_up() == [1] and not tracker.active and len(tracker) == 0
    assert not tracker.should_give_up()


def test_readings_left_by_an_earlier_run_are_sent_again_on_the_first_connection(
        tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", 10**6) as spool:
        ids = [spool.put_numbered(CLIMATE, lambda seq: (climate_topic("pi-1"), b"r%d" % seq))
               for _ in range(3)]
        kept = spool.acknowledged(ids, keep=True)
        assert [m.seq for m in kept] == [0, 1, 2] and len(spool) == 0
    with Spool(tmp_path / "spool", 10**6) as spool:  # a restart
        tracker = ConfirmationTracker(spool.unconfirmed())
        assert tracker.active and tracker.to_send_again(connection=1) == ids
        assert {(m.node_id, m.kind) for m in spool.unconfirmed()} == {("pi-1", "climate")}
        assert [m.payload for m in spool.unconfirmed(ids[1:])] == [b"r1", b"r2"]


def test_unconfirmed_readings_are_capped_oldest_first_and_counted(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", 10**6, max_unconfirmed=3) as spool:
        ids = [spool.put_numbered(CLIMATE, lambda seq: (climate_topic("pi-1"), b"r%d" % seq))
               for _ in range(5)]
        spool.acknowledged(ids, keep=True)
        assert [m.seq for m in spool.unconfirmed()] == [2, 3, 4]
        stats = spool.stats()
        assert (stats.unconfirmed, stats.dropped_unconfirmed) == (3, 2)
        assert "2 unconfirmed messages" in stats.line()


def test_the_size_cap_drops_unconfirmed_readings_before_anything_still_to_send(
        tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", 2_000) as spool:
        first = [spool.put_numbered(CLIMATE, lambda seq: (climate_topic("pi-1"), b"x" * 100))
                 for _ in range(5)]
        spool.acknowledged(first, keep=True)
        for _ in range(10):  # ~1.7 kB waiting: the unconfirmed make room first
            spool.put_numbered(CLIMATE, lambda seq: (climate_topic("pi-1"), b"y" * 100))
        stats = spool.stats()
        assert stats.messages == 10 and stats.dropped_climate == 0
        assert stats.dropped_unconfirmed >= 3


# --- the node against Mosquitto, with a scripted collector -------------------------------------
class ScriptedCollector:
    """Hears the node's readings and confirms exactly what the test says."""

    def __init__(self, connect: Callable[..., MqttClient], node_id: str) -> None:
        self.node_id = node_id
        self.client = connect("script-collector", persistent_session=True,
                              publish_availability=False)
        self.client.subscribe(climate_topic(node_id))

    def confirm(self, *ranges: tuple[int, int], kind: str = "climate") -> None:
        message = Confirmation(self.node_id, "script-collector", kind, ranges[-1][1], ranges,
                               time.time())
        assert self.client.publish(confirmed_topic(self.node_id, kind), message.encode(),
                                   retain=True).wait(5)


@contextmanager
def running_node(mosquitto: LocalMosquitto, tmp_path: Path, **identity: object) -> Iterator[Node]:
    node = make_node(mosquitto, tmp_path, **identity)
    thread = run_in_thread(node)
    try:
        yield node
    finally:
        node.stop()
        thread.join(timeout=5)
        node.close()


def test_unconfirmed_readings_are_sent_again_after_a_reconnect_and_kept_until_confirmed(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    collector = ScriptedCollector(connect, "pi-node")
    with running_node(mosquitto, tmp_path) as node:
        tracker = node.forwarder.confirmations
        assert tracker is not None and not tracker.active
        for index in range(5):
            node.record_reading(20.0, 50.0, time_s=START + 600 * index)
        assert collect_seqs(collector.client, 5) == [0, 1, 2, 3, 4]
        collector.confirm((0, 4))  # from now on the node keeps what is not confirmed
        assert wait_for(lambda: tracker.active)
        for index in range(5, 10):
            node.record_reading(20.0, 50.0, time_s=START + 600 * index)
        assert collect_seqs(collector.client, 10, seen=[0, 1, 2, 3, 4])[5:] == [5, 6, 7, 8, 9]
        assert wait_for(lambda: len(node.spool) == 0 and len(tracker) == 5)
        # The broker restarts (as if it had lost them): the node sends 5-9 again, in order.
        mosquitto.stop()
        mosquitto.start()
        again = collect_seqs(collector.client, 5)
        assert again == [5, 6, 7, 8, 9]
        assert node.forwarder.stats.sent_again == 5 and len(tracker) == 5
        collector.confirm((0, 9))
        assert wait_for(lambda: len(tracker) == 0 and node.spool.unconfirmed() == [])
        assert "confirmed up to seq climate 9" in node.stats_line()


def test_readings_paho_re_sent_after_a_reconnect_are_sent_again_until_confirmed(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    # Published on one connection, acknowledged on the next (paho's own re-send): no
    # confirmation can cover them, so the node sends them again itself.
    collector = ScriptedCollector(connect, "pi-node")
    link = FlakyLink(mosquitto.host, mosquitto.port)
    node = Node(NodeSettings(
        broker=dataclasses.replace(broker_config(mosquitto), port=link.port),
        node=NodeIdentity(id="pi-node", spool_path=str(tmp_path / "spool"))))
    thread = run_in_thread(node)
    tracker = node.forwarder.confirmations
    assert tracker is not None
    try:
        node.record_reading(20.0, 50.0, time_s=START)
        assert collect_seqs(collector.client, 1) == [0]
        collector.confirm((0, 0))
        assert wait_for(lambda: tracker.active)
        link.hold()  # the link goes dead: 1-3 leave the node, nothing arrives
        for index in range(1, 4):
            node.record_reading(20.0, 50.0, time_s=START + 600 * index)
        assert wait_for(lambda: node.forwarder.in_flight == 3)
        link.cut()  # the node reconnects; paho re-sends 1-3 and gets their PUBACKs
        assert collect_seqs(collector.client, 3)[:3] == [1, 2, 3]
        assert wait_for(lambda: node.forwarder.stats.sent_again >= 3 and len(tracker) == 3
                        and node.forwarder.in_flight == 0)
        collector.confirm((0, 3))
        assert wait_for(lambda: len(tracker) == 0), tracker.line()
    finally:
        node.stop()
        thread.join(timeout=5)
        node.close()
        link.close()


def test_a_node_that_no_collector_ever_confirmed_keeps_nothing_and_says_so(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    listener = connect("listener", persistent_session=True, publish_availability=False)
    listener.subscribe("sensors/#")
    with running_node(mosquitto, tmp_path) as node:
        for index in range(5):
            node.record_reading(20.0, 50.0, time_s=START + 600 * index)
        assert collect_seqs(listener, 5) == [0, 1, 2, 3, 4]
        assert wait_for(lambda: len(node.spool) == 0)
        assert node.spool.unconfirmed() == []
        assert "no collector has ever confirmed a message" in node.stats_line()


def test_a_collector_that_stops_answering_leaves_at_most_the_cap_kept(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    collector = ScriptedCollector(connect, "pi-node")
    with running_node(mosquitto, tmp_path, max_unconfirmed=10) as node:
        node.record_reading(20.0, 50.0, time_s=START)
        collect_seqs(collector.client, 1)
        collector.confirm((0, 0))
        tracker = node.forwarder.confirmations
        assert tracker is not None and wait_for(lambda: tracker.active)
        for index in range(1, 31):  # the collector is gone from here on
            node.record_reading(20.0, 50.0, time_s=START + 600 * index)
        assert wait_for(lambda: len(node.spool) == 0 and node.forwarder.window.room() > 0)
        stats = node.spool.stats()
        assert stats.unconfirmed == 10 and stats.dropped_unconfirmed == 20
        assert [m.seq for m in node.spool.unconfirmed()] == list(range(21, 31))


def test_confirmations_can_be_turned_off(mosquitto: LocalMosquitto, tmp_path: Path) -> None:
    node = make_node(mosquitto, tmp_path, confirm=False)
    assert node.forwarder.confirmations is None
    assert "confirmations off" in node.stats_line()
    node.close(drain_s=0)


@contextmanager
def confirmed_node(mosquitto: LocalMosquitto, connect: Callable[..., MqttClient],
                   tmp_path: Path, **identity: object
                   ) -> Iterator[tuple[Node, ScriptedCollector, ConfirmationTracker]]:
    """A running node that has heard its first confirmation (reading 0), so it keeps messages
    until they are confirmed; and the scripted collector that hears it."""
    collector = ScriptedCollector(connect, "pi-node")
    with running_node(mosquitto, tmp_path, **identity) as node:
        node.record_reading(20.0, 50.0, time_s=START)
        assert collect_seqs(collector.client, 1) == [0]
        collector.confirm((0, 0))
        tracker = node.forwarder.confirmations
        assert tracker is not None and wait_for(lambda: tracker.active)
        yield node, collector, tracker


def test_a_message_a_full_queue_dropped_is_sent_again_without_a_reconnect(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    # The collector took 0-2 and 4: 3 fell out of a queue somewhere. Only the node can help.
    with confirmed_node(mosquitto, connect, tmp_path, resend_after_s=0.5) as (
            node, collector, tracker):
        for index in range(1, 5):
            node.record_reading(20.0, 50.0, time_s=START + 600 * index)
        assert collect_seqs(collector.client, 4)[:4] == [1, 2, 3, 4]
        collector.confirm((0, 2), (4, 4))
        assert collect_seqs(collector.client, 1, timeout=5) == [3]  # once the timeout passed
        assert node.forwarder.stats.sent_again >= 1 and len(tracker) == 1
        collector.confirm((0, 4))
        assert wait_for(lambda: len(tracker) == 0 and node.spool.unconfirmed() == [])


def test_the_node_sends_no_more_than_its_window_ahead_of_the_confirmations(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    with confirmed_node(mosquitto, connect, tmp_path, confirm_window=5, resend_after_s=60) as (
            node, collector, _):
        for index in range(1, 21):
            node.record_reading(20.0, 50.0, time_s=START + 600 * index)
        assert collect_seqs(collector.client, 5) == [1, 2, 3, 4, 5]  # and then it waits
        assert len(node.spool) == 15
        collector.confirm((0, 3))
        assert collect_seqs(collector.client, 3, timeout=5) == [6, 7, 8]
        collector.confirm((0, 20))
        assert collect_seqs(collector.client, 12)[:12] == list(range(9, 21))
        assert wait_for(lambda: node.forwarder.settled)


def test_sound_events_are_kept_until_confirmed_like_readings(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    with confirmed_node(mosquitto, connect, tmp_path, resend_after_s=0.5) as (
            node, collector, tracker):
        collector.client.subscribe("sensors/pi-node/audio")
        clip = np.zeros(8000, dtype=np.int16)
        for index in range(3):
            node.record_clip(START + index, 8000, clip)
        assert sorted(set(collect_seqs(collector.client, 3))) == [0, 1, 2]
        assert wait_for(lambda: len(tracker) == 3 and len(node.spool.unconfirmed()) == 3)
        collector.confirm((0, 2), kind="audio")
        assert wait_for(lambda: len(tracker) == 0 and node.spool.unconfirmed() == [])


def test_what_stays_missing_after_a_reconnect_goes_before_new_readings(
        mosquitto: LocalMosquitto, connect: Callable[..., MqttClient], tmp_path: Path) -> None:
    # After a reconnect the node queues everything unconfirmed to send again; then a late
    # confirmation covers most of it (the collector had taken it). What it does not cover must
    # still go before new readings: in a replay of 10-minute data, new readings that overtake
    # a lost one by more than the collector's windows reach leave its forecasts unmade. The
    # node is stepped by hand, so that the confirmation comes between two steps.
    collector = ScriptedCollector(connect, "pi-node")
    node = make_node(mosquitto, tmp_path, resend_after_s=600)
    node.start()
    forwarder, tracker = node.forwarder, node.forwarder.confirmations
    assert tracker is not None

    def step_until(condition: Callable[[], bool]) -> bool:
        return wait_for(lambda: forwarder.step() >= 0 and condition())

    try:
        node.record_reading(20.0, 50.0, time_s=START)
        assert step_until(lambda: forwarder.stats.acknowledged == 1)
        collector.confirm((0, 0))
        assert step_until(lambda: tracker.active)
        for index in range(1, 61):
            node.record_reading(20.0, 50.0, time_s=START + 600 * index)
        assert step_until(lambda: len(tracker) == 60 and forwarder.in_flight == 0)
        assert sorted(set(collect_seqs(collector.client, 61))) == list(range(61))
        connection, heard = node.client.connection, node.client.stats.received
        mosquitto.stop()
        mosquitto.start()
        # Back: the retained confirmation comes again (covering 0) once subscribed.
        assert wait_for(lambda: node.client.connection != connection and node.client.is_connected
                        and node.client.stats.received > heard)
        for index in range(61, 81):
            node.record_reading(20.0, 50.0, time_s=START + 600 * index)
        assert forwarder.step() == 20  # 1-20 again (its window): 21-60 wait their turn
        heard = node.client.stats.received
        collector.confirm((0, 50))  # 51-60 are what the broker lost
        assert wait_for(lambda: node.client.stats.received > heard)
        assert step_until(lambda: len(tracker) == 30 and len(node.spool) == 0
                          and forwarder.in_flight == 0)
        again = [seq for seq in collect_seqs(collector.client, 50) if seq not in range(1, 21)]
        firsts = list(dict.fromkeys(again))
        assert firsts == list(range(51, 81)), firsts
    finally:
        node.stop()
        node.close()
