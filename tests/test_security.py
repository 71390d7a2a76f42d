"""The shipped broker configuration (config/mosquitto/) on the real Mosquitto: passwords, the
ACL, and TLS with a CA made in the test."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.certificates import TestCA
from tests.collector_runner import start_worker, stop_worker
from tests.conftest import REPO_ROOT, broker_config
from tinyml_core.broker import LocalMosquitto, free_port
from tinyml_core.config import BrokerConfig, TlsConfig
from tinyml_core.errors import MqttConnectError
from tinyml_core.messages import AudioClip, ClimateReading, Forecast, KeywordResult, decode_message
from tinyml_core.mqtt import InboundMessage, MqttClient
from tinyml_core.recordings import read_wav
from tinyml_core.topics import audio_topic, climate_topic

SHIPPED = REPO_ROOT / "config" / "mosquitto"
INSTALLED_AT = "/etc/mosquitto/tinyml/"
START = 1_729_299_600.0
USERS = {"pi-1": "pi-1 secret", "pi-2": "pi-2 secret", "collector-1": "collector secret",
         "homeassistant": "ha secret", "dashboard": "dashboard secret"}


def render(name: str, directory: Path, port: int, uncomment: tuple[str, ...] = ()) -> str:
    """A shipped config as installed: its files in ``directory``, its listener on loopback."""
    text = (SHIPPED / name).read_text().replace(INSTALLED_AT, f"{directory}/")
    for option in uncomment:
        text = text.replace(f"#{option}", option)
    text, listeners = re.subn(r"^listener \d+$", f"listener {port} 127.0.0.1", text, flags=re.M)
    assert listeners == 1
    return text


def install(directory: Path) -> None:
    """What docs/security.md says to do: the ACL, and a password per client."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "acl").write_text((SHIPPED / "acl").read_text())
    passwords = directory / "passwd"
    for index, (user, password) in enumerate(USERS.items()):
        create = ["-c"] if index == 0 else []
        subprocess.run(["mosquitto_passwd", *create, "-b", str(passwords), user, password],
                       check=True, capture_output=True)


@pytest.fixture
def secured(mosquitto_factory: Callable[..., LocalMosquitto], tmp_path: Path) -> LocalMosquitto:
    install(tmp_path / "tinyml")
    port = free_port()
    return mosquitto_factory(port=port, listener=render("tinyml.conf", tmp_path / "tinyml", port))


@pytest.fixture
def clients() -> Iterator[Callable[..., MqttClient]]:
    made: list[MqttClient] = []

    def connect(config: BrokerConfig, client_id: str, **kwargs: object) -> MqttClient:
        client = MqttClient(config, client_id, **kwargs).connect()  # type: ignore[arg-type]
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close(timeout=1.0)


def as_user(broker: LocalMosquitto, user: str, **changes: object) -> BrokerConfig:
    return broker_config(broker, username=user, password=USERS[user], **changes)


def drain(client: MqttClient, seconds: float = 1.0) -> list[InboundMessage]:
    received = []
    while (message := client.receive(timeout=seconds)) is not None:
        received.append(message)
    return received


def reading(node: str, seq: int) -> bytes:
    return ClimateReading(node, START + 600 * seq, seq, 21.0, 45.0).encode()


def test_anonymous_and_wrong_password_are_refused(secured: LocalMosquitto) -> None:
    with pytest.raises(MqttConnectError, match="refused"):
        MqttClient(broker_config(secured), "pi-1").connect()
    with pytest.raises(MqttConnectError, match="refused"):
        MqttClient(broker_config(secured, username="pi-1", password="guess"), "pi-1").connect()


def test_a_node_can_publish_only_under_its_own_id(
        secured: LocalMosquitto, clients: Callable[..., MqttClient]) -> None:
    collector = clients(as_user(secured, "collector-1"), "collector-1",
                        publish_availability=False)
    collector.subscribe("sensors/#")
    collector.subscribe("enroll/#")
    dashboard = clients(as_user(secured, "homeassistant"), "homeassistant",
                        publish_availability=False)
    dashboard.subscribe("predictions/#")
    dashboard.subscribe("status/#")
    node = clients(as_user(secured, "pi-1"), "pi-1")  # publishes status/pi-1 "online"
    attempts = [
        (climate_topic("pi-2"), reading("pi-2", 0)),  # another node's readings
        ("sensors/pi-2/audio", b"x"),
        ("predictions/pi-1/forecast", b"{}"),  # a forged prediction
        ("status/collector-1", b"offline"),  # another client's availability
        ("enroll/pi-2", b"{}"),  # takes for another node's household
        (climate_topic("pi-1"), reading("pi-1", 1)),  # its own: delivered
        ("enroll/pi-1", b"{}"),
    ]
    for topic, payload in attempts:
        # MQTT 3.1.1 has no way to say "denied": the broker acknowledges and drops.
        assert node.publish(topic, payload).wait(5)
    delivered = [(m.topic, m.payload) for m in drain(collector)]
    assert delivered == [(climate_topic("pi-1"), reading("pi-1", 1)), ("enroll/pi-1", b"{}")]
    seen = [(m.topic, m.payload) for m in drain(dashboard)]
    assert seen == [("status/pi-1", b"online")]


def test_the_dashboard_user_reads_what_the_page_shows_and_can_write_nothing(
        secured: LocalMosquitto, clients: Callable[..., MqttClient]) -> None:
    dashboard = clients(as_user(secured, "dashboard"), "dashboard", publish_availability=False)
    for topic_filter in ("status/+", "sensors/+/climate", "predictions/#", "errors/+"):
        dashboard.subscribe(topic_filter)
    collector = clients(as_user(secured, "collector-1"), "collector-1",
                        publish_availability=False)
    collector.subscribe("sensors/#")
    node = clients(as_user(secured, "pi-1"), "pi-1")
    assert node.publish(climate_topic("pi-1"), reading("pi-1", 0)).wait(5)
    # It may not forge anything: a reading, or a collector's availability.
    assert dashboard.publish(climate_topic("pi-1"), reading("pi-1", 9)).wait(5)
    assert dashboard.publish("status/collector-1", b"offline").wait(5)
    assert [m.payload for m in drain(collector)] == [reading("pi-1", 0)]
    seen = {(m.topic, m.payload) for m in drain(dashboard)}
    assert seen == {("status/pi-1", b"online"), (climate_topic("pi-1"), reading("pi-1", 0))}


def test_a_node_under_an_acl_without_confirmations_carries_on_without_them(
        mosquitto_factory: Callable[..., LocalMosquitto], tmp_path: Path,
        clients: Callable[..., MqttClient]) -> None:
    from node.daemon import Node
    from node.settings import NodeIdentity, NodeSettings

    directory = tmp_path / "tinyml"
    install(directory)
    acl = directory / "acl"
    acl.write_text(acl.read_text().replace("pattern read confirmed/%u\n", ""))  # an older ACL
    port = free_port()
    broker = mosquitto_factory(port=port, listener=render("tinyml.conf", directory, port))
    collector = clients(as_user(broker, "collector-1"), "collector-1",
                        publish_availability=False)
    collector.subscribe("sensors/#")
    node = Node(NodeSettings(broker=as_user(broker, "pi-1"),
                             node=NodeIdentity(id="pi-1", spool_path=str(tmp_path / "spool"))))
    node.start()
    try:
        assert node.client.wait_connected(10)
        node.record_reading(21.0, 45.0, time_s=START)
        assert node.forwarder.drain(5)
        assert [m.topic for m in drain(collector)] == [climate_topic("pi-1")]
        confirmation = b'{"node_id":"pi-1","collector_id":"collector-1","seq":0,"time":1.8e9}'
        assert collector.publish("confirmed/pi-1", confirmation, retain=True).wait(5)
        for _ in range(20):  # the forwarder would take it in here, if it came
            node.forwarder.step()
            time.sleep(0.05)
        # MQTT 3.1.1 cannot say "denied" in a SUBACK: the node never hears a confirmation,
        # keeps nothing, and says so (with MQTT 5 the refusal turns confirmations off).
        tracker = node.forwarder.confirmations
        assert tracker is None or not tracker.active
        assert "no collector has ever confirmed" in node.stats_line() or \
            "confirmations off" in node.stats_line()
    finally:
        node.close()


def test_a_node_cannot_take_over_another_clients_session(
        secured: LocalMosquitto, clients: Callable[..., MqttClient]) -> None:
    collector = clients(as_user(secured, "collector-1"), "collector-1", persistent_session=True)
    # pi-1's credentials with the collector's client id: the broker uses the user name instead.
    impostor = clients(as_user(secured, "pi-1"), "collector-1", publish_availability=False)
    assert impostor.publish(climate_topic("pi-1"), reading("pi-1", 0)).wait(5)
    assert collector.is_connected  # not kicked off
    collector.subscribe("sensors/#")
    assert impostor.publish(climate_topic("pi-1"), reading("pi-1", 1)).wait(5)
    assert [m.payload for m in drain(collector)] == [reading("pi-1", 1)]


def test_the_collector_works_within_its_permissions(
        secured: LocalMosquitto, clients: Callable[..., MqttClient]) -> None:
    worker, thread = start_worker(secured, "collector-1", share="pool",  # a shared subscription
                                  config=as_user(secured, "collector-1"))
    try:
        dashboard = clients(as_user(secured, "homeassistant"), "homeassistant",
                            publish_availability=False)
        dashboard.subscribe("predictions/#")
        dashboard.subscribe("errors/#")
        node = clients(as_user(secured, "pi-2"), "pi-2")
        for seq in range(6):
            assert node.publish(climate_topic("pi-2"), reading("pi-2", seq)).wait(5)
        path = REPO_ROOT / "samples" / "speech" / "yes" / "a1cff772_nohash_3.wav"
        clip = AudioClip.from_samples("pi-2", START, 7, *read_wav(path))
        assert node.publish(audio_topic("pi-2"), clip.encode()).wait(5)
        assert node.publish(climate_topic("pi-2"), b"garbage").wait(5)
        answers = [decode_message(m.topic, m.payload) for m in drain(dashboard, 3.0)]
        kinds = sorted(type(a).__name__ for a in answers)
        assert kinds == ["ErrorRecord", "Forecast", "KeywordResult"]
        assert next(a for a in answers if isinstance(a, KeywordResult)).label == "yes"
        assert next(a for a in answers if isinstance(a, Forecast)).node_id == "pi-2"
    finally:
        stop_worker(worker, thread)


def test_a_revoked_node_is_cut_off_at_the_next_reload(
        secured: LocalMosquitto, clients: Callable[..., MqttClient], tmp_path: Path) -> None:
    node = clients(as_user(secured, "pi-1"), "pi-1")
    other = clients(as_user(secured, "pi-2"), "pi-2")
    subprocess.run(["mosquitto_passwd", "-D", str(tmp_path / "tinyml" / "passwd"), "pi-1"],
                   check=True)
    secured.reload()
    deadline = time.monotonic() + 5
    while node.is_connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not node.is_connected and other.is_connected
    with pytest.raises(MqttConnectError, match="refused"):
        MqttClient(as_user(secured, "pi-1"), "pi-1").connect()


# --- TLS ---------------------------------------------------------------------------------------
@pytest.fixture
def tls_broker(mosquitto_factory: Callable[..., LocalMosquitto],
               tmp_path: Path) -> tuple[LocalMosquitto, TestCA]:
    directory = tmp_path / "tinyml"
    install(directory)
    ca = TestCA(directory)
    broker_cert = ca.issue("broker", server=True)
    broker_cert.cert.rename(directory / "broker.crt")
    broker_cert.key.rename(directory / "broker.key")
    ca.cert.rename(directory / "ca.crt")
    port = free_port()
    listener = render("tinyml-tls.conf", directory, port,
                      uncomment=("cafile", "require_certificate"))
    return mosquitto_factory(port=port, listener=listener), ca


def tls_user(broker: LocalMosquitto, user: str, ca_file: Path, cert: Path | None = None,
             key: Path | None = None) -> BrokerConfig:
    return as_user(broker, user, tls=TlsConfig(ca_file=str(ca_file), cert_file=str(cert or ""),
                                               key_file=str(key or "")))


def test_tls_with_the_right_ca_and_a_client_certificate_works(
        tls_broker: tuple[LocalMosquitto, TestCA], clients: Callable[..., MqttClient]) -> None:
    broker, ca = tls_broker
    ca_file = ca.directory / "ca.crt"
    collector_cert = ca.issue("collector-1", server=False)
    collector = clients(tls_user(broker, "collector-1", ca_file, collector_cert.cert,
                                 collector_cert.key), "collector-1", publish_availability=False)
    collector.subscribe("sensors/#")
    node_cert = ca.issue("pi-1", server=False)
    node = clients(tls_user(broker, "pi-1", ca_file, node_cert.cert, node_cert.key), "pi-1")
    assert node.publish(climate_topic("pi-1"), reading("pi-1", 3)).wait(5)
    assert [m.payload for m in drain(collector)] == [reading("pi-1", 3)]


def test_tls_with_the_wrong_ca_or_without_a_client_certificate_fails(
        tls_broker: tuple[LocalMosquitto, TestCA], tmp_path: Path) -> None:
    broker, ca = tls_broker
    impostor_ca = TestCA(tmp_path / "other-ca", name="Someone else's CA")
    client_cert = ca.issue("pi-1", server=False)
    wrong_ca = tls_user(broker, "pi-1", impostor_ca.cert, client_cert.cert, client_cert.key)
    with pytest.raises(MqttConnectError, match=r"TLS handshake .* failed.*certificate verify"):
        MqttClient(wrong_ca, "pi-1").connect()
    no_client_cert = tls_user(broker, "pi-1", ca.directory / "ca.crt")
    with pytest.raises(MqttConnectError):
        MqttClient(no_client_cert, "pi-1", publish_availability=False).connect(timeout=2.0)
    plain = as_user(broker, "pi-1")  # no TLS at all against the TLS port
    with pytest.raises(MqttConnectError):
        MqttClient(plain, "pi-1", publish_availability=False).connect(timeout=2.0)
