"""The paho adapter against a real Mosquitto: retry, availability, sessions, refusals."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import broker_config
from tinyml_core.broker import LocalMosquitto, free_port
from tinyml_core.config import BrokerConfig, TlsConfig
from tinyml_core.errors import MqttConnectError, MqttError
from tinyml_core.messages import Availability
from tinyml_core.mqtt import MqttClient, PublishWindow

pytestmark = pytest.mark.broker


def retained_status(broker: LocalMosquitto, client_id: str) -> Availability:
    """Read the retained status/<client_id> as a fresh subscriber sees it."""
    with MqttClient(broker_config(broker), "status-reader", publish_availability=False) as reader:
        reader.subscribe(f"status/{client_id}")
        message = reader.receive(timeout=5)
        assert message is not None and message.retain, "no retained status"
        return Availability.decode(message.payload)


def test_online_while_connected_and_offline_after_close(mosquitto: LocalMosquitto) -> None:
    client = MqttClient(broker_config(mosquitto), "pi-1").connect()
    assert retained_status(mosquitto, "pi-1") is Availability.ONLINE
    client.close()
    assert retained_status(mosquitto, "pi-1") is Availability.OFFLINE


def test_last_will_announces_a_crashed_client(mosquitto: LocalMosquitto) -> None:
    # A separate process that connects and dies without DISCONNECT, as a power cut would.
    script = textwrap.dedent(f"""
        import os
        from tinyml_core.config import BrokerConfig
        from tinyml_core.mqtt import MqttClient
        config = BrokerConfig(host="{mosquitto.host}", port={mosquitto.port})
        client = MqttClient(config, "pi-crash")
        client.connect()
        print("connected", flush=True)
        os._exit(0)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30, cwd=Path(__file__).resolve().parent.parent)
    assert "connected" in result.stdout, result.stderr
    deadline = time.monotonic() + 5
    while retained_status(mosquitto, "pi-crash") is not Availability.OFFLINE:
        assert time.monotonic() < deadline, "Last Will was not published"
        time.sleep(0.05)


def test_unreachable_broker_fails_clearly_within_the_timeout() -> None:
    config = BrokerConfig(host="127.0.0.1", port=free_port(), connect_timeout_s=1.0,
                          reconnect_min_s=0.1, reconnect_max_s=0.2)
    started = time.monotonic()
    with pytest.raises(MqttConnectError, match=r"unreachable for 1 s: .*refused"):
        MqttClient(config, "pi-1").connect()
    assert time.monotonic() - started < 5


def test_connect_retries_until_the_broker_comes_up(tmp_path: Path) -> None:
    broker = LocalMosquitto(tmp_path / "late")
    config = BrokerConfig(host=broker.host, port=broker.port, connect_timeout_s=10,
                          reconnect_min_s=0.1, reconnect_max_s=0.2)
    starter = threading.Timer(0.7, broker.start)
    starter.start()
    try:
        client = MqttClient(config, "pi-1").connect()
        assert client.is_connected
        client.close()
    finally:
        starter.join()
        broker.cleanup()


def test_reconnects_resubscribes_and_republishes_online(mosquitto: LocalMosquitto) -> None:
    config = broker_config(mosquitto)
    listener = MqttClient(config, "listener", persistent_session=True).connect()
    listener.subscribe("sensors/#")
    mosquitto.stop()
    assert not listener.wait_connected(0) or not listener.is_connected
    mosquitto.start()
    assert listener.wait_connected(10), "client did not reconnect"
    with MqttClient(config, "sender", publish_availability=False) as sender:
        assert sender.publish("sensors/pi-1/climate", b"x").wait(5)
    message = listener.receive(timeout=5)
    assert message is not None and message.topic == "sensors/pi-1/climate"
    assert listener.stats.connects == 2
    assert retained_status(mosquitto, "listener") is Availability.ONLINE
    listener.close()


def test_a_session_lost_by_the_broker_is_reported_and_subscriptions_restored(
        mosquitto: LocalMosquitto, caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    config = broker_config(mosquitto)
    worker = MqttClient(config, "worker", persistent_session=True).connect()
    worker.subscribe("sensors/#")
    mosquitto.kill()
    shutil.rmtree(mosquitto.directory / "data")  # as if it had never saved
    (mosquitto.directory / "data").mkdir()
    with caplog.at_level("WARNING", logger="tinyml.mqtt"):
        mosquitto.start()
        assert worker.wait_connected(10)
        with MqttClient(config, "sender", publish_availability=False) as sender:
            assert sender.publish("sensors/pi-1/climate", b"x").wait(5)
        message = worker.receive(timeout=5)
    assert message is not None and message.topic == "sensors/pi-1/climate"
    assert any("no longer had this client's session" in r.getMessage() for r in caplog.records)
    worker.close()


def test_persistent_session_keeps_messages_sent_while_away(mosquitto: LocalMosquitto) -> None:
    config = broker_config(mosquitto)
    worker = MqttClient(config, "worker", persistent_session=True).connect()
    worker.subscribe("sensors/+/climate")
    worker.close()
    with MqttClient(config, "sender", publish_availability=False) as sender:
        handles = [sender.publish("sensors/pi-1/climate", str(i).encode()) for i in range(50)]
        assert all(handle.wait(5) for handle in handles)
    # The broker restarts in between: persistence keeps the queued messages too.
    mosquitto.restart()
    worker = MqttClient(config, "worker", persistent_session=True).connect()
    payloads = []
    while (message := worker.receive(timeout=2)) is not None:
        payloads.append(message.payload)
    worker.close()
    assert payloads == [str(i).encode() for i in range(50)]


def test_manual_ack_redelivers_unhandled_messages(mosquitto: LocalMosquitto) -> None:
    config = broker_config(mosquitto)
    worker = MqttClient(config, "worker", persistent_session=True, manual_ack=True).connect()
    worker.subscribe("sensors/#")
    with MqttClient(config, "sender", publish_availability=False) as sender:
        assert sender.publish("sensors/pi-1/climate", b"first").wait(5)
        assert sender.publish("sensors/pi-1/climate", b"second").wait(5)
    first = worker.receive(timeout=5)
    second = worker.receive(timeout=5)
    assert first is not None and second is not None
    worker.ack(first)  # "second" is received but never acknowledged: the worker "crashes"
    time.sleep(0.2)
    worker.close()
    worker = MqttClient(config, "worker", persistent_session=True, manual_ack=True).connect()
    again = worker.receive(timeout=5)
    assert again is not None and again.payload == b"second"
    worker.ack(again)
    assert worker.receive(timeout=0.5) is None
    worker.close()


def test_topic_prefix_is_added_and_removed(mosquitto: LocalMosquitto) -> None:
    prefixed = broker_config(mosquitto, topic_prefix="home/")
    with MqttClient(broker_config(mosquitto), "raw", publish_availability=False) as raw, \
         MqttClient(prefixed, "prefixed", publish_availability=False) as client:
        raw.subscribe("#")
        client.subscribe("sensors/#")
        raw.publish("home/sensors/pi-1/climate", b"a").wait(5)
        inbound = client.receive(timeout=5)
        assert inbound is not None and inbound.topic == "sensors/pi-1/climate"
        seen = raw.receive(timeout=5)
        assert seen is not None and seen.topic == "home/sensors/pi-1/climate"


def test_refused_credentials_fail_fast(mosquitto_factory: Callable[..., LocalMosquitto],
                                       tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "pi-1", "right"], check=True)
    port = free_port()
    broker = mosquitto_factory(
        port=port,
        listener=f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n",
    )
    good = MqttClient(broker_config(broker, username="pi-1", password="right"), "pi-1").connect()
    good.close()
    started = time.monotonic()
    with pytest.raises(MqttConnectError, match="refused the connection: Not authorized"):
        MqttClient(broker_config(broker, username="pi-1", password="wrong"), "pi-1").connect()
    with pytest.raises(MqttConnectError, match="refused"):
        MqttClient(broker_config(broker), "anonymous").connect()
    assert time.monotonic() - started < 5


def test_missing_tls_file_is_a_clear_error(mosquitto: LocalMosquitto, tmp_path: Path) -> None:
    config = broker_config(mosquitto, tls=TlsConfig(ca_file=str(tmp_path / "absent-ca.pem")))
    with pytest.raises(MqttError, match=r"TLS CA file .*absent-ca\.pem.* does not exist"):
        MqttClient(config, "pi-1")


def test_inbound_queue_overflow_is_counted(mosquitto: LocalMosquitto) -> None:
    config = broker_config(mosquitto)
    with MqttClient(config, "slow", publish_availability=False, queue_size=10) as slow, \
         MqttClient(config, "sender", publish_availability=False) as sender:
        slow.subscribe("sensors/#", qos=0)
        for i in range(30):
            sender.publish("sensors/pi-1/climate", str(i).encode(), qos=0)
        deadline = time.monotonic() + 5
        while slow.stats.received + slow.stats.dropped < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (slow.stats.received, slow.stats.dropped) == (10, 20)


def listener_and_sender(mosquitto: LocalMosquitto) -> tuple[MqttClient, MqttClient]:
    """A persistent subscriber to sensors/# and a publisher."""
    config = broker_config(mosquitto)
    listener = MqttClient(config, "listener", persistent_session=True,
                          publish_availability=False).connect()
    listener.subscribe("sensors/#")
    return listener, MqttClient(config, "sender", publish_availability=False).connect()


def stop_broker_under(client: MqttClient, mosquitto: LocalMosquitto) -> None:
    mosquitto.stop()
    while client.is_connected:
        time.sleep(0.01)


def test_a_message_published_while_disconnected_is_acknowledged_after_the_reconnect(
        mosquitto: LocalMosquitto) -> None:
    # paho marks such a message MQTT_ERR_NO_CONN and its is_published() raised on every call,
    # even after the re-send was acknowledged: the replay died and the node's forwarder too.
    listener, sender = listener_and_sender(mosquitto)
    stop_broker_under(sender, mosquitto)
    handle = sender.publish("sensors/pi-1/climate", b"while away")
    assert not handle.is_acknowledged() and not handle.lost
    assert not handle.wait(0.05)
    mosquitto.start()
    assert handle.wait(10), "the message was not re-sent after the reconnect"
    assert handle.is_acknowledged()
    message = listener.receive(timeout=5)
    assert message is not None and message.payload == b"while away"
    sender.close()
    listener.close()


def test_after_a_reconnect_nothing_new_overtakes_what_paho_re_sends(
        mosquitto: LocalMosquitto) -> None:
    listener, sender = listener_and_sender(mosquitto)
    window: PublishWindow[int] = PublishWindow(sender, size=10)
    assert window.room() == 10
    stop_broker_under(sender, mosquitto)
    assert window.room() == 0  # disconnected
    for index in range(5):  # kept by paho, re-sent after the reconnect
        window.publish(index, "sensors/pi-1/climate", str(index).encode())
    mosquitto.start()
    assert sender.wait_connected(10)
    # Carried over the reconnect: no room until all five are acknowledged, then all of it.
    acknowledged: list[int] = []
    deadline = time.monotonic() + 10
    while len(acknowledged) < 5 and time.monotonic() < deadline:
        assert window.room() == 0
        acknowledged += window.acknowledged()
    # (acknowledged() looks at each message once, and PUBACKs land while it looks: the keys of
    # one call need not come in acknowledgement order; the order on the wire is checked below)
    assert sorted(acknowledged) == [0, 1, 2, 3, 4]
    assert window.room() == 10
    window.publish(5, "sensors/pi-1/climate", b"5")
    assert window.wait_all(5) == [5]
    payloads = [listener.receive(timeout=5) for _ in range(6)]
    assert [m.payload for m in payloads if m is not None] == [str(i).encode() for i in range(6)]
    sender.close()
    listener.close()


def test_acknowledgements_and_messages_are_ordered_as_they_arrived(
        mosquitto: LocalMosquitto) -> None:
    config = broker_config(mosquitto)
    client = MqttClient(config, "tracker", publish_availability=False,
                        track_acknowledgements=True).connect()
    client.subscribe("confirmed/#")
    first = client.publish("sensors/pi-1/climate", b"1")
    second = client.publish("sensors/pi-1/climate", b"2")
    assert first.wait(5) and second.wait(5)
    with MqttClient(config, "other", publish_availability=False) as other:
        assert other.publish("confirmed/pi-1", b"later").wait(5)
    message = client.receive(timeout=5)
    assert message is not None
    one, two = first.acknowledged_event(), second.acknowledged_event()
    assert one is not None and two is not None
    assert one < two < message.event
    assert first.acknowledged_event() == one  # asked again: the same answer
    plain = MqttClient(config, "plain", publish_availability=False).connect()
    handle = plain.publish("sensors/pi-1/climate", b"3")
    assert handle.wait(5) and handle.acknowledged_event() is None
    plain.close()
    client.close()


def test_closing_ends_a_subscribe_that_waits_for_its_suback(mosquitto: LocalMosquitto) -> None:
    # A node stopping while its connect thread waited for a SUBACK went on, after the spool was
    # closed, for the rest of the 10 s.
    from tests.flaky_link import FlakyLink

    link = FlakyLink(mosquitto.host, mosquitto.port)
    client = MqttClient(dataclasses.replace(broker_config(mosquitto), port=link.port), "waiter",
                        publish_availability=False).connect()
    link.hold()  # nothing gets through: no SUBACK
    errors: list[Exception] = []

    def subscribe() -> None:
        try:
            client.subscribe("confirmed/waiter", timeout=30)
        except MqttError as error:
            errors.append(error)

    thread = threading.Thread(target=subscribe)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    client.close(timeout=0.5)
    thread.join(timeout=5)
    link.close()
    assert not thread.is_alive() and time.monotonic() - started < 3
    assert errors and "closed while subscribing" in str(errors[0])


def test_a_consumer_says_online_only_once_a_message_sent_to_it_would_be_taken(
        mosquitto: LocalMosquitto) -> None:
    """With online_after_subscribing (the collector): not at CONNACK, but once it subscribed;
    after the broker lost its session, once the subscriptions are back: whoever sends on
    seeing `online` reaches it."""
    import shutil

    config = broker_config(mosquitto)
    watcher = MqttClient(config, "watcher", publish_availability=False).connect()
    watcher.subscribe("status/consumer")
    consumer = MqttClient(config, "consumer", persistent_session=True,
                          online_after_subscribing=True).connect()
    assert watcher.receive(timeout=1.0) is None  # connected, subscribed to nothing: silent
    consumer.subscribe("sensors/#")
    consumer.announce_online()
    said = watcher.receive(timeout=5)
    assert said is not None and said.payload == b"online"
    mosquitto.kill()
    shutil.rmtree(mosquitto.directory / "data")  # the broker forgets the session
    (mosquitto.directory / "data").mkdir()
    mosquitto.start()
    with MqttClient(config, "sender", publish_availability=False) as sender:
        # The watcher reconnects too (the broker kept nothing: no stale status is retained).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            said = watcher.receive(timeout=0.5)
            if said is not None and said.payload == b"online":
                break
        else:
            raise AssertionError("no online after the reconnect")
        assert sender.publish("sensors/pi-1/climate", b"x").wait(5)
        message = consumer.receive(timeout=5)
    assert message is not None and message.topic == "sensors/pi-1/climate"
    consumer.close()
    watcher.close()
